"""Writes: atomic, with the mode an editor would give, and one line naming the path when they fail."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raybuild import fsutil
from raybuild.errors import FileError
from tests.conftest import MainResult


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_new_file_gets_what_the_umask_allows(
    tmp_path: Path, umask: Callable[[int], None], mask: int, expected: int
) -> None:
    umask(mask)
    fsutil.atomic_write(tmp_path / "new.txt", "text")
    assert mode(tmp_path / "new.txt") == expected


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old")
    path.chmod(0o600)
    fsutil.atomic_write(path, "new")
    assert (path.read_text(), mode(path)) == ("new", 0o600)
    path.chmod(0o755)
    fsutil.atomic_write(path, "newer")
    assert mode(path) == 0o755


def test_an_explicit_mode_wins(tmp_path: Path, umask: Callable[[int], None]) -> None:
    fsutil.atomic_write(tmp_path / "secret.json", "{}", mode=0o600)
    assert mode(tmp_path / "secret.json") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old")

    def refuse(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", refuse)
    with pytest.raises(FileError) as raised:
        fsutil.atomic_write(path, "new")
    assert raised.value.message == f"cannot write {path}: no space left on the device"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    assert path.read_text() == "old"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENAMETOOLONG, "the path is too long"),
    ],
)
def test_what_stops_a_write_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsutil, "tempfile", SimpleNamespace(mkstemp=refuse))
    with pytest.raises(FileError) as raised:
        fsutil.atomic_write(tmp_path / "out.md", "x")
    assert raised.value.message == f"cannot write {tmp_path / 'out.md'}: {reason}"
    assert raised.value.hint


def test_a_file_where_a_folder_must_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "deeper" / "out.md"
    for attempt in (lambda: fsutil.atomic_write(target, "x"), lambda: fsutil.check_writable(target)):
        with pytest.raises(FileError) as raised:
            attempt()
        assert raised.value.message == f"cannot write {target}: {tmp_path / 'a-file'} is a file, not a folder"


def test_check_writable_passes_a_path_that_can_be_written(tmp_path: Path) -> None:
    fsutil.check_writable(tmp_path / "not" / "yet" / "there.json")
    assert not (tmp_path / "not").exists(), "checking creates nothing"


def test_init_writes_files_an_editor_would_make(
    tmp_path: Path, umask: Callable[[int], None], run_main: Callable[..., MainResult]
) -> None:
    umask(0o022)
    assert run_main("init", str(tmp_path / "svc")).exit_code == 0
    files = [p for p in (tmp_path / "svc").rglob("*") if p.is_file()]
    assert files and {mode(p) for p in files} == {0o644}
