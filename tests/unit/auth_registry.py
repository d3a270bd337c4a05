"""A small registry on 127.0.0.1 that challenges as real ones do, for registry_auth's unit tests.

It serves ``/v2/``, manifests (GET/HEAD read, PUT writes), blob mounts (``POST .../blobs/uploads/?mount=``)
and a blob that redirects to another server. ``basic`` mode checks htpasswd-like users (with a set of
users that may push); ``bearer`` mode checks the JWTs of a :class:`tests.token_server.TokenServer` and
their ``access`` claim. Optional TLS with a certificate from ``tests.certs``.
"""

from __future__ import annotations

import base64
import re
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

from tests.certs import KeyPair
from tests.token_server import TokenServer

_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
_UPLOAD = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")


@dataclass
class AuthRegistry:
    mode: str  # "anonymous", "basic" or "bearer"
    basic_users: Mapping[str, str] = field(default_factory=dict)
    basic_pushers: frozenset[str] = frozenset()
    tokens: TokenServer | None = None
    tls: KeyPair | None = None
    redirect_blobs_to: str | None = None
    host: str = ""
    manifests: dict[str, bytes] = field(default_factory=dict)
    # (method, path, the Authorization scheme or "") of every request, for the tests.
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    accepted_jti: set[str] = field(default_factory=set)
    revoked_jti: set[str] = field(default_factory=set)
    headers_seen: list[Mapping[str, str]] = field(default_factory=list)

    def revoke_tokens_seen(self) -> None:
        """From now on refuse every token accepted so far (as a registry refuses a token past its time)."""
        self.revoked_jti |= self.accepted_jti

    # -- access --------------------------------------------------------------------------------------------

    def challenge(self, scope: str | None, error: str | None = None) -> str:
        if self.mode == "basic":
            return 'Basic realm="raybuild test, with a comma"'
        assert self.tokens is not None
        params = [f'realm="{self.tokens.url}"', f'service="{self.tokens.service}"']
        if scope:
            params.append(f'scope="{scope}"')
        if error:
            params.append(f'error="{error}"')
        return "Bearer " + ",".join(params)

    def allows(self, authorization: str, name: str, action: str) -> tuple[int, str | None]:
        """The status for a request needing ``action`` on ``name``: 0 to serve it, else 401 or 403."""
        if self.mode == "anonymous":
            return 0, None
        if self.mode == "basic":
            if not authorization.startswith("Basic "):
                return 401, None
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.basic_users.get(user) != password:
                return 401, None
            return (0, None) if action == "pull" or user in self.basic_pushers else (403, None)
        assert self.tokens is not None
        if not authorization.startswith("Bearer "):
            return 401, None
        try:
            claims = jwt.decode(
                authorization[7:],
                self.tokens.signing.certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256"],
                audience=self.tokens.service,
                issuer=self.tokens.issuer,
            )
        except jwt.InvalidTokenError:
            return 401, "invalid_token"
        if claims["jti"] in self.revoked_jti:
            return 401, "invalid_token"
        self.accepted_jti.add(claims["jti"])
        for entry in claims["access"]:
            if entry["type"] == "repository" and entry["name"] == name and action in entry["actions"]:
                return 0, None
        return 401, "insufficient_scope"


def _handler(registry: AuthRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _guard(self, name: str, action: str, scope_actions: str) -> bool:
            authorization = self.headers.get("Authorization", "")
            status, error = registry.allows(authorization, name, action)
            if status == 0:
                return True
            scope = f"repository:{name}:{scope_actions}"
            headers = {"WWW-Authenticate": registry.challenge(scope, error)} if status == 401 else {}
            self._reply(status, b'{"errors": [{"code": "DENIED"}]}', headers)
            return False

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            authorization = self.headers.get("Authorization", "")
            registry.seen.append((self.command, path, authorization.partition(" ")[0]))
            registry.headers_seen.append(dict(self.headers))
            if path == "/v2/":
                if registry.mode == "anonymous" or registry.allows(authorization, "", "pull")[0] != 401:
                    self._reply(200, b"{}")
                else:
                    self._reply(401, b"{}", {"WWW-Authenticate": registry.challenge(None)})
                return
            if manifest := _MANIFEST.match(path):
                name, ref = manifest["name"], manifest["ref"]
                if self.command == "PUT":
                    if self._guard(name, "push", "pull,push"):
                        registry.manifests[f"{name}:{ref}"] = body
                        self._reply(201)
                elif self._guard(name, "pull", "pull"):
                    found = registry.manifests.get(f"{name}:{ref}")
                    self._reply(404) if found is None else self._reply(200, found)
                return
            if (upload := _UPLOAD.match(path)) and self.command == "POST":
                source = dict(part.partition("=")[::2] for part in query.split("&")).get("from")
                if self._guard(upload["name"], "push", "pull,push") and (
                    source is None or self._guard(source, "pull", "pull")
                ):
                    self._reply(201)
                return
            if (blob := _BLOB.match(path)) and registry.redirect_blobs_to is not None:
                if self._guard(blob["name"], "pull", "pull"):
                    self._reply(307, headers={"Location": f"{registry.redirect_blobs_to}/{blob['digest']}"})
                return
            if self.headers.get("Authorization") is None:
                # The redirect's target: object storage, which must not be sent the registry's credentials.
                self._reply(200, b"blob bytes")
                return
            self._reply(400, b"credentials sent past a redirect")

        do_GET = do_HEAD = do_PUT = do_POST = _handle

    return Handler


@contextmanager
def running_registry(registry: AuthRegistry) -> Iterator[AuthRegistry]:
    """``registry`` on 127.0.0.1 (a free port, ``registry.host``), over TLS when it has a certificate."""
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    if registry.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(registry.tls.cert_file), str(registry.tls.key_file))
        http.socket = context.wrap_socket(http.socket, server_side=True)
    registry.host = f"127.0.0.1:{http.server_address[1]}"
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=5)
