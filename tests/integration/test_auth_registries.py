"""registry_auth against real registries: docker-registry behind htpasswd and TLS, and behind token auth.

Credentials come from a DOCKER_CONFIG of the test's own (never ~/.docker); the image is a tiny OCI image
(an empty config and one layer) pushed through the client's write path, so no Docker engine is needed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raybuild.credentials import CredentialLookup, find_credentials
from raybuild.registry_auth import AuthenticatedRegistry, RegistryAuthError
from raybuild.registry_tls import RegistryTlsError, TlsSettings
from tests.integration.registries import RunningRegistry, htpasswd_tls_registry, token_registry

pytestmark = pytest.mark.registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORY = "team/hello"


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    folder = tmp_path_factory.mktemp("htpasswd-tls")
    with htpasswd_tls_registry(folder, certs_d=folder / "certs.d") as registry:
        yield registry


@pytest.fixture(scope="module")
def token_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with token_registry(tmp_path_factory.mktemp("token")) as registry:
        yield registry


@pytest.fixture(params=["htpasswd_registry", "token_auth_registry"])
def auth_registry(request: pytest.FixtureRequest) -> RunningRegistry:
    """Each of the two, in turn."""
    registry = request.getfixturevalue(str(request.param))
    assert isinstance(registry, RunningRegistry)
    return registry


def _logged_in(
    tmp_path: Path, registry: RunningRegistry, user: str, password: str
) -> Callable[[str], CredentialLookup]:
    """What `docker login` leaves behind, in a DOCKER_CONFIG of this test's own."""
    config_dir = tmp_path / f"docker-{user}"
    config_dir.mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return lambda host: find_credentials(host, config_dir)


def _client(registry: RunningRegistry, find: Callable[[str], CredentialLookup]) -> AuthenticatedRegistry:
    return AuthenticatedRegistry(registry.host, find=find, tls=registry.tls)


def _blob(client: AuthenticatedRegistry, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = client.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", repository=REPOSITORY, push=True)
    assert started.status == 202, started.body
    location = started.headers["Location"]
    separator = "&" if "?" in location else "?"
    finished = client.request(
        "PUT",
        f"{location}{separator}digest={digest}",
        repository=REPOSITORY,
        push=True,
        body=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert finished.status == 201, finished.body
    return digest


def _layer() -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        content = b"hello from raybuild's auth test\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(archive.getvalue(), mtime=0)


def _push_image(client: AuthenticatedRegistry, tag: str) -> str:
    config, layer = b"{}", _layer()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _blob(client, config),
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _blob(client, layer),
                "size": len(layer),
            }
        ],
    }
    body = json.dumps(manifest).encode()
    put = client.request(
        "PUT",
        f"/v2/{REPOSITORY}/manifests/{tag}",
        repository=REPOSITORY,
        push=True,
        body=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status == 201, put.body
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _assert_clean(error: BaseException, registry: RunningRegistry) -> None:
    text = f"{error}\n{getattr(error, 'hint', '')}\n{error!r}\n{error.__cause__!r}\n{error.__context__!r}"
    for secret in registry.all_secrets():
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text
    for user, password in registry.users.items():
        assert base64.b64encode(f"{user}:{password}".encode()).decode() not in text
    assert "\n" not in str(error)


def test_pusher_pushes_and_reads_back_the_image(tmp_path: Path, auth_registry: RunningRegistry) -> None:
    pusher = _client(
        auth_registry, _logged_in(tmp_path, auth_registry, "pusher", auth_registry.users["pusher"])
    )
    digest = _push_image(pusher, "v1")
    reader = _client(
        auth_registry, _logged_in(tmp_path, auth_registry, "reader", auth_registry.users["reader"])
    )
    for client in (pusher, reader):
        head = client.request(
            "HEAD", f"/v2/{REPOSITORY}/manifests/v1", repository=REPOSITORY, headers={"Accept": OCI_MANIFEST}
        )
        assert head.status == 200
        assert head.headers["Docker-Content-Digest"] == digest
        got = client.request(
            "GET",
            f"/v2/{REPOSITORY}/manifests/{digest}",
            repository=REPOSITORY,
            headers={"Accept": OCI_MANIFEST},
        )
        assert got.status == 200
        assert got.json()["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_an_anonymous_read_names_the_registry_and_the_missing_login(
    tmp_path: Path, auth_registry: RunningRegistry
) -> None:
    client = _client(auth_registry, lambda host: find_credentials(host, tmp_path / "no-docker-config"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", f"/v2/{REPOSITORY}/manifests/v1", repository=REPOSITORY)
    assert str(caught.value) == (
        f"{auth_registry.host}: refused anonymous pull of {REPOSITORY}: no credentials found "
        f"(none in {tmp_path / 'no-docker-config' / 'config.json'})"
    )
    assert caught.value.hint == f"run `docker login {auth_registry.host}`"
    _assert_clean(caught.value, auth_registry)


def test_a_wrong_password_is_refused_in_one_line(tmp_path: Path, auth_registry: RunningRegistry) -> None:
    client = _client(auth_registry, _logged_in(tmp_path, auth_registry, "pusher", "not-the-password"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("HEAD", f"/v2/{REPOSITORY}/manifests/v1", repository=REPOSITORY)
    assert caught.value.cause == "wrong-credentials"
    assert str(caught.value).startswith(f"{auth_registry.host}: refused the credentials from auths in ")
    _assert_clean(caught.value, auth_registry)
    assert "not-the-password" not in f"{caught.value} {caught.value.hint}"


def test_a_pull_only_user_cannot_push(tmp_path: Path, token_auth_registry: RunningRegistry) -> None:
    # Only the token registry has pull-only users: htpasswd gives every user it knows push.
    auth_registry = token_auth_registry
    reader = _client(
        auth_registry, _logged_in(tmp_path, auth_registry, "reader", auth_registry.users["reader"])
    )
    with pytest.raises(RegistryAuthError) as caught:
        _push_image(reader, "v2")
    assert str(caught.value) == (
        f"{auth_registry.host}: reader may not push {REPOSITORY} (the token server granted pull only)"
    )
    assert caught.value.cause == "push-denied"
    _assert_clean(caught.value, auth_registry)


def test_an_untrusted_ca_names_where_to_put_it(tmp_path: Path, htpasswd_registry: RunningRegistry) -> None:
    auth_registry = htpasswd_registry
    untrusting = TlsSettings(
        certs_d=tmp_path / "empty-certs.d", daemon_json=tmp_path / "none.json", ssl_cert_file=None
    )
    client = AuthenticatedRegistry(
        auth_registry.host, find=lambda host: find_credentials(host, tmp_path), tls=untrusting
    )
    with pytest.raises(RegistryTlsError) as caught:
        client.request("GET", "/v2/", repository=REPOSITORY)
    assert str(caught.value).startswith(f"{auth_registry.host}: TLS certificate not trusted (")
    assert caught.value.hint == (
        f"put the registry's CA certificate in {tmp_path / 'empty-certs.d' / auth_registry.host / 'ca.crt'}"
    )
