"""The one seam to Docker: ``Engine`` implements the ``Docker`` verbs (see `docker_verbs`) over the docker
CLI, run through the engine's ``Runner`` (see `runner`, which streams output, bounds each command with a
deadline and raises ``EngineError``). Nothing else in raybuild builds a docker command line.

It finds a BuildKit-capable client and reads Docker's structured output (``--format '{{json ...}}'``)
wherever Docker offers it. Unit tests swap in ``tests/unit/fakes.FakeEngine``, a model of the daemon.

Its sweeps (``remove_labelled``, ``release``) are the only way raybuild removes containers and networks:
by this project's labels (see `labels`), from IDs that docker printed on stdout in a machine-readable
format. A line that is not an ID (a warning about a broken ~/.docker/config.json, an error) stops the
removal instead of being taken for a container's name.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybuild.docker_client import DockerClient, find_docker_client
from raybuild.docker_verbs import DetachedContainer
from raybuild.errors import BuildError, DockerRetry, EngineError
from raybuild.labels import PROJECT_LABEL, PURPOSE_LABEL, label_filters, parse_ids
from raybuild.progress import Progress
from raybuild.reference import ImageRef, is_digest
from raybuild.runner import TAIL_LINES, Result, Runner, classify_failure, which

__all__ = ["Engine", "Result", "Runner", "classify_failure", "which"]

# Docker's own retry of a failed layer transfer ("Retrying in 5 seconds"); see Engine.push.
_DOCKER_RETRY = re.compile(r"\bRetrying in \d+ seconds?\b")
# Bounds on the calls that list and remove objects, for a daemon that does not answer.
_SWEEP_TIMEOUT_S = 60.0


class _DockerRetry(Exception):
    """Docker announced a retry of its own: the line before it says why."""


@dataclass
class Engine:
    """Runs docker and other tools. ``debug`` echoes every command to the callback."""

    client: DockerClient | None = None
    debug: bool = False
    echo: Progress | None = None
    env: dict[str, str] = field(default_factory=dict)
    # `docker build --network`: "host" lets RUN steps on a second daemon without NAT reach the index.
    build_network: str | None = None
    # Runs docker and every other tool; made from debug, echo and env (one env dict, shared).
    runner: Runner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = Runner(debug=self.debug, echo=self.echo, env=self.env)

    @property
    def docker(self) -> DockerClient:
        if self.client is None:
            self.client = find_docker_client(self.runner)
        return self.client

    def _docker(self, *args: str, **kwargs: Any) -> Result:
        """The docker CLI with ``args``, through the runner: the one place a docker command line is run."""
        return self.runner.run([self.docker.path, *args], **kwargs)

    # -- daemon -------------------------------------------------------------------------------------------

    def ping(self) -> None:
        result = self._docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
        if result.returncode != 0 or not result.output.strip():
            # Docker 20.10's client says only how the --format template failed on the missing answer
            # ("template: :1:2: executing ..."): noise next to "not reachable", so it is not shown.
            said = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("template:")]
            host = self.runner.environment().get("DOCKER_HOST")
            raise EngineError(
                "the Docker daemon is not reachable",
                command=result.command,
                returncode=result.returncode,
                output_tail="\n".join(said)[-2000:],
                hint="start it (sudo scripts/setup starts dockerd) and check `docker info`"
                + (f"; DOCKER_HOST is {host}" if host else ""),
            )

    def info(self, field: str, *, timeout: float) -> Any:
        """The daemon's ``docker info`` field (``ServerVersion``, ``Runtimes``), decoded from its JSON."""
        result = self._docker(
            "info",
            "--format",
            f"{{{{json .{field}}}}}",
            stdout_only=True,
            timeout=timeout,
            what="docker info",
        )
        return _json(result, "docker info")

    # -- images -------------------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return self._docker("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, ref: str) -> dict[str, Any]:
        result = self._docker("image", "inspect", ref, what=f"docker image inspect {ref}")
        data: list[dict[str, Any]] = json.loads(result.output)
        return data[0]

    def inspect_container(self, name: str) -> dict[str, Any]:
        result = self._docker("container", "inspect", name, what=f"docker container inspect {name}")
        data: list[dict[str, Any]] = json.loads(result.output)
        return data[0]

    def history(self, ref: str) -> str:
        """`docker history` of ``ref``, newest entry first: one JSON object a line."""
        return self._docker(
            "history",
            "--no-trunc",
            "--human=false",
            "--format",
            "{{json .}}",
            ref,
            what=f"docker history {ref}",
        ).output

    def image_ids(self, *, what: str) -> list[str]:
        """The IDs of every image in the store, intermediate ones too, as `docker image ls` prints them."""
        listed = self._docker("image", "ls", "-aq", "--no-trunc", stdout_only=True, what=what)
        return listed.output.split()

    def untag(self, ref: str) -> None:
        """Remove the tag ``ref`` only: the image stays while another tag or a container holds it."""
        self._docker("image", "rm", ref, check=False)

    def remove_images(self, ids: Iterable[str]) -> None:
        """Best effort: an image that a running container still uses stays."""
        chosen = list(ids)
        if chosen:
            self._docker("image", "rm", "--force", *chosen, check=False)

    def tag(self, source: str, target: str) -> None:
        self._docker("tag", source, target, what=f"docker tag {target}")

    def remove_image(self, ref: str) -> None:
        self._docker("image", "rm", "--force", ref, check=False)

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
        self.runner.run(command, env={"DOCKER_BUILDKIT": "1"}, on_line=on_line, error=BuildError, what=what)
        return iidfile.read_text().strip()

    def import_tarball(self, tarball: Path, ref: str, changes: Iterable[str] = ()) -> None:
        command = ["import"]
        for change in changes:
            command += ["--change", change]
        self._docker(*command, str(tarball), ref, what=f"docker import {ref}")

    def load(self, archive: Path, what: str) -> None:
        """`docker load` of an image archive (see image/archive.py)."""
        self._docker("load", "-q", "-i", str(archive), what=what)

    def save(self, ref: str, out: Path) -> None:
        self._docker("save", "-o", str(out), ref, what=f"docker save {ref}")

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
            return self._docker("push", ref, on_line=watch, timeout=timeout, what=f"docker push {ref}")
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
            host = self.runner.environment().get("DOCKER_HOST")
            if host:
                command += ["--src-daemon-host", host]
            # skopeo's docker-daemon: wants a tag where docker would assume :latest.
            named = is_digest(ref) or not ImageRef.parse(ref).is_bare
            source = ref if named else f"{ref}:latest"
            command += ["--digestfile", str(digestfile), f"docker-daemon:{source}", f"docker://{target}"]
            self.runner.run(
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
        return self._docker(*args, on_line=on_line, timeout=timeout, what=what or f"docker pull {ref}")

    # -- containers -------------------------------------------------------------------------------------

    def run_detached(self, container: DetachedContainer, *, what: str) -> None:
        """`docker run -d` of ``container``; the caller removes it by name and labels if this fails."""
        self._docker(*run_detached_args(container), what=what)

    def run_once(
        self,
        image: str,
        entrypoint: str,
        args: Iterable[str],
        *,
        labels: Mapping[str, str],
        user: str | None = None,
        what: str,
    ) -> Result:
        """Run ``entrypoint args`` in a throwaway container of ``image`` with no network; its output."""
        command = ["run", "--rm", "--network", "none"]
        if user is not None:
            command += ["--user", user]
        for key, value in labels.items():
            command += ["--label", f"{key}={value}"]
        return self._docker(*command, "--entrypoint", entrypoint, image, *args, what=what)

    def start(self, name: str) -> bool:
        """`docker start` of a stopped container; whether it started."""
        return self._docker("start", name, check=False).returncode == 0

    def stop(self, name: str, *, grace: int, timeout: float | None = None) -> bool:
        """`docker stop`: SIGTERM, then SIGKILL after ``grace`` seconds; whether it stopped."""
        return self._docker("stop", "-t", str(grace), name, check=False, timeout=timeout).returncode == 0

    def container_state(self, name: str) -> dict[str, Any] | None:
        """The container's ``State`` (``Running``, ``ExitCode`` ...); None when there is no such container."""
        result = self._docker(
            "container", "inspect", "--format", "{{json .State}}", name, check=False, stdout_only=True
        )
        if result.returncode != 0:
            return None
        state: dict[str, Any] = _json(result, f"docker container inspect {name}")
        return state

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result:
        return self._docker("exec", container, *command, check=check, timeout=timeout)

    def published_port(self, container: str, port: int) -> int:
        """The host port that Docker published a container's TCP ``port`` on."""
        result = self._docker(
            "container", "inspect", "--format", "{{json .NetworkSettings.Ports}}", container,
            stdout_only=True, what=f"docker port {container} {port}",
        )  # fmt: skip
        ports = _json(result, f"docker port {container} {port}")
        try:
            return int(ports[f"{port}/tcp"][0]["HostPort"])
        except (IndexError, KeyError, TypeError, ValueError) as exc:
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
        result = self._docker(
            "ps", "-a", "--no-trunc", "--format", "{{.ID}}", *filters,
            stdout_only=True, timeout=_SWEEP_TIMEOUT_S, what="docker ps",
        )  # fmt: skip
        return parse_ids(result.output, "docker ps")

    def network_ids(self, labels: Mapping[str, str]) -> list[str]:
        """The IDs of the networks that carry every one of ``labels``; checked like ``container_ids``."""
        result = self._docker(
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
        return self._docker(*command, name, check=check, what=f"docker network create {name}")

    def remove_network(self, name: str) -> bool:
        return self._docker("network", "rm", name, check=False, timeout=_SWEEP_TIMEOUT_S).returncode == 0

    def remove_containers(self, labels: Mapping[str, str], *, name: str | None = None) -> int:
        """Remove the containers that ``container_ids`` lists (and their anonymous volumes); how many went."""
        ids = self.container_ids(labels, name=name)
        failed = []
        for container in ids:
            result = self._docker(
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
            return self._docker(
                *command, "--entrypoint", "python", image, "-", *args,
                stdin=script, check=check, timeout=timeout, what=what,
            )  # fmt: skip
        finally:
            self.release(labels, name=name)

    def logs(self, container: str, tail: int = 30) -> str:
        return self._docker("logs", "--tail", str(tail), container, check=False).output


def run_detached_args(container: DetachedContainer) -> list[str]:
    """The `docker run -d` arguments (after the docker binary) for ``container``."""
    args = ["run", "-d", "--name", container.name]
    if container.platform:
        args += ["--platform", container.platform]
    if container.hostname:
        args += ["--hostname", container.hostname]
    if container.network:
        args += ["--network", container.network]
    if container.ip:
        args += ["--ip", container.ip]
    for key, value in sorted(container.labels.items()):
        args += ["--label", f"{key}={value}"]
    if container.nofile:
        args += ["--ulimit", f"nofile={container.nofile}:{container.nofile}"]
    if container.shm_size:
        args.append(f"--shm-size={container.shm_size}")
    if container.restart:
        args += ["--restart", container.restart]
    if container.stop_timeout is not None:
        args += ["--stop-timeout", str(container.stop_timeout)]
    if container.gpus:
        args += ["--gpus", "all" if container.gpus == "all" else f"count={container.gpus}"]
    for port, host_port in sorted(container.publish.items()):
        args += ["-p", f"127.0.0.1:{host_port or ''}:{port}"]
    for key, value in sorted(container.env.items()):
        args += ["-e", f"{key}={value}"]
    args.append(container.image)
    if container.command:
        args += ["/bin/bash", "-c", "--", container.command]
    return args


def _json(result: Result, what: str) -> Any:
    """Docker's ``{{json ...}}`` answer on stdout; EngineError when it is not JSON (a warning, an error)."""
    try:
        return json.loads(result.output)
    except ValueError as exc:
        raise EngineError(
            f"{what}: unexpected answer {result.output.strip()[:100]!r}",
            command=result.command,
            output_tail=result.stderr,
        ) from exc
