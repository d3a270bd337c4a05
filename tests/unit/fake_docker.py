"""Strict test doubles for the seam to Docker and to every other process.

``FakeEngine`` implements ``raybuild.docker_verbs.Docker`` over a model of the daemon (images, tags,
containers, networks), records every verb call, and raises ``NotModelled`` for a verb or argument
combination it does not model, so a test of an unmodelled path fails instead of passing on a blank success.
``FakeRunner`` stands in for ``raybuild.runner.Runner``: it answers only the commands a test told it to
expect, and raises ``NotModelled`` for any other. ``ScriptedDocker`` stands in for the docker binaries that
``find_docker_client`` tries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybuild.docker_client import DockerClient
from raybuild.docker_verbs import DetachedContainer
from raybuild.engine import run_detached_args
from raybuild.errors import BuildError, EngineError
from raybuild.labels import PROJECT_LABEL, label_filters
from raybuild.progress import Progress
from raybuild.runner import Result, classify_failure, which

# What the build-time import check finds in the apps the tests use (the bundled project, the tmp project's
# "demo" and "other"), by import path; a test scripts `run_python` itself for anything else.
SERVE_DEPLOYMENTS = {
    "hello_app:app": ["Hello"],
    "sklearn_app:app": ["Iris"],
    "cuda_app:app": ["CudaInfo"],
    "demo_app:app": ["Demo"],
    "other_app:app": ["Other"],
}

DOCKER = DockerClient("/usr/bin/docker", "28.1.1", buildx=True)
BUILD_OUTPUT = "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n"


class NotModelled(AssertionError):
    """The fake was asked for something it does not model: model it, or script the answer in the test."""


def image_id(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def container_id(name: str) -> str:
    """The 64-hex ID the fake daemon gives the container ``name``."""
    return image_id(f"container:{name}")[7:]


def network_id(name: str) -> str:
    return image_id(f"network:{name}")[7:]


@dataclass(frozen=True)
class Call:
    """One verb the code under test called, with its arguments."""

    verb: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    @property
    def words(self) -> tuple[Any, ...]:
        """The verb, then its positional arguments: ``("exec", "head", "bash", "-c", ...)``."""
        return (self.verb, *self.args)

    def __getitem__(self, key: str | int | slice) -> Any:
        """A keyword argument's value (``build["target"]``), or of ``words`` (``exec[1]``, ``exec[:3]``)."""
        return self.kwargs[key] if isinstance(key, str) else list(self.words)[key]

    def __contains__(self, word: object) -> bool:
        return word in self.words

    def __eq__(self, other: object) -> bool:
        """Equal to another Call, or to the list of its ``words``."""
        if isinstance(other, list):
            return list(self.words) == other
        if isinstance(other, Call):
            return (self.verb, self.args, dict(self.kwargs)) == (other.verb, other.args, dict(other.kwargs))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.verb, len(self.args)))


@dataclass(frozen=True)
class Answer:
    """A scripted answer: ``raises`` first, else ``returns``."""

    returns: Any = None
    raises: BaseException | None = None
    when: Mapping[str, Any] = field(default_factory=dict)


def _prefix_matches(prefix: tuple[Any, ...], args: Iterable[Any]) -> bool:
    values = list(args)
    # A container spec (run_detached's argument) matches its name.
    return len(values) >= len(prefix) and all(
        p in ("*", a, getattr(a, "name", None)) for p, a in zip(prefix, values, strict=False)
    )


class FakeRunner:
    """A Runner that runs nothing: each command must match an expectation, else ``NotModelled``."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.stdins: list[bytes | None] = []
        self.env: dict[str, str] = {}
        self._expected: list[tuple[tuple[str, ...], Any]] = []
        self._fallbacks: list[tuple[tuple[str, ...], Any]] = []

    def expect(
        self,
        *prefix: str,
        returncode: int = 0,
        output: str = "",
        stderr: str = "",
        raises: BaseException | None = None,
        effect: Any = None,
    ) -> None:
        """Answer commands that start with ``prefix`` (``*`` matches any one word); later ones win.

        ``effect(command)``, when given, runs first (it writes the files a tool would write).
        """
        self._expected.insert(0, (prefix, (returncode, output, stderr, raises, effect)))

    def expect_last(self, *prefix: str, **answer: Any) -> None:
        """Like ``expect``, but every other expectation, earlier or later, wins over it."""
        self.expect(*prefix, **answer)
        self._fallbacks.append(self._expected.pop(0))

    def environment(self) -> dict[str, str]:
        return dict(self.env)

    def calls(self, *prefix: str) -> list[list[str]]:
        return [c for c in self.commands if _prefix_matches(prefix, c)]

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
        self.commands.append(list(command))
        self.envs.append(dict(env or {}))
        self.stdins.append(stdin)
        found = next((a for p, a in self._expected + self._fallbacks if _prefix_matches(p, command)), None)
        if found is None:
            raise NotModelled(f"FakeRunner: no expectation for the command {command}")
        returncode, output, stderr, raises, effect = found
        if effect is not None:
            effect(command)
        if raises is not None:
            raise raises
        shown = output if stdout_only else "\n".join(x for x in (stderr, output) if x)
        for line in shown.splitlines():
            if on_line:
                on_line(line)
        if check and returncode != 0:
            tail = "\n".join(x for x in (shown, stderr if stdout_only else "") if x)
            raise error(
                f"{what or ' '.join(command[:3])} failed (exit {returncode})",
                command=list(command),
                returncode=returncode,
                output_tail=tail,
                hint=classify_failure(tail),
            )
        return Result(list(command), returncode, shown, stderr if stdout_only else "")


class ScriptedDocker(FakeRunner):
    """Stands in for docker binaries in ``find_docker_client``: path -> (client version, has buildx).

    Like the real client, ``docker version`` prints the client version and exits 1 when the daemon is down.
    """

    def __init__(self, clients: dict[str, tuple[str | None, bool]], daemon_up: bool = True) -> None:
        super().__init__()
        down = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
        for path, (version, buildx) in clients.items():
            if version is None:
                self.expect(path, "version", returncode=126, stderr="exec format error")
            else:
                self.expect(path, "version", returncode=0 if daemon_up else 1, output=version + "\n",
                            stderr="" if daemon_up else down)  # fmt: skip
            if buildx:
                self.expect(path, "buildx", "version", output="github.com/docker/buildx v0.19.3\n")
            else:
                self.expect(path, "buildx", "version", returncode=1,
                            stderr="docker: 'buildx' is not a docker command.")  # fmt: skip
        # Any other candidate on the PATH is no docker client at all.
        self.expect_last("*", "version", returncode=126, stderr="exec format error")


def _matches_labels(carried: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(carried.get(key) == value for key, value in wanted.items())


class FakeEngine:
    """A model of one Docker daemon at the verb level; see the module's docstring."""

    def __init__(
        self,
        images: Iterable[str] = (),
        client: DockerClient = DOCKER,
        remote: Mapping[str, tuple[str, str]] | None = None,
        *,
        echo: Progress | None = None,
        build_network: str | None = None,
    ) -> None:
        self.client = client
        # What `pull REF` gets: REF -> (image ID, registry digest); any other ref is not found.
        self.remote: dict[str, tuple[str, str]] = dict(remote or {})
        self.runner = FakeRunner()
        self.echo = echo
        self.debug = False
        self.env: dict[str, str] = {}
        self.build_network = build_network
        self.images: dict[str, str] = {ref: image_id(ref) for ref in images}  # ref -> ID
        self.repo_digests: dict[str, list[str]] = {}  # image ID -> name@digest, as pulls and pushes leave
        self.labels: dict[str, dict[str, str]] = {}  # image ID -> labels (import's `LABEL k=v` changes)
        self.containers: dict[str, dict[str, str]] = {}  # name -> labels
        self.stopped: set[str] = set()
        self.removed: list[str] = []  # containers and networks removed, by name, in order
        self.networks: dict[str, dict[str, str]] = {}
        self.created: list[str] = []  # refs in the order they were made (imported, tagged, pulled)
        self.dockerfiles: list[str] = []  # the Dockerfile of each build, read when it ran
        self.log: list[Call] = []
        self._script: list[tuple[str, tuple[Any, ...], Answer]] = []
        self.runner.env = self.env
        # The projects tests build are no git repositories (image/epoch.py asks git for their last change).
        git = which("git")
        if git is not None:
            self.runner.expect(git, "-C", returncode=128, stderr="fatal: not a git repository")

    @property
    def docker(self) -> DockerClient:
        return self.client

    # -- test API -------------------------------------------------------------------------------------

    def script(
        self,
        verb: str,
        *prefix: Any,
        returns: Any = None,
        raises: BaseException | None = None,
        output: str | None = None,
        returncode: int = 0,
        when: Mapping[str, Any] | None = None,
    ) -> None:
        """Answer calls of ``verb`` whose positional arguments start with ``prefix`` (``*``: any one);
        later scripts win, and the model is left as it is. ``output`` (and ``returncode``) return the
        ``Result`` of a verb that returns one; ``when``: only calls with these keyword arguments."""
        if verb.startswith("_") or not callable(getattr(type(self), verb, None)):
            raise NotModelled(f"FakeEngine has no verb {verb!r}")
        if output is None and returncode != 0:
            output = ""
        if output is not None:
            returns = Result([verb, *map(str, prefix)], returncode, output)
        self._script.insert(0, (verb, prefix, Answer(returns, raises, dict(when or {}))))

    def calls(self, verb: str | None = None, *prefix: Any) -> list[Call]:
        """The recorded calls of ``verb`` (all, without one) whose arguments start with ``prefix``."""
        return [c for c in self.log if verb in (None, c.verb) and _prefix_matches(prefix, c.args)]

    def verbs(self) -> list[str]:
        return [c.verb for c in self.log]

    def builds(self) -> list[Call]:
        return self.calls("build")

    def _called(self, verb: str, *args: Any, **kwargs: Any) -> Answer | None:
        self.log.append(Call(verb, args, kwargs))
        answer = next(
            (
                a
                for v, p, a in self._script
                if v == verb
                and _prefix_matches(p, args)
                and all(kwargs.get(k) == w for k, w in a.when.items())
            ),
            None,
        )
        if answer is not None and answer.raises is not None:
            raise answer.raises
        return answer

    def __getattr__(self, name: str) -> Any:
        raise NotModelled(f"FakeEngine does not model the verb {name!r}")

    # -- daemon -------------------------------------------------------------------------------------------

    def ping(self) -> None:
        self._called("ping")

    def info(self, field: str, *, timeout: float) -> Any:
        answer = self._called("info", field, timeout=timeout)
        if answer is not None:
            return answer.returns
        if field == "ServerVersion":
            return self.client.version
        raise NotModelled(f"FakeEngine.info: the field {field!r} is not modelled; script it")

    # -- images -------------------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        answer = self._called("image_exists", ref)
        return bool(answer.returns) if answer is not None else ref in self.images

    def inspect(self, ref: str) -> dict[str, Any]:
        answer = self._called("inspect", ref)
        if answer is not None:
            return dict(answer.returns)
        if ref not in self.images:
            raise EngineError(
                f"docker image inspect {ref} failed (exit 1)",
                returncode=1,
                output_tail=f"Error response from daemon: No such image: {ref}",
            )
        found = self.images[ref]
        return {
            "Id": found,
            "RepoTags": [ref],
            "RepoDigests": self.repo_digests.get(found, []),
            "Config": {"Labels": self.labels.get(found)},
        }

    def history(self, ref: str) -> str:
        answer = self._called("history", ref)
        if answer is None:
            raise NotModelled("FakeEngine.history: script the history of " + ref)
        return str(answer.returns)

    def image_ids(self, *, what: str) -> list[str]:
        answer = self._called("image_ids", what=what)
        return list(answer.returns) if answer is not None else sorted(set(self.images.values()))

    def tag(self, source: str, target: str) -> None:
        self._called("tag", source, target)
        if source not in self.images:
            raise EngineError(
                f"docker tag {target} failed (exit 1)",
                returncode=1,
                output_tail=f"Error response from daemon: No such image: {source}",
            )
        self.images[target] = self.images[source]
        self.created.append(target)

    def untag(self, ref: str) -> None:
        self._called("untag", ref)
        self.images.pop(ref, None)

    def remove_image(self, ref: str) -> None:
        self._called("remove_image", ref)
        self.images.pop(ref, None)

    def remove_images(self, ids: Iterable[str]) -> None:
        chosen = list(ids)
        self._called("remove_images", chosen)
        for ref, found in list(self.images.items()):
            if found.removeprefix("sha256:") in chosen or found in chosen:
                del self.images[ref]

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
        self.dockerfiles.append(dockerfile.read_text() if dockerfile.is_file() else "")
        kwargs = {"iidfile": iidfile, "target": target, "secrets": dict(secrets or {}),
                  "build_args": dict(build_args or {}), "labels": dict(labels or {}), "what": what,
                  "platform": platform, "network": self.build_network}  # fmt: skip
        answer = self._called("build", context, dockerfile, **kwargs)
        failed = answer.returns if answer is not None else Result([], 0, BUILD_OUTPUT)
        for line in failed.output.splitlines():
            if on_line:
                on_line(line)
        if failed.returncode != 0:
            raise BuildError(f"{what} failed (exit {failed.returncode})", returncode=failed.returncode,
                             output_tail=failed.output, hint=classify_failure(failed.output))  # fmt: skip
        seed = json.dumps([str(context), str(dockerfile), sorted(kwargs.items(), key=str)], default=str)
        new_id = image_id(seed + self.dockerfiles[-1])
        iidfile.write_text(new_id + "\n")
        self.images[new_id] = new_id
        self.labels[new_id] = dict(labels or {})
        return new_id

    def import_tarball(self, tarball: Path, ref: str, changes: Iterable[str] = ()) -> None:
        changes = list(changes)
        self._called("import_tarball", tarball, ref, changes=changes)
        self.images[ref] = image_id(ref)
        self.labels[self.images[ref]] = dict(
            change.removeprefix("LABEL ").split("=", 1) for change in changes if change.startswith("LABEL ")
        )
        self.created.append(ref)

    def load(self, archive: Path, what: str) -> None:
        answer = self._called("load", archive, what=what)
        if answer is None:
            raise NotModelled("FakeEngine.load: script what loading " + str(archive) + " leaves")

    def save(self, ref: str, out: Path) -> None:
        answer = self._called("save", ref, out)
        if answer is None:
            raise NotModelled(f"FakeEngine.save: script the archive of {ref}")

    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result:
        answer = self._called("push", ref, timeout=timeout)
        if answer is None:
            raise NotModelled(f"FakeEngine.push: script the push of {ref}")
        result: Result = answer.returns
        for line in result.output.splitlines():
            if on_line:
                on_line(line)
        return result

    def pull(
        self, ref: str, timeout: float | None = None, what: str | None = None, on_line: Progress | None = None
    ) -> Result:
        answer = self._called("pull", ref, timeout=timeout, what=what)
        if answer is not None:
            return Result(["pull", ref], 0, "") if answer.returns is None else answer.returns  # type: ignore[no-any-return]
        if ref not in self.remote:
            raise EngineError(
                f"{what or 'docker pull ' + ref} failed (exit 1)",
                returncode=1,
                output_tail=f"Error response from daemon: manifest for {ref} not found: manifest unknown",
            )
        pulled, digest = self.remote[ref]
        self.images[ref] = pulled
        self.repo_digests.setdefault(pulled, []).append(f"{ref.rsplit(':', 1)[0]}@{digest}")
        self.created.append(ref)
        return Result(["pull", ref], 0, digest)

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
        answer = self._called("copy_to_registry", ref, target, compression=compression, level=level,
                              plain_http=plain_http, timeout=timeout)  # fmt: skip
        if answer is None:
            raise NotModelled(f"FakeEngine.copy_to_registry: script the copy of {ref}")
        return str(answer.returns)

    # -- containers -------------------------------------------------------------------------------------

    def run_detached(self, container: DetachedContainer, *, what: str) -> None:
        self._called("run_detached", container, what=what)
        label_filters(container.labels)  # the real engine's sweeps could not find an unlabelled container
        if container.name in self.containers:
            raise EngineError(
                f"{what} failed (exit 125)",
                returncode=125,
                output_tail=f'Conflict. The container name "/{container.name}" is already in use',
            )
        self.containers[container.name] = dict(container.labels)

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
        answer = self._called("run_once", image, entrypoint, list(args), labels=dict(labels), user=user)
        if answer is None:
            raise NotModelled(f"FakeEngine.run_once: script what {entrypoint} prints in {image}")
        return answer.returns  # type: ignore[no-any-return]

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
        arguments = list(args)
        answer = self._called("run_python", image, script, arguments, labels=dict(labels), timeout=timeout,
                              what=what, check=check)  # fmt: skip
        if answer is not None:
            return answer.returns  # type: ignore[no-any-return]
        if len(arguments) == 2 and arguments[0] in SERVE_DEPLOYMENTS:
            names = SERVE_DEPLOYMENTS[arguments[0]]
            report = {"ok": True, "deployments": [{"name": name} for name in names]}
            return Result(["run_python", image], 0, "@@raybuild-serve-app " + json.dumps(report))
        raise NotModelled(f"FakeEngine.run_python: script what the probe prints for {arguments}")

    def start(self, name: str) -> bool:
        self._called("start", name)
        self.stopped.discard(name)
        return name in self.containers

    def stop(self, name: str, *, grace: int, timeout: float | None = None) -> bool:
        self._called("stop", name, grace=grace, timeout=timeout)
        if name not in self.containers:
            return False
        self.stopped.add(name)
        return True

    def inspect_container(self, name: str) -> dict[str, Any]:
        answer = self._called("inspect_container", name)
        if answer is None:
            raise NotModelled(f"FakeEngine.inspect_container: script the container {name}")
        return dict(answer.returns)

    def container_state(self, name: str) -> dict[str, Any] | None:
        answer = self._called("container_state", name)
        if answer is not None:
            return answer.returns  # type: ignore[no-any-return]
        if name not in self.containers:
            return None
        return {"Running": name not in self.stopped}

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result:
        answer = self._called("exec", container, *command, check=check, timeout=timeout)
        if answer is not None:
            result: Result = answer.returns
        elif container in self.containers and container not in self.stopped:
            result = Result(["exec", container, *command], 0, "")  # a running container: the command passes
        else:
            result = Result(
                ["exec", container, *command],
                1,
                f"Error response from daemon: No such container: {container}",
            )
        if check and result.returncode != 0:
            raise EngineError(f"docker exec {container} failed (exit {result.returncode})",
                              returncode=result.returncode, output_tail=result.output)  # fmt: skip
        return result

    def logs(self, container: str, tail: int = 30) -> str:
        answer = self._called("logs", container, tail=tail)
        if answer is None:
            return ""
        return answer.returns.output if isinstance(answer.returns, Result) else str(answer.returns)

    def published_port(self, container: str, port: int) -> int:
        answer = self._called("published_port", container, port)
        if answer is None:
            raise NotModelled(f"FakeEngine.published_port: script the host port of {container}:{port}")
        return int(answer.returns)

    def container_ids(self, labels: Mapping[str, str], *, name: str | None = None) -> list[str]:
        label_filters(labels)
        answer = self._called("container_ids", dict(labels), name=name)
        if answer is not None:
            return list(answer.returns)
        return [
            container_id(found)
            for found, carried in self.containers.items()
            if _matches_labels(carried, labels) and name in (None, found)
        ]

    def remove_containers(self, labels: Mapping[str, str], *, name: str | None = None) -> int:
        answer = self._called("remove_containers", dict(labels), name=name)
        if answer is not None:
            return int(answer.returns)
        ids = self.container_ids(labels, name=name)
        for found in [n for n in self.containers if container_id(n) in ids]:
            del self.containers[found]
            self.removed.append(found)
            self.stopped.discard(found)
        return len(ids)

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
        answer = self._called("create_network", name, dict(labels), subnet=subnet, ip_range=ip_range)
        if answer is not None:
            result: Result = answer.returns
            if check and result.returncode != 0:
                raise EngineError(f"docker network create {name} failed (exit {result.returncode})",
                                  returncode=result.returncode, output_tail=result.output)  # fmt: skip
            return result
        self.networks[name] = dict(labels)
        return Result(["network", "create", name], 0, network_id(name))

    def network_ids(self, labels: Mapping[str, str]) -> list[str]:
        label_filters(labels)
        answer = self._called("network_ids", dict(labels))
        if answer is not None:
            return list(answer.returns)
        return [network_id(n) for n, carried in self.networks.items() if _matches_labels(carried, labels)]

    def remove_network(self, name: str) -> bool:
        answer = self._called("remove_network", name)
        if answer is not None:
            return bool(answer.returns)
        found = next((n for n in self.networks if name in (n, network_id(n))), None)
        if found is None:
            return False
        del self.networks[found]
        self.removed.append(found)
        return True

    # -- label-scoped sweeps ----------------------------------------------------------------------------

    def remove_labelled(self, labels: Mapping[str, str]) -> int:
        answer = self._called("remove_labelled", dict(labels))
        if answer is not None:
            return int(answer.returns)
        removed = self.remove_containers(labels)
        networks = self.network_ids(labels)
        for network in networks:
            self.remove_network(network)
        return removed + len(networks)

    def release(self, labels: Mapping[str, str], *, name: str | None = None) -> None:
        try:
            answer = self._called("release", dict(labels), name=name)
            if answer is not None:
                return
            if name is None:
                self.remove_labelled(labels)
            else:
                self.remove_containers(labels, name=name)
        except EngineError as exc:  # as the real engine: one warning line, never an error
            if self.echo:
                where = f"label={PROJECT_LABEL}={labels.get(PROJECT_LABEL, '')}"
                self.echo(f"warning: cleanup failed ({exc.message}); see `docker ps -a --filter {where}`")


def docker_runs(engine: FakeEngine) -> list[list[str]]:
    """The `docker run -d` command line of each container the code under test started, in order."""
    return [run_detached_args(call.args[0]) for call in engine.calls("run_detached")]


def docker_error(message: str, output: str = "", returncode: int = 1) -> EngineError:
    """An EngineError as the engine raises it for a failed docker command, hint included."""
    return EngineError(message, returncode=returncode, output_tail=output, hint=classify_failure(output))
