"""The distribution auth flow against small registries on 127.0.0.1 (Basic, Bearer, TLS, redirects)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raybuild.credentials import CredentialLookup, Credentials
from raybuild.registry_auth import AuthenticatedRegistry, RegistryAuthError
from raybuild.registry_tls import RegistryTlsError, TlsSettings
from tests.certs import KeyPair, issue_server_cert, make_ca
from tests.token_server import TokenServer, TokenUser, running_token_server
from tests.unit.auth_registry import AuthRegistry, running_registry

PASSWORD = "correct-horse-battery"
WRONG = "wrong-horse-battery"
CONFIG = Path("/home/dev/.docker/config.json")
SERVICE = "raybuild-test-registry"


def _find(
    user: str | None, password: str = PASSWORD, helper: str | None = None
) -> Callable[[str], CredentialLookup]:
    credentials = Credentials(user, password) if user is not None else None
    return lambda host: CredentialLookup(host, credentials, CONFIG, helper)


def _assert_no_secret(error: BaseException, *secrets: str) -> None:
    text = f"{error} {getattr(error, 'hint', '')} {error!r}"
    for secret in (PASSWORD, WRONG, base64.b64encode(f"ann:{PASSWORD}".encode()).decode(), *secrets):
        assert secret not in text
    assert "\n" not in str(error)


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_ca(tmp_path_factory.mktemp("signing"), common_name="token signer")


@pytest.fixture
def tokens(signing: KeyPair) -> Iterator[TokenServer]:
    users = {
        "ann": TokenUser(PASSWORD, frozenset({"pull", "push"}), refresh_token="ann-refresh"),
        "reader": TokenUser(PASSWORD, frozenset({"pull"})),
        "nobody": TokenUser(PASSWORD, frozenset()),
    }
    with running_token_server(TokenServer(signing, users, SERVICE, "raybuild-test-issuer")) as server:
        yield server


@pytest.fixture
def bearer(tokens: TokenServer) -> Iterator[AuthRegistry]:
    with running_registry(AuthRegistry("bearer", tokens=tokens)) as registry:
        registry.manifests["team/hello:v1"] = b'{"schemaVersion": 2}'
        yield registry


@pytest.fixture
def basic() -> Iterator[AuthRegistry]:
    users = {"ann": PASSWORD, "reader": PASSWORD}
    with running_registry(
        AuthRegistry("basic", basic_users=users, basic_pushers=frozenset({"ann"}))
    ) as registry:
        registry.manifests["team/hello:v1"] = b'{"schemaVersion": 2}'
        yield registry


# -- Basic --------------------------------------------------------------------------------------------------


def test_basic_is_answered_and_then_sent_up_front(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find("ann"))
    first = client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert (first.status, first.body) == (200, b'{"schemaVersion": 2}')
    assert client.request("HEAD", "/v2/team/hello/manifests/v1", repository="team/hello").status == 200
    put = client.request("PUT", "/v2/team/hello/manifests/v2", repository="team/hello", push=True, body=b"{}")
    assert put.status == 201
    assert basic.manifests["team/hello:v2"] == b"{}"
    # One 401 in all: once the registry said Basic, every later request carried it.
    assert [scheme for _, path, scheme in basic.seen if path != "/v2/"] == ["", "Basic", "Basic", "Basic"]


def test_a_missing_manifest_is_an_answer_not_an_error(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find("ann"))
    assert client.request("GET", "/v2/team/hello/manifests/nope", repository="team/hello").status == 404


def test_basic_without_credentials_says_none_were_found(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find(None, helper="pass"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert str(caught.value) == (
        f"{basic.host}: refused anonymous pull of team/hello: no credentials found "
        f"(none in credential helper docker-credential-pass or auths in {CONFIG})"
    )
    assert (
        caught.value.hint
        == f"run `docker login {basic.host}` (it stores them through docker-credential-pass)"
    )
    assert caught.value.cause == "no-credentials"


def test_basic_with_a_wrong_password_says_so(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find("ann", WRONG))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert str(caught.value) == f"{basic.host}: refused the credentials from auths in {CONFIG} (HTTP 401)"
    assert caught.value.cause == "wrong-credentials"
    assert caught.value.details() == {"registry": basic.host, "cause": "wrong-credentials"}
    _assert_no_secret(caught.value)


def test_basic_push_refused_with_403_is_missing_push_access(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find("reader"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("PUT", "/v2/team/hello/manifests/v2", repository="team/hello", push=True, body=b"{}")
    assert str(caught.value) == f"{basic.host}: reader may not push team/hello (HTTP 403)"
    assert caught.value.cause == "push-denied"
    assert "team/hello:v2" not in basic.manifests


# -- Bearer -------------------------------------------------------------------------------------------------


def test_bearer_tokens_are_fetched_with_basic_and_cached_per_scope(
    bearer: AuthRegistry, tokens: TokenServer
) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("ann"))
    for _ in range(3):
        assert client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello").status == 200
    assert (
        client.request("PUT", "/v2/team/hello/manifests/v2", repository="team/hello", push=True).status == 201
    )
    assert tokens.requests == [
        ("ann", ("repository:team/hello:pull",)),
        ("ann", ("repository:team/hello:pull,push",)),
    ]


def test_anonymous_tokens_serve_public_pulls(signing: KeyPair) -> None:
    server = TokenServer(signing, {}, SERVICE, "raybuild-test-issuer", anonymous_actions=frozenset({"pull"}))
    with running_token_server(server), running_registry(AuthRegistry("bearer", tokens=server)) as registry:
        registry.manifests["library/ubuntu:22.04"] = b"{}"
        client = AuthenticatedRegistry(registry.host, find=_find(None))
        assert (
            client.request("GET", "/v2/library/ubuntu/manifests/22.04", repository="library/ubuntu").status
            == 200
        )
        assert server.requests == [("", ("repository:library/ubuntu:pull",))]


def test_bearer_anonymous_and_granted_nothing_says_no_credentials(bearer: AuthRegistry) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find(None))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert caught.value.cause == "no-credentials"
    assert str(caught.value).startswith(
        f"{bearer.host}: refused anonymous pull of team/hello: no credentials"
    )


def test_bearer_with_a_wrong_password_says_so(bearer: AuthRegistry) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("ann", WRONG))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert caught.value.cause == "wrong-credentials"
    _assert_no_secret(caught.value)


def test_a_pull_only_token_refuses_a_push_before_sending_it(bearer: AuthRegistry) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("reader"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("PUT", "/v2/team/hello/manifests/v2", repository="team/hello", push=True, body=b"{}")
    assert (
        str(caught.value)
        == f"{bearer.host}: reader may not push team/hello (the token server granted pull only)"
    )
    assert caught.value.cause == "push-denied"
    assert ("PUT", "/v2/team/hello/manifests/v2", "Bearer") not in bearer.seen


def test_a_token_without_the_scope_is_a_pull_refusal(bearer: AuthRegistry) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("nobody"))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert str(caught.value) == f"{bearer.host}: nobody may not pull team/hello (the token lacks the scope)"
    assert caught.value.cause == "pull-denied"


def test_an_expired_token_is_fetched_anew(bearer: AuthRegistry, tokens: TokenServer) -> None:
    now = [1000.0]
    client = AuthenticatedRegistry(bearer.host, find=_find("ann"), clock=lambda: now[0])
    client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    now[0] += tokens.lifetime_s - 30  # still in time
    client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert len(tokens.requests) == 1
    now[0] += 60  # past expires_in: fetched before sending, with no 401 in between
    client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert len(tokens.requests) == 2
    assert [scheme for _, _, scheme in bearer.seen] == ["", "Bearer", "Bearer", "Bearer"]


def test_a_token_the_registry_no_longer_takes_is_refreshed_once(
    bearer: AuthRegistry, tokens: TokenServer
) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("ann"))
    client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    bearer.revoke_tokens_seen()
    assert client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello").status == 200
    assert len(tokens.requests) == 2


def test_a_cross_repository_mount_asks_for_pull_on_the_source(
    bearer: AuthRegistry, tokens: TokenServer
) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("ann"))
    response = client.request(
        "POST",
        "/v2/team/hello/blobs/uploads/?mount=sha256:abc&from=team/base",
        repository="team/hello",
        push=True,
        mount_from="team/base",
    )
    assert response.status == 201
    assert tokens.requests == [("ann", ("repository:team/hello:pull,push", "repository:team/base:pull"))]


def test_an_identity_token_is_exchanged_as_a_refresh_token(bearer: AuthRegistry, tokens: TokenServer) -> None:
    lookup = CredentialLookup("x", Credentials("", "ann-refresh", is_identity_token=True), CONFIG)
    client = AuthenticatedRegistry(bearer.host, find=lambda host: lookup)
    assert client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello").status == 200
    assert tokens.requests == [("ann", ("repository:team/hello:pull",))]


def test_no_token_in_any_repr(bearer: AuthRegistry) -> None:
    client = AuthenticatedRegistry(bearer.host, find=_find("ann"))
    client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    held = [token for token in client._tokens.values()]
    assert held
    assert all(token.value not in repr(token) and token.value not in repr(client) for token in held)


# -- TLS, plain HTTP and redirects --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    folder = tmp_path_factory.mktemp("tls")
    ca = make_ca(folder / "ca")
    return ca, issue_server_cert(ca, folder / "server")


def test_https_with_a_certs_d_ca_is_used(tmp_path: Path, tls_ca: tuple[KeyPair, KeyPair]) -> None:
    ca, server = tls_ca
    with running_registry(AuthRegistry("basic", basic_users={"ann": PASSWORD}, tls=server)) as registry:
        registry.manifests["team/hello:v1"] = b"{}"
        certs_d = tmp_path / "certs.d"
        (certs_d / registry.host).mkdir(parents=True)
        (certs_d / registry.host / "ca.crt").write_bytes(ca.cert_file.read_bytes())
        tls = TlsSettings(certs_d=certs_d, ssl_cert_file=None)
        client = AuthenticatedRegistry(registry.host, find=_find("ann"), tls=tls)
        response = client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
        assert response.status == 200
        assert response.url.startswith(f"https://{registry.host}/")


def test_an_untrusted_certificate_is_an_error_even_on_loopback(
    tmp_path: Path, tls_ca: tuple[KeyPair, KeyPair]
) -> None:
    _, server = tls_ca
    with running_registry(AuthRegistry("anonymous", tls=server)) as registry:
        tls = TlsSettings(certs_d=tmp_path / "certs.d", ssl_cert_file=None)
        client = AuthenticatedRegistry(registry.host, find=_find(None), tls=tls)
        with pytest.raises(RegistryTlsError) as caught:
            client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert str(caught.value).startswith(f"{registry.host}: TLS certificate not trusted (")
    assert (
        caught.value.hint
        == f"put the registry's CA certificate in {tmp_path / 'certs.d' / registry.host / 'ca.crt'}"
    )
    assert all(path == "/v2/" for _, path, _ in registry.seen) or registry.seen == []


def test_a_plain_http_loopback_registry_is_reached_after_https_fails(basic: AuthRegistry) -> None:
    client = AuthenticatedRegistry(basic.host, find=_find("ann"))
    response = client.request("GET", "/v2/team/hello/manifests/v1", repository="team/hello")
    assert response.url.startswith(f"http://{basic.host}/")


def test_a_registry_that_is_not_there_is_unreachable() -> None:
    with running_registry(AuthRegistry("anonymous")) as registry:
        host = registry.host
    client = AuthenticatedRegistry(host, find=_find(None))
    with pytest.raises(RegistryAuthError) as caught:
        client.request("GET", "/v2/", repository="team/hello")
    assert caught.value.cause == "unreachable"
    assert str(caught.value).startswith(f"{host}: cannot reach the registry (")


def test_a_redirect_to_another_host_does_not_carry_the_credentials(basic: AuthRegistry) -> None:
    with running_registry(AuthRegistry("anonymous")) as storage:
        basic.redirect_blobs_to = f"http://{storage.host}/storage"
        client = AuthenticatedRegistry(basic.host, find=_find("ann"))
        response = client.request("GET", "/v2/team/hello/blobs/sha256:abc", repository="team/hello")
        assert (response.status, response.body) == (200, b"blob bytes")
        assert storage.seen == [("GET", "/storage/sha256:abc", "")]
