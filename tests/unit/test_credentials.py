"""Credentials found as docker finds them: config.json's auths, credsStore and credHelpers."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from raybuild.credentials import (
    Credentials,
    CredentialsError,
    docker_config_dir,
    find_credentials,
)

PASSWORD = "s3cret-p4ss"


def _config(folder: Path, config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on PATH for fake ``docker-credential-*`` helpers; each logs the server it was asked for."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def _helper(folder: Path, name: str, known: dict[str, dict[str, str]]) -> Path:
    """A helper speaking the protocol: ``get`` reads the server on stdin, prints JSON or fails."""
    script = folder / f"docker-credential-{name}"
    log = folder / f"{name}.log"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"known = {json.dumps(known)!r}\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + server + '\\n')\n"
        "entry = json.loads(known).get(server)\n"
        "if entry is None:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "print(json.dumps(entry))\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def test_an_auths_entry_gives_the_user_and_password(tmp_path: Path) -> None:
    folder = _config(
        tmp_path / "docker", {"auths": {"registry.example.com": {"auth": _auth("ann", PASSWORD)}}}
    )
    lookup = find_credentials("registry.example.com", folder)
    assert lookup.credentials == Credentials("ann", PASSWORD)
    assert lookup.helper is None
    assert lookup.source == f"auths in {folder / 'config.json'}"


def test_an_auths_entry_written_as_a_url_matches_its_host(tmp_path: Path) -> None:
    folder = _config(
        tmp_path / "docker", {"auths": {"https://127.0.0.1:5100/v1/": {"auth": _auth("a", "b")}}}
    )
    assert find_credentials("127.0.0.1:5100", folder).credentials == Credentials("a", "b")
    assert find_credentials("127.0.0.1:5101", folder).credentials is None


def test_docker_hub_credentials_are_found_under_its_index_url(tmp_path: Path) -> None:
    folder = _config(
        tmp_path / "docker", {"auths": {"https://index.docker.io/v1/": {"auth": _auth("u", "p")}}}
    )
    for name in ("docker.io", "registry-1.docker.io"):
        assert find_credentials(name, folder).credentials == Credentials("u", "p")


def test_an_identity_token_is_kept_as_one(tmp_path: Path) -> None:
    folder = _config(tmp_path / "docker", {"auths": {"ghcr.example": {"identitytoken": "refresh-me"}}})
    credentials = find_credentials("ghcr.example", folder).credentials
    assert credentials is not None
    assert credentials.is_identity_token
    assert credentials.secret == "refresh-me"


def test_no_config_file_means_no_credentials_and_never_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docker-py alone would fall back to ~/.docker/config.json; docker's CLI, and raybuild, do not.
    home = _config(tmp_path / "home" / ".docker", {"auths": {"r.example": {"auth": _auth("home", "x")}}})
    monkeypatch.setenv("HOME", str(home.parent))
    lookup = find_credentials("r.example", tmp_path / "empty")
    assert lookup.credentials is None
    assert lookup.source == f"none in {tmp_path / 'empty' / 'config.json'}"


def test_the_config_folder_is_docker_config_else_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert docker_config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert docker_config_dir({}) == tmp_path / "home" / ".docker"


def test_a_cred_helper_is_run_with_the_server_on_stdin(tmp_path: Path, helper_bin: Path) -> None:
    log = _helper(helper_bin, "fake", {"127.0.0.1:5100": {"Username": "bot", "Secret": PASSWORD}})
    folder = _config(tmp_path / "docker", {"credHelpers": {"127.0.0.1:5100": "fake"}})
    lookup = find_credentials("127.0.0.1:5100", folder)
    assert lookup.credentials == Credentials("bot", PASSWORD)
    assert lookup.helper == "fake"
    assert lookup.source == "credential helper docker-credential-fake"
    assert log.read_text() == "get 127.0.0.1:5100\n"


def test_a_creds_store_serves_every_registry_and_auths_backs_it_up(tmp_path: Path, helper_bin: Path) -> None:
    _helper(helper_bin, "store", {"a.example": {"Username": "<token>", "Secret": "idtoken"}})
    folder = _config(
        tmp_path / "docker",
        {"credsStore": "store", "auths": {"b.example": {"auth": _auth("b", "pw")}}},
    )
    from_store = find_credentials("a.example", folder)
    assert from_store.credentials == Credentials("", "idtoken", is_identity_token=True)
    # Not in the store: docker reads auths next, and so does raybuild.
    assert find_credentials("b.example", folder).credentials == Credentials("b", "pw")
    missing = find_credentials("c.example", folder)
    assert missing.credentials is None
    assert (
        missing.login_hint == "run `docker login c.example` (it stores them through docker-credential-store)"
    )


def test_a_missing_helper_is_an_error_naming_it(tmp_path: Path, helper_bin: Path) -> None:
    folder = _config(tmp_path / "docker", {"credHelpers": {"ecr.example": "ecr-login"}})
    with pytest.raises(CredentialsError) as caught:
        find_credentials("ecr.example", folder)
    assert str(caught.value) == (
        "cannot get credentials for ecr.example: docker-credential-ecr-login is not installed or not on PATH"
    )
    assert caught.value.hint is not None and "docker-credential-ecr-login get" in caught.value.hint


def test_a_failing_helper_is_an_error_that_leaves_its_output_out(tmp_path: Path, helper_bin: Path) -> None:
    script = helper_bin / "docker-credential-broken"
    script.write_text(f"#!/bin/sh\necho 'oops {PASSWORD}' >&2\necho 'leaked {PASSWORD}'\nexit 3\n")
    script.chmod(0o755)
    folder = _config(tmp_path / "docker", {"credsStore": "broken"})
    with pytest.raises(CredentialsError) as caught:
        find_credentials("r.example", folder)
    assert str(caught.value) == "cannot get credentials for r.example: docker-credential-broken failed"
    assert PASSWORD not in str(caught.value) + str(caught.value.hint)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}), "has an unreadable auths entry"),
    ],
)
def test_a_broken_config_is_a_one_line_error(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(CredentialsError) as caught:
        find_credentials("r.example", tmp_path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_secret_is_never_in_repr_or_str() -> None:
    credentials = Credentials("ann", PASSWORD)
    lookup_text = repr(credentials) + str(credentials)
    assert PASSWORD not in lookup_text
    assert "ann" in lookup_text
    assert credentials.basic_authorization() == "Basic " + _auth("ann", PASSWORD)
