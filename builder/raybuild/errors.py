"""One error hierarchy. The CLI renders each as a single line plus a hint, never a traceback."""

from __future__ import annotations


class RaybuildError(Exception):
    """A failure the user can act on. ``hint`` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RaybuildError):
    """raybuild.toml (or another input file) is missing or invalid."""


class UsageError(RaybuildError):
    """The command line names something that does not exist, such as an unknown app."""

    exit_code = 2


class LockError(RaybuildError):
    """Resolving or checking a lockfile failed."""


class StaleLockError(LockError):
    """One or more lockfiles are missing or out of date."""

    def __init__(self, stale: list[str]) -> None:
        super().__init__(
            "stale or missing lockfiles: " + ", ".join(stale),
            hint="run `raybuild lock` and commit the result",
        )
        self.stale = stale


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


class ManifestError(RaybuildError):
    """A rendered Kubernetes manifest is invalid."""


class StateError(RaybuildError):
    """What an earlier command recorded under ``.raybuild/`` is missing or unreadable."""


class ClusterError(RaybuildError):
    """The local cluster could not be started or is not running."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "run `raybuild down`, then `raybuild up` (add --debug for details)")
