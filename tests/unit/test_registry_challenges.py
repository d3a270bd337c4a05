"""The challenge header's grammar, the scopes a request needs, and what a token grants."""

from __future__ import annotations

import base64
import json

import pytest

from raybuild.registry_challenges import (
    Challenge,
    answerable_challenge,
    parse_challenges,
    scopes_for,
    token_grants_push,
)


def test_a_bearer_challenge_with_commas_in_quotes_is_read_whole() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/a:pull,push repository:team/b:pull",error="insufficient_scope"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:team/a:pull,push repository:team/b:pull",
                "error": "insufficient_scope",
            },
        )
    ]


def test_several_challenges_escapes_and_bare_values() -> None:
    header = r'Basic realm="say \"hi\", please", Bearer  Realm=https://t.example/token , service = svc'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": 'say "hi", please'}),
        Challenge("bearer", {"realm": "https://t.example/token", "service": "svc"}),
    ]


def test_an_empty_or_odd_header_gives_what_it_can() -> None:
    assert parse_challenges("") == []
    assert parse_challenges('Basic realm="x", "stray') == [Challenge("basic", {"realm": "x"})]


def test_scopes_for_reads_writes_and_mounts() -> None:
    assert scopes_for("team/a") == ("repository:team/a:pull",)
    assert scopes_for("team/a", push=True) == ("repository:team/a:pull,push",)
    assert scopes_for("team/a", push=True, mount_from="team/b") == (
        "repository:team/a:pull,push",
        "repository:team/b:pull",
    )
    assert scopes_for("team/a", push=True, mount_from="team/a") == ("repository:team/a:pull,push",)


def test_bearer_is_answered_before_basic() -> None:
    chosen = answerable_challenge(['Basic realm="r"', 'Negotiate, Bearer realm="https://t.example"'])
    assert chosen == Challenge("bearer", {"realm": "https://t.example"})
    assert answerable_challenge(["Negotiate"]) is None


def _jwt(claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("token", "grants"),
    [
        (_jwt({"access": [{"type": "repository", "name": "team/a", "actions": ["pull", "push"]}]}), True),
        (_jwt({"access": [{"type": "repository", "name": "team/a", "actions": ["pull"]}]}), False),
        (_jwt({"access": [{"type": "repository", "name": "team/b", "actions": ["push"]}]}), False),
        (_jwt({"access": []}), False),
        (_jwt({"sub": "no access claim: the registry decides"}), True),
        ("an-opaque-token", True),
        ("not.a.jwt!", True),
    ],
)
def test_a_jwt_without_push_on_the_repository_is_known_not_to_push(token: str, grants: bool) -> None:
    assert token_grants_push(token, "team/a") is grants
