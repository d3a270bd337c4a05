"""A token server as distribution's token-auth spec describes one, for the tests' registries.

``GET /token?service=S&scope=repository:NAME:pull,push`` with Basic credentials (or none) answers
``{"token", "access_token", "expires_in", "issued_at"}``. The token is an RS256 JWT whose header carries the
signing certificate in ``x5c`` (docker-registry checks it against its ``rootcertbundle``), with the
``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti`` and ``access`` claims. Each user is granted
the actions it holds out of those asked for; a wrong password gets 401, anonymous asks get
``anonymous_actions``. ``POST /token`` takes an OAuth2 refresh-token grant (docker's identity tokens).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

from tests.certs import KeyPair


@dataclass(frozen=True)
class TokenUser:
    password: str
    actions: frozenset[str]
    refresh_token: str | None = None


@dataclass
class TokenServer:
    signing: KeyPair
    users: Mapping[str, TokenUser]
    service: str
    issuer: str
    lifetime_s: int = 300
    anonymous_actions: frozenset[str] = frozenset()
    url: str = ""
    # (user or "" for anonymous, scopes asked for) per token request, for tests that count them.
    requests: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    # Every token it handed out, for the tests that grep outputs for secrets.
    issued: list[str] = field(default_factory=list)

    def issue(self, subject: str, scopes: tuple[str, ...], actions: frozenset[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, asked = rest.rpartition(":")
            granted = [action for action in asked.split(",") if action in actions]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime_s,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        x5c = [base64.b64encode(self.signing.cert_der).decode("ascii")]
        return jwt.encode(claims, self.signing.key, algorithm="RS256", headers={"x5c": x5c})

    def answer(self, user: str, scopes: tuple[str, ...], actions: frozenset[str]) -> bytes:
        self.requests.append((user, scopes))
        token = self.issue(user, scopes, actions)
        self.issued.append(token)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        answer = {"token": token, "access_token": token, "expires_in": self.lifetime_s, "issued_at": issued}
        return json.dumps(answer).encode()


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            scopes = tuple(query.get("scope", []))
            if query.get("service", [""])[0] != server.service:
                self._send(400, b'{"details": "unknown service"}')
                return
            header = self.headers.get("Authorization", "")
            if not header:
                self._send(200, server.answer("", scopes, server.anonymous_actions))
                return
            user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
            known = server.users.get(user)
            if known is None or known.password != password:
                self._send(401, b'{"details": "wrong user or password"}')
                return
            self._send(200, server.answer(user, scopes, known.actions))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            refresh = form.get("refresh_token", [""])[0]
            for user, known in server.users.items():
                if known.refresh_token is not None and known.refresh_token == refresh:
                    scopes = tuple(form.get("scope", [""])[0].split())
                    self._send(200, server.answer(user, scopes, known.actions))
                    return
            self._send(401, b'{"error": "invalid_grant"}')

    return Handler


@contextmanager
def running_token_server(server: TokenServer) -> Iterator[TokenServer]:
    """``server`` answering on 127.0.0.1 (a free port) at ``server.url``, until the block ends."""
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{http.server_address[1]}/token"
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=5)
