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

Writes will join the Protocol in the same shape (a repository, a reference, the bytes): an OCI artifact
manifest with a ``subject``, and an image index under the fallback tag ``sha256-<hex>``, which registries
without the referrers API (Debian's) need. oras 0.2.43 cannot do those either: ``push(subject=...)``
raises a TypeError and writes no fallback tag.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from raybuild.loopback import LOOPBACK

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Without an index type in Accept, a registry may hand back one platform's manifest for a multi-platform
# tag; asking for all four gets what the tag really names.
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)


class RegistryUnreachable(Exception):
    """Nothing answered (``down``), or the registry failed with a transient or server error."""

    def __init__(self, reason: str, *, down: bool) -> None:
        super().__init__(reason)
        self.reason, self.down = reason, down


class RegistryUnverifiable(Exception):
    """The registry will not show this to an anonymous client, not over this scheme, or not readably."""


@dataclass(frozen=True)
class Manifest:
    """A manifest as a descriptor (digest, media type, size) plus what raybuild reads from its body."""

    digest: str  # sha256 of the exact bytes the registry serves
    media_type: str
    size: int
    config_digest: str | None  # None for an index or manifest list: never equal to a local image ID
    layer_sizes: tuple[int, ...] = ()
    layer_digests: tuple[str, ...] = ()  # compressed, as pushed: what nodes pull and share

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
    return Manifest(digest, media_type, len(body), str(config.get("digest")), sizes, digests)


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


def split_reference(ref: str) -> tuple[str, str, str]:
    """``host[:port]/name/space:tag`` -> (host, repository, tag)."""
    name, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest")
    host, _, repository = name.partition("/")
    return host, repository, tag


def repo_digest(repo_digests: list[str], ref: str) -> str | None:
    """The registry digest of ``ref``'s repository among an image's RepoDigests (``name@sha256:...``)."""
    base = ref.split("@", 1)[0]
    name = base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base
    for entry in repo_digests:
        if entry.startswith(name + "@"):
            return entry.split("@", 1)[1]
    return None


def is_loopback(address: str) -> bool:
    name = address.rsplit(":", 1)[0]
    return name == "localhost" or name.startswith("127.") or name == "[::1]"


def api_url(address: str) -> str:
    """The registry API's root, ``/v2/``."""
    scheme = "http" if is_loopback(address) else "https"
    host = "registry-1.docker.io" if address == "docker.io" else address
    return f"{scheme}://{host}/v2/"


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class HttpRegistry:
    """Anonymous reads over HTTP(S), with urllib: a handful of GETs needs no more."""

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
            raise RegistryUnverifiable(f"not a manifest: {exc}") from None

    def blob(self, repository: str, digest: str) -> bytes | None:
        answer = self._found(f"{repository}/blobs/{digest}", "*/*")
        return None if answer is None else answer.body

    def _found(self, path: str, accept: str) -> _Answer | None:
        answer = self._open(path, accept)
        if answer.status == 200:
            return answer
        if answer.status == 404:
            return None
        reason = f"HTTP {answer.status} {answer.reason}".rstrip()
        if answer.status >= 500:
            raise RegistryUnreachable(reason, down=False)
        raise RegistryUnverifiable(reason)

    def _open(self, path: str, accept: str) -> _Answer:
        request = urllib.request.Request(api_url(self.address) + path, headers={"Accept": accept})
        opener = LOOPBACK if is_loopback(self.address) else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=self.timeout) as response:
                content_type = response.headers.get("Content-Type", "")
                return _Answer(int(response.status), str(response.reason), response.read(), content_type)
        except urllib.error.HTTPError as exc:
            return _Answer(exc.code, str(exc.reason), b"", "")
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise _no_answer(reason if isinstance(reason, BaseException) else OSError(reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _no_answer(exc) from None
        except ValueError as exc:  # an address urllib cannot make a URL of
            raise RegistryUnverifiable(f"bad request: {exc}") from None


def _no_answer(exc: BaseException) -> Exception:
    if isinstance(exc, socket.gaierror):
        return RegistryUnreachable("no such host", down=True)
    if isinstance(exc, ConnectionRefusedError):
        return RegistryUnreachable("connection refused", down=True)
    if isinstance(exc, ssl.SSLError):
        return RegistryUnverifiable(f"TLS error: {exc}")
    if isinstance(exc, TimeoutError):
        return RegistryUnreachable("i/o timeout", down=False)
    return RegistryUnreachable(str(exc) or type(exc).__name__, down=False)
