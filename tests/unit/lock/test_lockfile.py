"""A lockfile's integrity: any edit or cut of its pins fails the check, and `raybuild lock` repairs it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from raybuild.config import LoadedConfig
from raybuild.errors import LockError
from raybuild.lock import lockfile
from raybuild.lock import resolve as locking
from tests.conftest import MainResult, TmpProject
from tests.unit.fakes import FakeResolver


@pytest.fixture
def locked(tmp_project: TmpProject) -> LoadedConfig:
    config = tmp_project.load()
    locking.lock(config, config.apps, runner=FakeResolver())
    return config


def _demo(config: LoadedConfig) -> Path:
    return config.lockfile(config.apps[0])


def test_the_header_hashes_exactly_the_body_below_it(locked: LoadedConfig) -> None:
    found = lockfile.read(_demo(locked))
    assert found is not None and found.problem is None
    assert found.header.splitlines()[-1] == (
        f"{lockfile.BODY_HASH}{hashlib.sha256(found.body.encode()).hexdigest()}"
    )
    assert found.header + found.body == _demo(locked).read_text()


def test_every_cut_of_the_body_fails_the_check(locked: LoadedConfig) -> None:
    path = _demo(locked)
    whole = path.read_bytes()
    header = len(lockfile.read(path).header.encode())  # type: ignore[union-attr]
    for size in range(header, len(whole), 7):
        path.write_bytes(whole[:size])
        assert locking.stale(locked, locked.apps) == ["lockfiles/demo.txt"], f"cut at byte {size} passed"


def test_every_changed_character_of_the_body_fails_the_check(locked: LoadedConfig) -> None:
    path = _demo(locked)
    text = path.read_text()
    start = len(lockfile.read(path).header)  # type: ignore[union-attr]
    for index in range(start, len(text), 5):
        edited = text[:index] + ("x" if text[index] != "x" else "y") + text[index + 1 :]
        path.write_text(edited)
        assert locking.stale(locked, locked.apps) == ["lockfiles/demo.txt"], f"edit at {index} passed"


def test_a_pin_line_moved_into_the_header_is_caught(locked: LoadedConfig) -> None:
    path = _demo(locked)
    text = path.read_text()
    path.write_text(text.replace(lockfile.BODY_HASH, "orjson==0.0.1\n" + lockfile.BODY_HASH, 1))
    assert locking.stale(locked, locked.apps) == ["lockfiles/demo.txt"]


@pytest.mark.parametrize(
    ("break_it", "problem"),
    [
        (lambda p: p.write_bytes(p.read_bytes() + b"\xff\n"), "not valid UTF-8 (byte 0xff at offset"),
        (lambda p: p.write_text(p.read_text().replace("orjson==1.0", "orjson==0.0.1")), "edited by hand"),
        (lambda p: p.write_bytes(p.read_bytes()[:-25]), "edited by hand or cut short"),
        (lambda p: p.write_text(""), "empty"),
    ],
    ids=["bad byte", "edited pin", "cut short", "emptied"],
)
def test_raybuild_lock_repairs_its_own_lockfile(
    locked: LoadedConfig,
    tmp_project: TmpProject,
    run_main: Callable[..., MainResult],
    monkeypatch: pytest.MonkeyPatch,
    break_it: Callable[[Path], object],
    problem: str,
) -> None:
    path = _demo(locked)
    good = path.read_bytes()
    break_it(path)
    found = lockfile.read(path)
    assert found is not None and (found.problem or "").startswith(problem)
    monkeypatch.setattr(locking, "_run", FakeResolver())
    result = run_main("--config", str(tmp_project.config_path), "lock", "demo")
    assert result.exit_code == 0, result.stderr
    assert path.read_bytes() == good
    assert locking.stale(locked, locked.apps) == []


def test_an_edited_ray_lock_is_relocked_by_any_lock(locked: LoadedConfig) -> None:
    ray = locked.ray_lockfile()
    good = ray.read_bytes()
    ray.write_text(ray.read_text().replace("ray==1.0", "ray==9.9"))
    resolver = FakeResolver()
    results = locking.lock(locked, locked.apps, runner=resolver)
    assert [r.name for r in results] == ["ray", "demo"]
    assert ray.read_bytes() == good


def test_lock_never_writes_over_a_file_it_did_not_make(locked: LoadedConfig) -> None:
    path = _demo(locked)
    path.write_text("# my own notes\norjson==3.0\n")
    with pytest.raises(LockError) as raised:
        locking.lock(locked, locked.apps, runner=FakeResolver())
    assert raised.value.message == "lockfiles/demo.txt: not written by raybuild: it has no raybuild header"
    assert "never writes over a file it did not make" in (raised.value.hint or "")
    assert path.read_text() == "# my own notes\norjson==3.0\n"


def test_a_lockfile_keeps_its_mode_when_it_is_rewritten(
    locked: LoadedConfig, tmp_project: TmpProject
) -> None:
    path = _demo(locked)
    path.chmod(0o664)
    tmp_project.requirements.write_text("orjson\nrich\n")
    config = tmp_project.load()
    locking.lock(config, config.apps, runner=FakeResolver())
    assert "rich==1.0" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o664


def test_a_new_lockfile_gets_the_umask_not_0600(tmp_project: TmpProject) -> None:
    old = os.umask(0o027)
    try:
        config = tmp_project.load()
        locking.lock(config, config.apps, runner=FakeResolver())
    finally:
        os.umask(old)
    assert _demo(config).stat().st_mode & 0o777 == 0o640
