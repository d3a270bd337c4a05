"""One error hierarchy. The CLI renders each as a single line plus a hint, never a traceback."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

# A path is shown whole up to this many characters; a longer one (a mistyped option, a 100,000-character
# argument) is cut in the middle, so the error stays one readable line.
_SHOWN_PATH_MAX = 120


class RaybuildError(Exception):
    """A failure the user can act on. ``hint`` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def details(self) -> dict[str, Any]:
        """Extra fields of the ``--json`` error object (besides ok, error and hint)."""
        return {}


def shown_path(path: object) -> str:
    """A path as an error message shows it: whole, or cut in the middle when it is very long."""
    text = str(path)
    if len(text) <= _SHOWN_PATH_MAX:
        return text
    return f"{text[:60]}...{text[-40:]} ({len(text)} characters)"


class FileError(RaybuildError):
    """A file or folder raybuild reads or writes cannot be used: in the way, read-only, or not UTF-8."""

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None, action: str = "use") -> FileError:
        """One line naming the path and what stopped raybuild, and a hint on what to do about it."""
        target = path if path is not None else exc.filename
        shown = shown_path(target) if target is not None else "a file"
        code = exc.errno
        if code in (errno.ENOTDIR, errno.EEXIST) and target is not None:
            blocker = _file_in_the_way(Path(str(target)))
            if blocker is not None:
                return cls(
                    f"cannot {action} {shown}: {shown_path(blocker)} is a file, not a folder",
                    hint="move that file away, or choose another path",
                )
        reasons = {
            errno.EISDIR: ("it is a folder, not a file", "give the path of a file"),
            errno.EROFS: ("the file system is read-only", "choose a path on a writable file system"),
            errno.EACCES: ("permission denied", "check the permissions, or choose another path"),
            errno.EPERM: ("operation not permitted", "check the permissions, or choose another path"),
            errno.ENAMETOOLONG: ("the path is too long", "use a shorter path"),
            errno.ENOSPC: ("no space left on the device", "free some space, then rerun"),
            errno.ENOENT: ("no such file or folder", "check the path"),
            errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
        }
        reason, hint = reasons.get(code or 0, (exc.strerror or str(exc), "check the path and rerun"))
        return cls(f"cannot {action} {shown}: {reason}", hint=hint)

    @classmethod
    def not_utf8(cls, path: object, exc: UnicodeError, hint: str | None = None) -> FileError:
        reason = unreadable(exc) if isinstance(exc, UnicodeDecodeError) else "not valid UTF-8"
        shown = shown_path(path) if path is not None else "a file raybuild read"
        return cls(f"{shown}: {reason}", hint=hint or "save it as UTF-8 text, then rerun")


def unreadable(exc: OSError | UnicodeError) -> str:
    """Why a file could not be read, in a few words (for messages that already name the file)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    return str(exc)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path``'s parent folders that exists as something other than a folder."""
    for parent in path.parents:
        try:
            if parent.exists():
                return None if parent.is_dir() else parent
        except OSError:
            return None
    return None


class ReportedFailure(RaybuildError):
    """A command's own report (the doctor table, the gate, a drill) shows a failure.

    ``report`` is that report's JSON: with --json, main() prints it inside the one error object, so a
    script reads the same keys whether the command passed or failed.
    """

    def __init__(self, message: str, hint: str | None = None, report: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint)
        self.report = report or {}

    def details(self) -> dict[str, Any]:
        return dict(self.report)


class ConfigError(RaybuildError):
    """raybuild.toml (or another input file) is missing or invalid."""


class UsageError(RaybuildError):
    """The command line names something that does not exist, such as an unknown app."""

    exit_code = 2


class LockError(RaybuildError):
    """Resolving or checking a lockfile failed."""


class StaleLockError(LockError):
    """One or more lockfiles are missing, out of date, or no longer what raybuild wrote."""

    def __init__(
        self, problems: list[tuple[str, str]], command: str = "raybuild lock", hint: str | None = None
    ) -> None:
        if len(problems) == 1:
            message = f"{problems[0][0]}: {problems[0][1]}"
        else:
            listed = "; ".join(f"{path}: {reason}" for path, reason in problems)
            message = f"{len(problems)} lockfiles need regenerating: {listed}"
        super().__init__(message, hint=hint or f"run `{command}` and commit the result")
        self.stale = [path for path, _ in problems]
        self.problems = problems

    def details(self) -> dict[str, Any]:
        return {"stale": self.stale}


class EngineError(RaybuildError):
    """A docker (or other external) command failed. Carries the command, exit code and output tail.

    ``timed_out``: the command was killed at its deadline, rather than failing by itself.
    """

    def __init__(
        self,
        message: str,
        *,
        command: list[str] | None = None,
        returncode: int | None = None,
        output_tail: str = "",
        hint: str | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.command = command or []
        self.returncode = returncode
        self.output_tail = output_tail
        self.timed_out = timed_out


class BuildError(EngineError):
    """An image build failed."""


class DockerRetry(EngineError):
    """Docker began to retry a layer transfer on its own, which it does only for faults it deems transient
    (a 5xx answer, a reset connection). The engine stopped it there: retrying is raybuild's to do."""


class SmokeTestError(RaybuildError):
    """A built image did not come up or did not answer the way KubeRay expects."""


class GpuUnavailable(RaybuildError):
    """No GPU, no driver, a driver too old for the app's CUDA, or no NVIDIA container runtime."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "run `raybuild doctor`, and check `nvidia-smi` on this host")


class MeasureError(RaybuildError):
    """An image could not be measured (an unexpected manifest, history or tool output)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "rerun with --debug to see the tool output that was not understood")


class GateError(RaybuildError):
    """A measurement file is malformed."""


class ScanError(EngineError):
    """A vulnerability scan failed, or its report could not be read."""


class ScannerUnavailable(RaybuildError):
    """trivy is not on PATH, or its vulnerability database cannot be had.

    Its own exit code, so that CI can tell "could not scan" from "vulnerabilities found" (exit 1).
    """

    exit_code = 3


class PublishError(RaybuildError):
    """Pushing to the registry failed."""


class RegistryError(RaybuildError):
    """A registry (``address``: HOST[:PORT]) did not do what raybuild asked of it.

    ``reason`` is the registry's own part of the message (``HTTP 503 Service Unavailable``), for callers
    that name the image themselves; the message adds the address when it is known.
    """

    def __init__(self, reason: str, *, address: str = "", hint: str | None = None) -> None:
        super().__init__(f"registry {address}: {reason}" if address else reason, hint)
        self.reason, self.address = reason, address


class RegistryUnreachable(RegistryError):
    """Nothing answered (``down``), or the registry failed with a transient fault: worth retrying.

    ``attempts``: how many were made before this one was raised (1 when it was not retried).
    """

    def __init__(
        self, reason: str, *, down: bool, address: str = "", attempts: int = 1, hint: str | None = None
    ) -> None:
        what = "is not reachable" if down else "kept failing" if attempts > 1 else "failed"
        tried = f", {attempts} attempts" if attempts > 1 else ""
        if hint is None:
            hint = (
                "check that the registry is running and that its address is right"
                if down
                else "the registry or the network is unstable: rerun"
            )
        super().__init__(reason, address=address, hint=hint)
        if address:  # one line that says what happened, as publish and build report it
            self.message = f"registry {address} {what} ({reason}{tried})"
        self.down, self.attempts = down, attempts


class RegistryUnverifiable(RegistryError):
    """The registry will not show this to an anonymous client, not over this scheme, or not readably.

    Permanent: retrying gets the same answer.
    """

    def __init__(self, reason: str, *, address: str = "", hint: str | None = None) -> None:
        super().__init__(
            reason,
            address=address,
            hint=hint
            or "raybuild reads registries anonymously: check the address, and that it serves "
            "this repository without a login",
        )


class ManifestError(RaybuildError):
    """A rendered Kubernetes manifest is invalid."""


class StateError(RaybuildError):
    """What an earlier command recorded under ``.raybuild/`` is missing or unreadable."""


class ClusterError(RaybuildError):
    """The local cluster could not be started or is not running."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "run `raybuild down`, then `raybuild up` (add --debug for details)")
