"""Reading and writing files the way every raybuild command does.

Writes are atomic: a temporary file in the same folder, then a rename, so a crash or Ctrl-C leaves the old
file intact. The new file gets the mode any editor would give it: the old file's mode when it replaces one,
else what the umask allows (mkstemp alone would make every lockfile and manifest 0600). A file that cannot
be read or written is one ``FileError`` naming the path, never a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from raybuild.errors import FileError


def _umask() -> int:
    # The only portable way to read the umask is to set it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: Path, text: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` atomically; ``mode`` overrides the mode it would get (see above)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FileError.from_os_error(exc, path, "write") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            handle.flush()
            os.fchmod(handle.fileno(), _mode_for(path) if mode is None else mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FileError.from_os_error(exc, path, "write") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path) -> None:
    """Fail now, naming ``path``, where writing it later would fail: a file where a folder has to be, or a
    folder that cannot be written. For commands that work minutes before they write (`raybuild measure`)."""
    for parent in path.parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise FileError.from_os_error(OSError(errno.ENOTDIR, "Not a directory"), path, "write")
        if not os.access(parent, os.W_OK):
            raise FileError.from_os_error(OSError(errno.EACCES, "Permission denied"), path, "write")
        return


def read_text(path: Path, *, hint: str | None = None) -> str:
    """A UTF-8 text file; a ``FileError`` naming it when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileError.not_utf8(path, exc, hint) from exc
    except OSError as exc:
        raise FileError.from_os_error(exc, path, "read") from exc
