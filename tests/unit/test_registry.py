"""The registry client: manifests and blobs from a throwaway HTTP server on 127.0.0.1, answers told apart
(absent, refused, failing, not allowed), proxies never used for loopback, and the fake held to the same
contract as the real client."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from raybuild.errors import RaybuildError
from raybuild.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    HttpRegistry,
    Registry,
    RegistryUnreachable,
    RegistryUnverifiable,
    api_url,
    attach,
    fallback_tag,
    find_referrers,
    image_index,
    parse_manifest,
    put_index,
)
from tests.unit.fakes import FakeRegistry, manifest_body

IMAGE_ID = "sha256:" + "b" * 64
CONFIG = json.dumps({"rootfs": {"diff_ids": []}, "history": []}).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


@dataclass
class Routes:
    """What the server answers per path: (status, body, Content-Type); 404 for anything else."""

    answers: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)
    accepts: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Routes]]:
    routes = Routes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes.accepts.append(self.headers.get("Accept", ""))
            status, body, content_type = routes.answers.get(self.path, (404, b'{"errors":[]}', ""))
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:  # nothing listens on it once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- parsing ------------------------------------------------------------------------------------------------


def test_parse_manifest_digest_config_and_compressed_size() -> None:
    body = manifest_body(IMAGE_ID, (10, 20, 30))
    manifest = parse_manifest(body)
    assert manifest.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert (manifest.media_type, manifest.size) == (DOCKER_MANIFEST, len(body))
    assert manifest.config_digest == IMAGE_ID
    assert manifest.compressed_size == 60


def test_an_index_has_no_config_and_oci_media_types_may_come_from_the_header() -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert parse_manifest(index).config_digest is None
    assert parse_manifest(index).media_type == OCI_INDEX
    oci = json.dumps({"schemaVersion": 2, "config": {"digest": IMAGE_ID}, "layers": [{"size": 5}]}).encode()
    manifest = parse_manifest(oci, f"{OCI_MANIFEST}; charset=utf-8")
    assert (manifest.media_type, manifest.config_digest, manifest.layer_sizes) == (
        OCI_MANIFEST,
        IMAGE_ID,
        (5,),
    )


def test_urls_plain_http_only_for_this_host() -> None:
    assert api_url("127.0.0.1:5000") == "http://127.0.0.1:5000/v2/"
    assert api_url("localhost:5000") == "http://localhost:5000/v2/"
    assert api_url("registry.example.com") == "https://registry.example.com/v2/"
    assert api_url("docker.io") == "https://registry-1.docker.io/v2/"
    assert api_url("[::1]:5000") == "http://[::1]:5000/v2/"
    assert api_url("10.0.0.1:5000") == "https://10.0.0.1:5000/v2/"


# -- the real client ----------------------------------------------------------------------------------------


def test_manifests_by_tag_and_digest_with_every_manifest_type_accepted(server: tuple[str, Routes]) -> None:
    address, routes = server
    body = manifest_body(IMAGE_ID)
    digest = parse_manifest(body).digest
    routes.answers["/v2/ns/demo/manifests/v1"] = (200, body, DOCKER_MANIFEST)
    routes.answers[f"/v2/ns/demo/manifests/{digest}"] = (200, body, DOCKER_MANIFEST)
    client = HttpRegistry(address, timeout=5)
    assert client.manifest("ns/demo", "v1") == parse_manifest(body)
    assert client.manifest("ns/demo", digest) == parse_manifest(body)
    accepted = {kind.strip() for kind in routes.accepts[0].split(",")}
    assert accepted == {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST}
    assert client.manifest("ns/demo", "v2") is None


def test_blobs_by_digest(server: tuple[str, Routes]) -> None:
    address, routes = server
    routes.answers[f"/v2/ns/demo/blobs/{CONFIG_DIGEST}"] = (200, CONFIG, "application/octet-stream")
    client = HttpRegistry(address, timeout=5)
    assert client.blob("ns/demo", CONFIG_DIGEST) == CONFIG
    assert client.blob("ns/demo", IMAGE_ID) is None


@pytest.mark.parametrize(
    ("status", "error", "down"),
    [
        (401, RegistryUnverifiable, None),
        (403, RegistryUnverifiable, None),
        (429, RegistryUnreachable, False),  # too many requests: transient, so retried
        (503, RegistryUnreachable, False),
    ],
)
def test_refusals_and_server_errors_are_told_apart(
    server: tuple[str, Routes], status: int, error: type[Exception], down: bool | None
) -> None:
    address, routes = server
    routes.answers["/v2/ns/demo/manifests/v1"] = (status, b"{}", "application/json")
    with pytest.raises(error, match=str(status)) as raised:
        HttpRegistry(address, timeout=5).manifest("ns/demo", "v1")
    if down is not None:
        assert isinstance(raised.value, RegistryUnreachable) and raised.value.down is down
    # A RaybuildError that names the registry: the CLI shows it as one line and a hint.
    assert isinstance(raised.value, RaybuildError) and raised.value.address == address
    assert str(raised.value).startswith(f"registry {address}") and raised.value.hint


def test_a_body_that_is_not_a_manifest_is_unverifiable(server: tuple[str, Routes]) -> None:
    address, routes = server
    routes.answers["/v2/ns/demo/manifests/v1"] = (200, b"<html>login</html>", "text/html")
    with pytest.raises(RegistryUnverifiable, match="not a manifest"):
        HttpRegistry(address, timeout=5).manifest("ns/demo", "v1")


def test_nothing_listening_is_down() -> None:
    client = HttpRegistry(f"127.0.0.1:{closed_port()}", timeout=5)
    with pytest.raises(RegistryUnreachable, match="connection refused") as raised:
        client.manifest("ns/demo", "v1")
    assert raised.value.down is True
    assert client.reachable() is False


@pytest.mark.parametrize(("status", "reachable"), [(200, True), (401, True), (404, False), (500, False)])
def test_reachable_when_the_api_root_answers(
    server: tuple[str, Routes], status: int, reachable: bool
) -> None:
    address, routes = server
    routes.answers["/v2/"] = (status, b"{}", "application/json")
    assert HttpRegistry(address, timeout=5).reachable() is reachable


def test_a_loopback_registry_is_never_reached_through_a_proxy(
    server: tuple[str, Routes], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, routes = server
    routes.answers["/v2/"] = (200, b"{}", "application/json")
    routes.answers["/v2/ns/demo/manifests/v1"] = (200, manifest_body(IMAGE_ID), DOCKER_MANIFEST)
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # The environment's proxy is in force for an ordinary opener ...
    with pytest.raises(urllib.error.URLError):
        urllib.request.build_opener().open(f"http://{address}/v2/ns/demo/manifests/v1", timeout=5)
    # ... and the client does not use it.
    client = HttpRegistry(address, timeout=5)
    assert client.reachable() is True
    manifest = client.manifest("ns/demo", "v1")
    assert manifest is not None and manifest.config_digest == IMAGE_ID


# -- the fake keeps the same contract -----------------------------------------------------------------------


@pytest.fixture(params=["http", "fake"])
def holding_an_image(request: pytest.FixtureRequest, server: tuple[str, Routes]) -> Registry:
    """A registry holding ns/demo:v1 (config blob and all), over HTTP or in memory."""
    if request.param == "fake":
        fake = FakeRegistry()
        fake.store("ns/demo", "v1", CONFIG_DIGEST, (7, 8), config=CONFIG)
        return fake
    address, routes = server
    body = manifest_body(CONFIG_DIGEST, (7, 8))
    for reference in ("v1", parse_manifest(body).digest):
        routes.answers[f"/v2/ns/demo/manifests/{reference}"] = (200, body, DOCKER_MANIFEST)
    routes.answers[f"/v2/ns/demo/blobs/{CONFIG_DIGEST}"] = (200, CONFIG, "application/octet-stream")
    routes.answers["/v2/"] = (200, b"{}", "application/json")
    return HttpRegistry(address, timeout=5)


def test_real_and_fake_registries_answer_alike(holding_an_image: Registry) -> None:
    registry = holding_an_image
    assert registry.reachable()
    manifest = registry.manifest("ns/demo", "v1")
    assert manifest is not None
    assert (manifest.media_type, manifest.config_digest, manifest.compressed_size) == (
        DOCKER_MANIFEST,
        CONFIG_DIGEST,
        15,
    )
    assert registry.manifest("ns/demo", manifest.digest) == manifest
    assert registry.blob("ns/demo", CONFIG_DIGEST) == CONFIG
    assert registry.manifest("ns/demo", "v2") is None
    assert registry.blob("ns/demo", IMAGE_ID) is None


# -- writes: blobs, manifests, referrers ---------------------------------------------------------------------


@dataclass
class Store:
    """A registry in a throwaway server that takes uploads as distribution 2.8 does, and logs requests."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    referrers_api: bool = False


@pytest.fixture
def store() -> Iterator[tuple[str, Store]]:
    state = Store()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _log(self) -> None:
            state.requests.append(f"{self.command} {self.path}")

        def do_HEAD(self) -> None:
            self._log()
            digest = self.path.rsplit("/", 1)[-1]
            self._answer(200 if digest in state.blobs else 404)

        def do_POST(self) -> None:
            self._log()
            # A relative Location with a query of its own, as distribution returns.
            self._answer(202, headers={"Location": "/v2/ns/demo/blobs/uploads/u1?_state=abc"})

        def do_PUT(self) -> None:
            self._log()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path, _, query = self.path.partition("?")
            if "/blobs/uploads/" in path:
                digest = dict(pair.split("=", 1) for pair in query.split("&"))["digest"].replace("%3A", ":")
                state.blobs[digest] = body
                self._answer(201)
                return
            state.manifests[path.rsplit("/", 1)[-1]] = (body, self.headers.get("Content-Type", ""))
            subject = {"OCI-Subject": "sha256:x"} if state.referrers_api and b'"subject"' in body else {}
            self._answer(201, headers=subject)

        def do_GET(self) -> None:
            self._log()
            if "/referrers/" in self.path and state.referrers_api:
                index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
                self._answer(200, index, {"Content-Type": OCI_INDEX})
                return
            found = state.manifests.get(self.path.rsplit("/", 1)[-1])
            if "/manifests/" in self.path and found:
                self._answer(200, found[0], {"Content-Type": found[1]})
                return
            self._answer(404, b'{"errors":[]}')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


def test_put_blob_uploads_once_in_a_single_put(store: tuple[str, Store]) -> None:
    address, state = store
    client = HttpRegistry(address, timeout=5)
    digest = client.put_blob("ns/demo", b"sbom bytes")
    assert digest == "sha256:" + hashlib.sha256(b"sbom bytes").hexdigest()
    assert state.blobs == {digest: b"sbom bytes"}
    assert state.requests == [
        f"HEAD /v2/ns/demo/blobs/{digest}",
        "POST /v2/ns/demo/blobs/uploads/",
        f"PUT /v2/ns/demo/blobs/uploads/u1?_state=abc&digest={digest.replace(':', '%3A')}",
    ]
    state.requests.clear()
    assert client.put_blob("ns/demo", b"sbom bytes") == digest
    assert state.requests == [f"HEAD /v2/ns/demo/blobs/{digest}"]  # already there: no upload


def test_put_manifest_and_read_it_back_byte_for_byte(store: tuple[str, Store]) -> None:
    address, state = store
    client = HttpRegistry(address, timeout=5)
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    assert client.put_manifest("ns/demo", "sha256-abc", body, OCI_INDEX) is False
    assert state.manifests["sha256-abc"] == (body, OCI_INDEX)
    assert client.manifest_body("ns/demo", "sha256-abc") == body
    assert client.manifest_body("ns/demo", "sha256-none") is None


def test_attach_against_a_registry_without_the_referrers_api(store: tuple[str, Store]) -> None:
    address, state = store
    client = HttpRegistry(address, timeout=5)
    assert client.referrers("ns/demo", IMAGE_ID) is None
    subject = Descriptor(DOCKER_MANIFEST, IMAGE_ID, 1000)
    blob = Descriptor.of("application/vnd.cyclonedx+json", b"sbom")
    manifest = attach(client, "ns/demo", subject, "application/vnd.cyclonedx+json", blob, b"sbom", {"k": "v"})
    assert fallback_tag(IMAGE_ID) in state.manifests
    assert find_referrers(client, "ns/demo", IMAGE_ID) == [manifest]


def test_a_registry_with_the_referrers_api_indexes_the_subject_itself(store: tuple[str, Store]) -> None:
    address, state = store
    state.referrers_api = True
    client = HttpRegistry(address, timeout=5)
    assert client.referrers("ns/demo", IMAGE_ID) == []
    subject = Descriptor(DOCKER_MANIFEST, IMAGE_ID, 1000)
    blob = Descriptor.of("application/vnd.cyclonedx+json", b"sbom")
    attach(client, "ns/demo", subject, "application/vnd.cyclonedx+json", blob, b"sbom", {"k": "v"})
    assert fallback_tag(IMAGE_ID) not in state.manifests


def test_a_refused_write_is_unverifiable_and_a_failing_one_unreachable(server: tuple[str, Routes]) -> None:
    address, _ = server  # answers 404 to HEAD and 501 to POST (BaseHTTPRequestHandler has no do_POST)
    client = HttpRegistry(address, timeout=5)
    with pytest.raises(RegistryUnreachable, match="start upload: HTTP 501"):
        client.put_blob("ns/demo", b"x")


# -- image indexes -------------------------------------------------------------------------------------------


def _platform_manifest(media_type: str, arch: str, fill: str) -> Descriptor:
    return Descriptor(media_type, "sha256:" + fill * 64, 1000, platform={"os": "linux", "architecture": arch})


def test_an_index_of_docker_manifests_is_a_manifest_list_and_says_each_platform() -> None:
    entries = [
        _platform_manifest(DOCKER_MANIFEST, "amd64", "a"),
        _platform_manifest(DOCKER_MANIFEST, "arm64", "b"),
    ]
    body, media_type = image_index(entries)
    assert media_type == DOCKER_MANIFEST_LIST
    data = json.loads(body)
    assert data["mediaType"] == DOCKER_MANIFEST_LIST
    assert [(m["digest"], m["platform"]["architecture"]) for m in data["manifests"]] == [
        ("sha256:" + "a" * 64, "amd64"),
        ("sha256:" + "b" * 64, "arm64"),
    ]
    assert Descriptor.from_json(data["manifests"][1]) == entries[1]
    # OCI manifests (skopeo's) go into an OCI image index.
    assert image_index([_platform_manifest(OCI_MANIFEST, "amd64", "c")])[1] == OCI_INDEX


def test_put_index_writes_the_same_bytes_for_the_same_manifests() -> None:
    registry = FakeRegistry()
    entries = [
        _platform_manifest(DOCKER_MANIFEST, "amd64", "a"),
        _platform_manifest(DOCKER_MANIFEST, "arm64", "b"),
    ]
    first = put_index(registry, "ns/demo", "v1", entries)
    assert first.config_digest is None and first.media_type == DOCKER_MANIFEST_LIST
    assert first.digest == "sha256:" + hashlib.sha256(registry.bodies[("ns/demo", "v1")]).hexdigest()
    assert put_index(registry, "ns/demo", "v1", entries).digest == first.digest
