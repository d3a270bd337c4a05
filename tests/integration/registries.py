"""Real registries with auth, on 127.0.0.1, for the integration tests: Debian's docker-registry (distribution
2.8) behind htpasswd and TLS, and behind token auth with the tests' own token server.

Each is a context manager that picks a free port, writes its config, htpasswd file, CA and certificates into
a temporary folder, starts ``docker-registry serve``, waits until ``/v2/`` answers, and stops it (and
removes what it put in a ``certs.d`` folder) when the block ends. Users: ``pusher`` may pull and push,
``reader`` may only pull (on the htpasswd registry every user may do both: htpasswd has no per-user
access, as on a real one).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from raybuild.registry_tls import TlsSettings
from tests.certs import KeyPair, issue_server_cert, make_ca
from tests.token_server import TokenServer, TokenUser, running_token_server

DOCKER_REGISTRY = "docker-registry"
SERVICE = "raybuild-test-registry"
ISSUER = "raybuild-test-issuer"
USERS = {"pusher": "pusher-pw-4e1c9a", "reader": "reader-pw-77b0d2"}
_READY_TIMEOUT_S = 30.0


@dataclass
class RunningRegistry:
    """A registry the tests started: its address, who may log in, and how a client trusts it."""

    host: str
    users: dict[str, str]
    tls: TlsSettings
    log: Path
    ca: KeyPair | None = None
    tokens: TokenServer | None = None
    # Every secret it knows of (passwords, and the tokens its token server issued), for the grep tests.
    secrets: list[str] = field(default_factory=list)

    def all_secrets(self) -> list[str]:
        issued = self.tokens.issued if self.tokens is not None else []
        return [*self.secrets, *issued]


def docker_registry_binary() -> str:
    """The registry program, or a skip (a failure under CI=true: scripts/setup installs it)."""
    found = shutil.which(DOCKER_REGISTRY)
    if found is None:
        message = f"{DOCKER_REGISTRY} is not installed (Debian package docker-registry)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}; scripts/setup should have installed it", pytrace=False)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(folder: Path, port: int, auth: str, tls: KeyPair | None) -> Path:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {folder / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: raybuild-test-upload-secret",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls.cert_file}", f"    key: {tls.key_file}"]
    path = folder / "config.yml"
    path.write_text("\n".join([*lines, auth]) + "\n", encoding="utf-8")
    return path


@contextmanager
def _serving(config: Path, host: str, scheme: str, ca: KeyPair | None) -> Iterator[Path]:
    """``docker-registry serve CONFIG`` until the block ends; yields its log."""
    log = config.parent / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen([docker_registry_binary(), "serve", str(config)], stdout=out, stderr=out)
    try:
        _wait_ready(f"{scheme}://{host}/v2/", ca, process, log)
        yield log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, ca: KeyPair | None, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca.cert_file)) if ca is not None else None
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=2, context=context).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not answer at {url}; its log ends:\n{tail}")


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    # bcrypt is the only hash distribution's htpasswd accepts; a low cost keeps each login fast.
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=6)).decode()}"
        for user, pw in users.items()
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _trust(certs_d: Path, host: str, ca: KeyPair, stack: ExitStack) -> None:
    """Put the CA where docker (and raybuild) look for it, and take it away afterwards."""
    folder = certs_d / host
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca.cert_file.read_bytes())
    stack.callback(shutil.rmtree, folder, ignore_errors=True)


@contextmanager
def htpasswd_tls_registry(folder: Path, certs_d: Path) -> Iterator[RunningRegistry]:
    """docker-registry with ``auth: htpasswd`` behind TLS (a CA made here, trusted through ``certs_d``).

    Pass ``/etc/docker/certs.d`` as ``certs_d`` for dockerd to trust it as well.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder / "ca")
    server = issue_server_cert(ca, folder / "server", ip="127.0.0.1")
    port = _free_port()
    host = f"127.0.0.1:{port}"
    _htpasswd(folder / "htpasswd", USERS)
    auth = f"auth:\n  htpasswd:\n    realm: raybuild-test\n    path: {folder / 'htpasswd'}"
    config = _config(folder, port, auth, server)
    with ExitStack() as stack:
        _trust(certs_d, host, ca, stack)
        log = stack.enter_context(_serving(config, host, "https", ca))
        tls = TlsSettings(certs_d=certs_d, daemon_json=folder / "daemon.json", ssl_cert_file=None)
        yield RunningRegistry(host, dict(USERS), tls, log, ca=ca, secrets=list(USERS.values()))


@contextmanager
def token_registry(folder: Path) -> Iterator[RunningRegistry]:
    """docker-registry with ``auth: token`` against a token server run here (plain HTTP, on loopback)."""
    folder.mkdir(parents=True, exist_ok=True)
    signing = make_ca(folder / "signing", common_name="raybuild test token signer")
    users = {
        "pusher": TokenUser(USERS["pusher"], frozenset({"pull", "push"})),
        "reader": TokenUser(USERS["reader"], frozenset({"pull"})),
    }
    port = _free_port()
    host = f"127.0.0.1:{port}"
    with running_token_server(TokenServer(signing, users, SERVICE, ISSUER)) as tokens:
        auth = "\n".join(
            [
                "auth:",
                "  token:",
                f"    realm: {tokens.url}",
                f"    service: {SERVICE}",
                f"    issuer: {ISSUER}",
                f"    rootcertbundle: {signing.cert_file}",
            ]
        )
        config = _config(folder, port, auth, None)
        with _serving(config, host, "http", None) as log:
            tls = TlsSettings(
                certs_d=folder / "certs.d", daemon_json=folder / "daemon.json", ssl_cert_file=None
            )
            yield RunningRegistry(host, dict(USERS), tls, log, tokens=tokens, secrets=list(USERS.values()))
