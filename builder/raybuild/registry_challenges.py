"""What a registry's ``WWW-Authenticate`` header asks for, and the scopes a request needs.

The header grammar is RFC 7235's: challenges of ``scheme param=value, ...``, where a quoted value may hold
commas and escaped quotes (distribution's ``scope="repository:a:pull,push"`` does). Kept apart from the
flow in ``registry_auth.py`` as pure functions, so each rule has a table test.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_TOKEN_CHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_AUTH_PARAM = re.compile(rf'\s*({_TOKEN_CHAR}+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
_SCHEME = re.compile(rf"\s*({_TOKEN_CHAR}+)")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: its scheme (lower case) and parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in ``header`` (RFC 7235: quoted values may hold commas and escaped quotes)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    position = 0
    while position < len(header):
        if header[position] in ", \t":
            position += 1
            continue
        param = _AUTH_PARAM.match(header, position)
        if param is not None and challenges:
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            challenges[-1][1][param.group(1).lower()] = value
            position = param.end()
            continue
        scheme = _SCHEME.match(header, position)
        if scheme is None:
            break  # not a header this grammar knows: what was read so far is all there is
        challenges.append((scheme.group(1).lower(), {}))
        position = scheme.end()
    return [Challenge(scheme, params) for scheme, params in challenges]


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def scopes_for(repository: str, push: bool = False, mount_from: str | None = None) -> tuple[str, ...]:
    """The scopes a request needs: pull to read, pull and push to write, pull on a mount's source."""
    scopes = [repository_scope(repository, "pull", "push") if push else repository_scope(repository, "pull")]
    if mount_from is not None and mount_from != repository:
        scopes.append(repository_scope(mount_from, "pull"))
    return tuple(scopes)


def answerable_challenge(headers: Sequence[str]) -> Challenge | None:
    """The challenge to answer: Bearer before Basic, as docker prefers."""
    challenges = [challenge for header in headers for challenge in parse_challenges(header)]
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def token_grants_push(token: str, repository: str) -> bool:
    """False only for a JWT whose ``access`` claim lacks push on ``repository``; opaque tokens may push."""
    parts = token.split(".")
    if len(parts) != 3:
        return True
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return True
    access = claims.get("access") if isinstance(claims, dict) else None
    if not isinstance(access, list):
        return True
    return any(
        isinstance(entry, dict)
        and entry.get("type") == "repository"
        and entry.get("name") == repository
        and "push" in (entry.get("actions") or [])
        for entry in access
    )
