"""Registry credentials, found where and as docker finds them.

Docker's client reads ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json`` when the variable is
unset): ``credHelpers`` names a helper per registry, ``credsStore`` a helper for all of them, and
``auths`` holds entries written by ``docker login`` without a helper (``auth``: base64 of
``user:password``; ``identitytoken``: an OAuth2 refresh token). A helper is a program
``docker-credential-NAME``; ``get`` reads the server on stdin and writes ``{"Username", "Secret"}``.

The reading and the helper protocol are docker-py's (``docker.auth.AuthConfig``, ``docker.credentials.Store``)
rather than our own: it is the Docker project's own Python client, it follows the CLI's lookup order
(helper for the registry, then the store, then ``auths``, with legacy ``https://HOST/v1/`` keys matched by
host), and it needs no daemon: those two modules read files and run the helper, nothing else. It also runs
the helper itself, so raybuild's rule that only ``runner.py`` runs processes is kept. What docker-py does
differently from the CLI is handled here: it falls back to ``~/.docker`` when ``$DOCKER_CONFIG`` has no
``config.json`` (the CLI does not, and a test's own ``DOCKER_CONFIG`` must never reach the user's), and it
raises its own exception types, which become :class:`CredentialsError` here.

Credentials stay in memory: nothing here writes, logs or prints them, and their ``repr`` hides the secret.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker.auth
import docker.errors

from raybuild.errors import RaybuildError

CONFIG_FILE_NAME = "config.json"
HELPER_PREFIX = "docker-credential-"
# Docker Hub's credentials are stored under its v1 index URL, whatever name a reference gives it.
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "docker.io"


class CredentialsError(RaybuildError):
    """Docker's configuration names credentials for a registry that cannot be had."""


@dataclass(frozen=True)
class Credentials:
    """What to answer a registry's challenge with. ``repr`` and ``str`` never show ``secret``."""

    username: str
    secret: str = field(repr=False)
    # An identity token (``docker login`` to an OAuth2 registry) is a refresh token, not a password.
    is_identity_token: bool = False

    def basic_authorization(self) -> str:
        """The ``Authorization`` header value for HTTP Basic."""
        pair = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def __str__(self) -> str:
        return f"credentials for {self.username or 'an identity token'}"


@dataclass(frozen=True)
class CredentialLookup:
    """Where docker would look for a registry's credentials, and what it found there."""

    registry: str
    credentials: Credentials | None
    config_path: Path
    # The helper docker asks for this registry (``credHelpers``, else ``credsStore``); None: ``auths`` only.
    helper: str | None = None

    @property
    def found(self) -> bool:
        return self.credentials is not None

    @property
    def source(self) -> str:
        """Where they came from (or would have), in words, for ``doctor`` and hints."""
        if self.helper is not None and self.found:
            return f"credential helper {HELPER_PREFIX}{self.helper}"
        if self.found:
            return f"auths in {self.config_path}"
        if self.helper is not None:
            return f"none in credential helper {HELPER_PREFIX}{self.helper} or auths in {self.config_path}"
        return f"none in {self.config_path}"

    @property
    def login_hint(self) -> str:
        """What the user runs to give raybuild credentials for this registry."""
        hint = f"run `docker login {self.registry}`"
        if self.helper is not None:
            hint += f" (it stores them through {HELPER_PREFIX}{self.helper})"
        return hint


def docker_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder docker's client reads: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    env = os.environ if environ is None else environ
    configured = env.get("DOCKER_CONFIG")
    return Path(configured) if configured else Path.home() / ".docker"


def find_credentials(registry: str, config_dir: Path | None = None) -> CredentialLookup:
    """The credentials docker would send to ``registry`` (``HOST[:PORT]``, as in an image reference)."""
    config_path = (config_dir if config_dir is not None else docker_config_dir()) / CONFIG_FILE_NAME
    config = _read_config(config_path)
    if not config:
        # docker-py given nothing would go looking in ~/.docker itself.
        return CredentialLookup(registry, None, config_path)
    key = _DOCKER_HUB_KEY if registry in _DOCKER_HUB_NAMES else registry
    try:
        auth_config = docker.auth.load_config(config_dict=config)
    except (docker.errors.DockerException, ValueError):
        # A malformed ``auths`` entry (not an object, or ``auth`` that is not base64 of user:password).
        raise CredentialsError(
            f"docker's configuration {config_path} has an unreadable auths entry",
            hint=f"run `docker login {registry}` again to rewrite it",
        ) from None
    helper = auth_config.get_credential_store(key)
    try:
        with warnings.catch_warnings():
            # A helper that is not on PATH is a warning there, then a StoreError: the error says it.
            warnings.simplefilter("ignore")
            entry = auth_config.resolve_authconfig(key)
    except docker.errors.DockerException as exc:
        raise _helper_failed(registry, helper, exc) from None
    return CredentialLookup(registry, _credentials_from(entry), config_path, helper)


def _read_config(path: Path) -> dict[str, object] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise CredentialsError(
            f"cannot read docker's configuration {path}: {exc.__class__.__name__}",
            hint="fix its permissions, or point DOCKER_CONFIG at another folder",
        ) from None
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise CredentialsError(
            f"docker's configuration {path} is not JSON (line {getattr(exc, 'lineno', '?')})",
            hint="fix the file, or run `docker login` again to rewrite it",
        ) from None
    if not isinstance(loaded, dict):
        raise CredentialsError(
            f"docker's configuration {path} is not a JSON object", hint="fix the file, or move it away"
        )
    return loaded


def _credentials_from(entry: Mapping[str, object] | None) -> Credentials | None:
    """Credentials from one of docker-py's resolved entries (from ``auths`` or a helper)."""
    if not entry:
        return None
    token = entry.get("IdentityToken")
    if isinstance(token, str) and token:
        username = entry.get("Username")
        return Credentials(username if isinstance(username, str) else "", token, is_identity_token=True)
    # Entries from ``auths`` come lower-case from docker-py, those from a helper capitalised.
    username = entry.get("Username", entry.get("username"))
    password = entry.get("Password", entry.get("password"))
    if isinstance(username, str) and isinstance(password, str) and (username or password):
        return Credentials(username, password)
    return None


def _helper_failed(registry: str, helper: str | None, exc: Exception) -> CredentialsError:
    program = f"{HELPER_PREFIX}{helper}" if helper else "docker's credential helper"
    # The helper's own output is left out: a broken helper may echo what it was given or holds.
    reason = "is not installed or not on PATH" if "not installed" in str(exc) else "failed"
    return CredentialsError(
        f"cannot get credentials for {registry}: {program} {reason}",
        hint=f"check it with `echo {registry} | {program} get`, or run `docker login {registry}`",
    )
