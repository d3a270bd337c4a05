"""The distribution project's auth flow, over urllib: what a registry's ``401`` asks for, and the answer.

- ``WWW-Authenticate: Basic realm=...`` (htpasswd registries, ECR) is answered with Basic credentials.
- ``Bearer realm=...,service=...,scope=...`` (Docker Hub, GHCR, GAR, Quay, Harbor, distribution's token
  auth) is answered with a token from the realm, asked for with Basic credentials when there are any and
  anonymously otherwise (an identity token is exchanged as an OAuth2 refresh token instead). The answer's
  ``token`` or ``access_token`` is cached per scope for its ``expires_in`` (60 s when it says nothing, as
  the token spec has it) and fetched anew once when the registry refuses it.
- Scopes are ``repository:NAME:pull`` for reads, ``repository:NAME:pull,push`` for writes, plus
  ``repository:OTHER:pull`` for a blob mounted from another repository.

Credentials are looked up (see ``credentials.py``) only when a registry asks for them, so an anonymous
registry never runs a helper. Every refusal is a :class:`RegistryAuthError` naming the registry and the
cause; no message, ``repr`` or log carries a password or a token. A redirect to another host (a blob in
object storage) does not carry the ``Authorization`` header along.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Literal

from raybuild.credentials import CredentialLookup, Credentials, find_credentials
from raybuild.errors import RaybuildError
from raybuild.registry_challenges import Challenge, answerable_challenge, scopes_for, token_grants_push
from raybuild.registry_tls import TlsSettings, is_verification_failure

# TLS trouble is registry_tls.RegistryTlsError, which names where the CA goes.
Cause = Literal[
    "no-credentials", "wrong-credentials", "push-denied", "pull-denied", "unreachable", "protocol"
]
# The token spec's default lifetime; a token is dropped this many seconds early so it cannot expire in flight.
DEFAULT_TOKEN_SECONDS = 60
_EXPIRY_MARGIN_SECONDS = 5


class RegistryAuthError(RaybuildError):
    """A registry refused raybuild, or could not be spoken to; ``cause`` says which way, for ``doctor``."""

    def __init__(self, registry: str, cause: Cause, message: str, hint: str | None = None) -> None:
        super().__init__(f"{registry}: {message}", hint=hint)
        self.registry = registry
        self.cause: Cause = cause

    def details(self) -> dict[str, Any]:
        return {"registry": self.registry, "cause": self.cause}


@dataclass(frozen=True)
class RegistryResponse:
    """A registry's answer, read whole (manifests, indexes, small blobs)."""

    status: int
    headers: Message
    body: bytes
    url: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float


class AuthenticatedRegistry:
    """Requests to one registry, answering its challenges as docker does.

    ``host`` is ``HOST[:PORT]`` as an image reference gives it. ``find`` looks up the credentials (docker's,
    by default) the first time the registry asks; ``clock`` is monotonic seconds (a parameter for tests).
    """

    def __init__(
        self,
        host: str,
        *,
        find: Callable[[str], CredentialLookup] = find_credentials,
        tls: TlsSettings | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._find = find
        self._tls = tls if tls is not None else TlsSettings()
        self._timeout = timeout
        self._clock = clock
        self._lookup: CredentialLookup | None = None
        self._base_url: str | None = None
        self._answers_basic = False
        self._bearer: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._tls.context_for(host)), _SameHostRedirects()
        )

    def __repr__(self) -> str:
        return f"AuthenticatedRegistry({self.host!r})"

    @property
    def credentials(self) -> CredentialLookup:
        """Where docker keeps this registry's credentials, and what it holds (looked up once)."""
        if self._lookup is None:
            self._lookup = self._find(self.host)
        return self._lookup

    def request(
        self,
        method: str,
        target: str,
        *,
        repository: str,
        push: bool = False,
        mount_from: str | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RegistryResponse:
        """``method target`` (a ``/v2/...`` path, or a URL the registry gave) with the access it needs.

        Answers any 4xx or 5xx other than 401 and 403 as it came (a 404 is an answer); raises
        :class:`RegistryAuthError` when the registry refuses what raybuild can present.
        """
        scopes = scopes_for(repository, push, mount_from)
        fresh_token = False
        refreshed = False
        for _ in range(4):
            if self._bearer is not None and not self._holds_token(scopes):
                # The registry's challenge is known: ask for this scope's token before, not after, a 401.
                self._tokens[scopes] = self._fetch_token(self._bearer, scopes, repository, push)
                fresh_token = True
            authorization = self._authorization(scopes)
            response = self._send(method, target, body, {**(headers or {}), **authorization})
            if response.status == 403:
                if self.credentials.credentials is None:
                    raise self._anonymous_refused(repository, push)
                raise self._denied(repository, push, "HTTP 403")
            if response.status != 401:
                return response
            challenge = answerable_challenge(response.headers.get_all("WWW-Authenticate") or [])
            if challenge is None:
                raise RegistryAuthError(
                    self.host, "protocol", "answered HTTP 401 with no Basic or Bearer challenge"
                )
            if challenge.scheme == "basic":
                if authorization:
                    raise self._refused()
                self._require_credentials(repository, push)
                self._answers_basic = True
                continue
            if authorization:
                if self.credentials.credentials is None:
                    raise self._anonymous_refused(repository, push)
                if challenge.params.get("error") == "insufficient_scope":
                    raise self._denied(repository, push, "the token lacks the scope")
                if fresh_token or refreshed:
                    raise self._refused()
                refreshed = True  # a cached token the registry no longer takes: fetch one, once
            self._bearer = challenge
            self._tokens[scopes] = self._fetch_token(challenge, scopes, repository, push)
            fresh_token = True
        raise RegistryAuthError(self.host, "protocol", "kept answering HTTP 401 to its own challenges")

    # -- answering challenges ------------------------------------------------------------------------------

    def _holds_token(self, scopes: tuple[str, ...]) -> bool:
        token = self._tokens.get(scopes)
        if token is not None and token.expires_at > self._clock():
            return True
        self._tokens.pop(scopes, None)
        return False

    def _authorization(self, scopes: tuple[str, ...]) -> dict[str, str]:
        if self._holds_token(scopes):
            return {"Authorization": f"Bearer {self._tokens[scopes].value}"}
        credentials = self.credentials.credentials if self._answers_basic else None
        if credentials is not None:
            return {"Authorization": credentials.basic_authorization()}
        return {}

    def _require_credentials(self, repository: str, push: bool) -> Credentials:
        credentials = self.credentials.credentials
        if credentials is None:
            raise self._anonymous_refused(repository, push)
        return credentials

    def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], repository: str, push: bool
    ) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(self.host, "protocol", "sent a Bearer challenge without a realm")
        service = challenge.params.get("service")
        credentials = self.credentials.credentials
        query: list[tuple[str, str]] = [("service", service)] if service else []
        if credentials is not None and credentials.is_identity_token:
            # docker's exchange of an identity token: an OAuth2 refresh-token grant, posted to the realm.
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", credentials.secret),
                ("client_id", "raybuild"),
                *query,
                ("scope", " ".join(scopes)),
            ]
            request = urllib.request.Request(realm, data=urllib.parse.urlencode(form).encode(), method="POST")
        else:
            query += [("scope", scope) for scope in scopes]
            if credentials is not None:
                query.append(("account", credentials.username))
            request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}")
            if credentials is not None:
                request.add_header("Authorization", credentials.basic_authorization())
        response = self._open(request, what=f"its token server {_without_query(realm)}")
        if response.status in (401, 403):
            raise self._refused() if credentials is not None else self._anonymous_refused(repository, push)
        if response.status != 200:
            raise RegistryAuthError(
                self.host,
                "protocol",
                f"its token server {_without_query(realm)} answered HTTP {response.status}",
            )
        try:
            answer = response.json()
            value = answer.get("token") or answer.get("access_token")
            seconds = int(answer.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(
                self.host, "protocol", f"its token server {_without_query(realm)} sent no token"
            )
        if push and not token_grants_push(value, repository):
            raise self._denied(repository, push, "the token server granted pull only")
        return _Token(value, self._clock() + max(seconds - _EXPIRY_MARGIN_SECONDS, 1))

    # -- sending -------------------------------------------------------------------------------------------

    def _send(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> RegistryResponse:
        if self._base_url is None:
            self._base_url = self._choose_scheme()
        url = urllib.parse.urljoin(self._base_url, target)
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        return self._open(request, what="the registry")

    def _choose_scheme(self) -> str:
        """HTTPS first, as docker does; plain HTTP only where docker would fall back to it."""
        https = f"https://{self.host}"
        try:
            self._open(urllib.request.Request(f"{https}/v2/"), what="the registry", raw=True)
        except urllib.error.URLError as exc:
            if is_verification_failure(exc.reason):
                raise self._tls.untrusted(
                    self.host, getattr(exc.reason, "verify_message", "unverified")
                ) from None
            if self._tls.allows_plain_http(self.host):
                return f"http://{self.host}"
            raise self._unreachable(exc.reason, https) from None
        return https

    def _open(self, request: urllib.request.Request, *, what: str, raw: bool = False) -> RegistryResponse:
        try:
            with self._opener.open(request, timeout=self._timeout) as answer:
                return RegistryResponse(answer.status, answer.headers, answer.read(), answer.url)
        except urllib.error.HTTPError as answer:
            with answer:
                return RegistryResponse(answer.code, answer.headers, answer.read(), answer.url)
        except urllib.error.URLError as exc:
            if raw:
                raise
            if is_verification_failure(exc.reason):
                raise self._tls.untrusted(
                    request.host, getattr(exc.reason, "verify_message", "unverified")
                ) from None
            raise self._unreachable(exc.reason, what) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # A connection cut mid-answer, an answer that is not HTTP, or a registry-sent URL that is not one.
            if raw:
                raise urllib.error.URLError(exc) from None
            raise self._unreachable(exc, what) from None

    # -- refusals -------------------------------------------------------------------------------------------

    def _anonymous_refused(self, repository: str, push: bool) -> RegistryAuthError:
        lookup = self.credentials
        return RegistryAuthError(
            self.host,
            "no-credentials",
            f"refused anonymous {'push to' if push else 'pull of'} {repository}: no credentials found "
            f"({lookup.source})",
            hint=lookup.login_hint,
        )

    def _refused(self) -> RegistryAuthError:
        lookup = self.credentials
        return RegistryAuthError(
            self.host,
            "wrong-credentials",
            f"refused the credentials from {lookup.source} (HTTP 401)",
            hint=f"{lookup.login_hint} again with the right user and password",
        )

    def _denied(self, repository: str, push: bool, why: str) -> RegistryAuthError:
        credentials = self.credentials.credentials
        who = credentials.username if credentials is not None and credentials.username else "this login"
        action = "push" if push else "pull"
        return RegistryAuthError(
            self.host,
            "push-denied" if push else "pull-denied",
            f"{who} may not {action} {repository} ({why})",
            hint=f"ask the registry's admins for {action} access to {repository}, or log in as a user who "
            f"has it (`docker login {self.host}`)",
        )

    def _unreachable(self, reason: object, what: str) -> RegistryAuthError:
        shown = reason.__class__.__name__ if isinstance(reason, BaseException) else str(reason)
        detail = getattr(reason, "strerror", None) or getattr(reason, "reason", None) or shown
        return RegistryAuthError(
            self.host,
            "unreachable",
            f"cannot reach {what} ({detail})",
            hint="check the address, the port and that the registry is running",
        )


def _without_query(url: str) -> str:
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping ``Authorization`` when one leaves the registry's host."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and urllib.parse.urlsplit(newurl).netloc != req.host:
            redirected.remove_header("Authorization")
        return redirected
