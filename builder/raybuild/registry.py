"""The one registry client: the OCI Distribution API (Registry v2) reads that publish and measure make.

`Registry` is the seam; `HttpRegistry` its one implementation, and unit tests use the fake beside them
(``tests/unit/fakes.FakeRegistry``). Reads are anonymous: pushes go through docker, whose own credential
store does any login, so raybuild never reads a credential. A registry on this host speaks plain HTTP, as
the Docker daemon allows, and is never reached through an environment proxy (see `raybuild.loopback`);
any other is reached over HTTPS with the environment's proxy settings.

Why a small urllib client and not ORAS's Python SDK (``oras`` 0.2.43, the newest release, tried against
Debian's registry 2.8 on 127.0.0.1):

- Every request goes through a retry decorator that sleeps 3, 5, 11, 29 and 83 s after any exception, and
  no timeout can be passed: a registry that is down took 131 s to report. Publish retries with its own
  short, bounded backoff, and measure must learn in a moment that no registry runs.
- ``get_manifest`` returns parsed JSON, not the bytes served, so the manifest's digest (the sha256 of those
  bytes) is lost; and every answer but 2xx becomes the same ``ValueError``, so "not there" (404) cannot be
  told from "not allowed" (401) or "failing" (503) without parsing the message.
- ``get_manifest`` loads credentials from ``~/.docker/config.json``.

Writes attach artifacts (the SBOM) to an image the OCI 1.1 way: blobs, then an artifact manifest whose
``subject`` is the image's manifest. A registry with the referrers API says so with an ``OCI-Subject``
header and indexes it itself; one without it (Debian's distribution 2.8) needs the client to keep an
image index of the image's referrers under the fallback tag ``sha256-<hex of the image digest>``, which is
where standard tools (oras discover, cosign) look on such registries. oras 0.2.43 cannot do either:
``push(subject=...)`` raises a TypeError and writes no fallback tag.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from raybuild.errors import RegistryError as RegistryError
from raybuild.errors import RegistryUnreachable as RegistryUnreachable
from raybuild.errors import RegistryUnverifiable as RegistryUnverifiable
from raybuild.loopback import LOOPBACK
from raybuild.reference import DEFAULT_HOST, is_loopback_host

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Without an index type in Accept, a registry may hand back one platform's manifest for a multi-platform
# tag; asking for all four gets what the tag really names.
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# OCI 1.1: an artifact's config is the empty JSON object, under its own media type.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
DOCKER_HUB_API = "registry-1.docker.io"
TOO_MANY_REQUESTS = 429


@dataclass(frozen=True)
class Manifest:
    """A manifest as a descriptor (digest, media type, size) plus what raybuild reads from its body."""

    digest: str  # sha256 of the exact bytes the registry serves
    media_type: str
    size: int
    config_digest: str | None  # None for an index or manifest list: never equal to a local image ID
    layer_sizes: tuple[int, ...] = ()
    layer_digests: tuple[str, ...] = ()  # compressed, as pushed: what nodes pull and share
    layer_media_types: tuple[str, ...] = ()  # says each layer's compression (gzip, zstd)

    @property
    def compressed_size(self) -> int:
        return sum(self.layer_sizes)


def parse_manifest(body: bytes, content_type: str = "") -> Manifest:
    """A manifest from the bytes served; ValueError (or KeyError) when they are not one."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("a manifest is a JSON object")
    # mediaType is optional in an OCI manifest; the Content-Type header then says what it is.
    media_type = str(data.get("mediaType") or content_type.split(";")[0].strip())
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    config = data.get("config")
    if not isinstance(config, dict):
        return Manifest(digest, media_type, len(body), None)
    layers = data.get("layers") or []
    sizes = tuple(int(layer["size"]) for layer in layers)
    digests = tuple(str(layer.get("digest", "")) for layer in layers)
    types = tuple(str(layer.get("mediaType", "")) for layer in layers)
    return Manifest(digest, media_type, len(body), str(config.get("digest")), sizes, digests, types)


class Registry(Protocol):
    """One registry, ``HOST[:PORT]``; repositories are the names under it (``namespace/app``)."""

    @property
    def address(self) -> str: ...

    def reachable(self) -> bool:
        """Whether the registry API answers at all (a request to log in counts)."""
        ...

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest a tag or digest names; None when there is none.

        Raises RegistryUnreachable or RegistryUnverifiable.
        """
        ...

    def blob(self, repository: str, digest: str) -> bytes | None:
        """A blob's bytes (an image config, say); None when there is none. Raises as ``manifest`` does."""
        ...

    def manifest_body(self, repository: str, reference: str) -> bytes | None:
        """The exact bytes of a manifest or index; None when there is none. Raises as ``manifest`` does."""
        ...

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        """The referrers API's answer for a manifest digest; None when the registry has no such API."""
        ...

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload a blob unless the repository has it; its digest. Raises as ``manifest`` does."""
        ...

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> bool:
        """Store a manifest or index under a tag or its digest; whether the registry indexed its subject."""
        ...


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest or index says about another blob or manifest."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, str] = field(default_factory=dict)  # in an image index: {"os", "architecture"}

    @classmethod
    def of(cls, media_type: str, data: bytes, **fields: Any) -> Descriptor:
        return cls(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), **fields)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        annotations = data.get("annotations") or {}
        return cls(
            str(data["mediaType"]),
            str(data["digest"]),
            int(data["size"]),
            str(data["artifactType"]) if data.get("artifactType") else None,
            {str(k): str(v) for k, v in annotations.items()},
            {str(k): str(v) for k, v in (data.get("platform") or {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform:
            out["platform"] = dict(sorted(self.platform.items()))
        return out


def _canonical(data: Mapping[str, Any]) -> bytes:
    # Sorted keys and no spaces: the same artifact always has the same bytes, so the same digest.
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag scheme: the subject's digest with ':' as '-'."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


def artifact_manifest(
    artifact_type: str, blob: Descriptor, subject: Descriptor, annotations: Mapping[str, str]
) -> bytes:
    """An OCI 1.1 artifact manifest: the empty config, one layer, and the manifest it refers to."""
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": Descriptor.of(OCI_EMPTY, EMPTY_JSON).to_json(),
            "layers": [blob.to_json()],
            "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
            "annotations": dict(sorted(annotations.items())),
        }
    )


def _index_entries(body: bytes | None, address: str) -> list[Descriptor]:
    if body is None:
        return []
    try:
        data = json.loads(body)
        return [Descriptor.from_json(entry) for entry in data.get("manifests") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryUnverifiable(
            f"the referrers tag holds no image index: {exc}", address=address
        ) from None


def find_referrers(
    registry: Registry, repository: str, subject: str, artifact_type: str | None = None
) -> list[Descriptor]:
    """The artifacts attached to manifest ``subject``: by the referrers API, else by the fallback tag."""
    found = registry.referrers(repository, subject)
    if found is None:
        found = _index_entries(registry.manifest_body(repository, fallback_tag(subject)), registry.address)
    return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]


def attach(
    registry: Registry,
    repository: str,
    subject: Descriptor,
    artifact_type: str,
    blob: Descriptor,
    data: bytes,
    annotations: Mapping[str, str],
    replaces: Callable[[Descriptor], bool] = lambda _: False,
) -> Descriptor:
    """Push ``data`` as an artifact referring to ``subject``; the artifact manifest's descriptor.

    On a registry without the referrers API the fallback index is updated: entries that ``replaces``
    accepts (an older SBOM of the same image) are dropped, every other referrer is kept.
    """
    registry.put_blob(repository, EMPTY_JSON)
    registry.put_blob(repository, data)
    body = artifact_manifest(artifact_type, blob, subject, annotations)
    manifest = Descriptor.of(OCI_MANIFEST, body, artifact_type=artifact_type, annotations=dict(annotations))
    if registry.put_manifest(repository, manifest.digest, body, OCI_MANIFEST):
        return manifest
    tag = fallback_tag(subject.digest)
    kept = [
        d
        for d in _index_entries(registry.manifest_body(repository, tag), registry.address)
        if d.digest != manifest.digest and not replaces(d)
    ]
    index = _canonical(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_json() for d in [*kept, manifest]]}
    )
    registry.put_manifest(repository, tag, index, OCI_INDEX)
    return manifest


def image_index(manifests: list[Descriptor]) -> tuple[bytes, str]:
    """An index of one image manifest per platform, and its media type.

    Docker's manifest list when every entry is a Docker manifest (what `docker push` writes), else an OCI
    image index (OCI manifests, as skopeo writes them): each kind of entry in the index type made for it.
    """
    docker = all(m.media_type == DOCKER_MANIFEST for m in manifests)
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": [m.to_json() for m in manifests]}
    return _canonical(body), media_type


def put_index(registry: Registry, repository: str, tag: str, manifests: list[Descriptor]) -> Manifest:
    """PUT an index of ``manifests`` (already in ``repository``) under ``tag``; the index as a manifest.

    The same manifests always give the same bytes, so the same digest: publishing again moves nothing.
    """
    body, media_type = image_index(manifests)
    registry.put_manifest(repository, tag, body, media_type)
    return parse_manifest(body, media_type)


def api_url(address: str) -> str:
    """The registry API's root, ``/v2/``, for a registry ``HOST[:PORT]`` (an `ImageRef`'s ``host``)."""
    scheme = "http" if is_loopback_host(address) else "https"
    # Docker Hub's registry API is not served at the name references use for it.
    host = DOCKER_HUB_API if address == DEFAULT_HOST else address
    return f"{scheme}://{host}/v2/"


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lowercase


@dataclass(frozen=True)
class HttpRegistry:
    """Anonymous requests over HTTP(S), with urllib: a handful of GETs and PUTs needs no more."""

    address: str  # HOST[:PORT]
    timeout: float = 10.0

    def reachable(self) -> bool:
        try:
            status = self._open("", "application/json").status
        except (RegistryUnreachable, RegistryUnverifiable):
            return False
        return status in (200, 401)

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        answer = self._found(f"{repository}/manifests/{reference}", ", ".join(MANIFEST_TYPES))
        if answer is None:
            return None
        try:
            return parse_manifest(answer.body, answer.content_type)
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnverifiable(f"not a manifest: {exc}", address=self.address) from None

    def blob(self, repository: str, digest: str) -> bytes | None:
        answer = self._found(f"{repository}/blobs/{digest}", "*/*")
        return None if answer is None else answer.body

    def manifest_body(self, repository: str, reference: str) -> bytes | None:
        answer = self._found(f"{repository}/manifests/{reference}", ", ".join(MANIFEST_TYPES))
        return None if answer is None else answer.body

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        answer = self._found(f"{repository}/referrers/{digest}", OCI_INDEX)
        # A registry without the API answers 404 (distribution 2.8 has no such route).
        if answer is None or not answer.content_type.startswith(OCI_INDEX):
            return None
        return _index_entries(answer.body, self.address)

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self._open(f"{repository}/blobs/{digest}", "*/*", method="HEAD").status == 200:
            return digest
        started = self._written(
            self._open(f"{repository}/blobs/uploads/", "*/*", method="POST"), "start upload"
        )
        location = started.headers.get("location", "")
        if not location:
            raise RegistryUnverifiable(
                "the registry started an upload but gave no Location", address=self.address
            )
        # A monolithic upload: the whole blob in the PUT that closes the session.
        url = urllib.parse.urljoin(api_url(self.address), location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        self._written(
            self._request(url, "*/*", method="PUT", data=data, content_type="application/octet-stream"),
            f"upload blob {digest[:19]}",
        )
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> bool:
        answer = self._open(
            f"{repository}/manifests/{reference}", "*/*", method="PUT", data=body, content_type=media_type
        )
        return "oci-subject" in self._written(answer, f"put manifest {reference}").headers

    def _written(self, answer: _Answer, what: str) -> _Answer:
        if 200 <= answer.status < 300:
            return answer
        raise self._failed(answer, f"{what}: ")

    def _found(self, path: str, accept: str) -> _Answer | None:
        answer = self._open(path, accept)
        if answer.status == 200:
            return answer
        if answer.status == 404:
            return None
        raise self._failed(answer)

    def _failed(self, answer: _Answer, what: str = "") -> RegistryError:
        """A server error or 429 (too many requests) is transient and retried; any other 4xx is not."""
        reason = f"{what}HTTP {answer.status} {answer.reason}".rstrip()
        if answer.status >= 500 or answer.status == TOO_MANY_REQUESTS:
            return RegistryUnreachable(reason, down=False, address=self.address)
        return RegistryUnverifiable(reason, address=self.address)

    def _open(self, path: str, accept: str, **request: Any) -> _Answer:
        """A request to a path under the API root; ``request`` as ``_request`` takes it."""
        return self._request(api_url(self.address) + path, accept, **request)

    def _request(
        self,
        url: str,
        accept: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> _Answer:
        headers = {"Accept": accept} | ({"Content-Type": content_type} if content_type else {})
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        opener = LOOPBACK if is_loopback_host(self.address) else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=self.timeout) as response:
                content_type = response.headers.get("Content-Type", "")
                body = response.read()
                answer_headers = {k.lower(): v for k, v in response.headers.items()}
                return _Answer(int(response.status), str(response.reason), body, content_type, answer_headers)
        except urllib.error.HTTPError as exc:
            return _Answer(exc.code, str(exc.reason), b"", "")
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise _no_answer(
                reason if isinstance(reason, BaseException) else OSError(reason), self.address
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _no_answer(exc, self.address) from None
        except ValueError as exc:  # an address urllib cannot make a URL of
            raise RegistryUnverifiable(f"bad request: {exc}", address=self.address) from None


def _no_answer(exc: BaseException, address: str) -> RegistryError:
    if isinstance(exc, socket.gaierror):
        return RegistryUnreachable("no such host", down=True, address=address)
    if isinstance(exc, ConnectionRefusedError):
        return RegistryUnreachable("connection refused", down=True, address=address)
    if isinstance(exc, ssl.SSLError):
        return RegistryUnverifiable(f"TLS error: {exc}", address=address)
    if isinstance(exc, TimeoutError):
        return RegistryUnreachable("i/o timeout", down=False, address=address)
    return RegistryUnreachable(str(exc) or type(exc).__name__, down=False, address=address)
