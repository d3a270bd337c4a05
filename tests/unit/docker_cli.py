"""An argv-level model of the docker CLI and its daemon, for testing the real ``Engine`` alone.

The rest of the tests use ``FakeEngine`` at the verb level; this stands in for the ``Runner`` under a real
``Engine``, so the engine's own tests see the docker command lines it builds. It answers from a script
first, then from a model of the daemon, and raises ``NotModelled`` for any other command.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from raybuild.docker_client import DockerClient
from raybuild.engine import Engine
from raybuild.errors import EngineError
from raybuild.progress import Progress
from raybuild.runner import Result, classify_failure
from tests.unit.fake_docker import (
    BUILD_OUTPUT,
    DOCKER,
    SERVE_DEPLOYMENTS,
    NotModelled,
    container_id,
    image_id,
    network_id,
)


@dataclass(frozen=True)
class Reply:
    returncode: int = 0
    output: str = ""  # stdout
    raises: EngineError | None = None
    stderr: str = (
        ""  # warnings and errors: apart with stdout_only, else after the output, as docker mixes them
    )


def _filters(args: list[str]) -> list[str]:
    return [value for flag, value in pairwise(args) if flag == "--filter"]


def _selected(objects: dict[str, dict[str, str]], args: list[str], to_id: Any) -> str:
    """What `docker ps` / `network ls` with --filter label=K=V (all of them) and name=^/?NAME$ print."""
    found = []
    for name, labels in objects.items():
        wanted = True
        for value in _filters(args):
            if value.startswith("label="):
                wanted = wanted and _matches(labels, value)
            elif value.startswith("name="):
                wanted = wanted and re.fullmatch(value.removeprefix("name="), "/" + name) is not None
        if wanted:
            found.append(to_id(name))
    return "\n".join(found)


def _by_name_or_id(objects: dict[str, dict[str, str]], word: str, to_id: Any) -> str | None:
    return next((name for name in objects if word in (name, to_id(name))), None)


def _labels(args: list[str]) -> dict[str, str]:
    labels = {}
    for flag, value in pairwise(args):
        if flag == "--label":
            key, _, val = value.partition("=")
            labels[key] = val
    return labels


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _starts_with(args: list[str], prefix: tuple[str, ...]) -> bool:
    return len(args) >= len(prefix) and all(p in ("*", a) for p, a in zip(prefix, args, strict=False))


def _matches(labels: dict[str, str], label_filter: str) -> bool:
    key, _, value = label_filter.removeprefix("label=").partition("=")
    return labels.get(key) == value


class DockerCli:
    """Stands in for the Runner of a real Engine: records every command, answers docker's."""

    def __init__(self, images: Iterable[str] = (), client: DockerClient = DOCKER) -> None:
        self.client = client
        self.env: dict[str, str] = {}
        self.images: dict[str, str] = {ref: image_id(ref) for ref in images}
        self.remote: dict[str, tuple[str, str]] = {}
        self.repo_digests: dict[str, list[str]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.containers: dict[str, dict[str, str]] = {}
        self.networks: dict[str, dict[str, str]] = {}
        self.commands: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.created: list[str] = []
        self.dockerfiles: list[str] = []
        self._script: list[tuple[tuple[str, ...], Reply]] = []

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def script(
        self,
        *prefix: str,
        returncode: int = 0,
        output: str = "",
        raises: EngineError | None = None,
        stderr: str = "",
    ) -> None:
        """Answer commands whose arguments (docker path dropped) start with ``prefix``; later ones win.

        A ``*`` in ``prefix`` matches any one argument (a container's generated name, say). ``output`` is
        what the command prints on stdout, ``stderr`` its warnings and errors.
        """
        self._script.insert(0, (prefix, Reply(returncode, output, raises, stderr)))

    def args(self, command: list[str]) -> list[str]:
        assert self.client is not None
        return command[1:] if command and command[0] == self.client.path else list(command)

    def calls(self, *prefix: str) -> list[list[str]]:
        """Every recorded command (docker path dropped) that starts with ``prefix``, in order."""
        found = [self.args(c) for c in self.commands]
        return [a for a in found if tuple(a[: len(prefix)]) == prefix]

    def builds(self) -> list[list[str]]:
        return [a for a in (self.args(c) for c in self.commands) if "build" in a[:2]]

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
        args = self.args(command)
        reply = next((r for p, r in self._script if _starts_with(args, p)), None)
        if reply is None:
            assert self.client is not None
            if command[0] != self.client.path:
                raise NotModelled(f"DockerCli: {command[0]} is not docker; expect it on a FakeRunner")
            reply = self._docker(args)
        if reply.raises is not None:
            raise reply.raises
        output = reply.output if stdout_only else "\n".join(x for x in (reply.stderr, reply.output) if x)
        for line in output.splitlines():
            if on_line:
                on_line(line)
        if check and reply.returncode != 0:
            tail = "\n".join(x for x in (output, reply.stderr if stdout_only else "") if x)
            raise error(
                f"{what or ' '.join(command[:3])} failed (exit {reply.returncode})",
                command=list(command),
                returncode=reply.returncode,
                output_tail=tail,
                hint=classify_failure(tail),
            )
        return Result(list(command), reply.returncode, output, reply.stderr if stdout_only else "")

    def _docker(self, args: list[str]) -> Reply:
        """What dockerd would answer, for the commands raybuild sends."""
        match args:
            case ["info", *_]:
                return Reply(0, self.client.version)
            case ["image", "inspect", ref]:
                if ref not in self.images:
                    return Reply(1, f"Error response from daemon: No such image: {ref}")
                found = self.images[ref]
                inspected = {
                    "Id": found,
                    "RepoTags": [ref],
                    "RepoDigests": self.repo_digests.get(found, []),
                    "Config": {"Labels": self.labels.get(found)},
                }
                return Reply(0, json.dumps([inspected]))
            case ["pull", *_, ref]:
                if ref not in self.remote:
                    return Reply(
                        1, f"Error response from daemon: manifest for {ref} not found: manifest unknown"
                    )
                pulled, digest = self.remote[ref]
                self.images[ref] = pulled
                self.repo_digests.setdefault(pulled, []).append(f"{ref.rsplit(':', 1)[0]}@{digest}")
                self.created.append(ref)
            case ["tag", source, target]:
                if source not in self.images:
                    return Reply(1, f"Error response from daemon: No such image: {source}")
                self.images[target] = self.images[source]
                self.created.append(target)
            case ["image", "rm", "--force", ref]:
                self.images.pop(ref, None)
            case ["import", *_, ref]:
                self.images[ref] = image_id(ref)
                self.labels[self.images[ref]] = dict(
                    value.removeprefix("LABEL ").split("=", 1)
                    for flag, value in pairwise(args)
                    if flag == "--change" and value.startswith("LABEL ")
                )
                self.created.append(ref)
            case _ if "build" in args[:2]:
                dockerfile = Path(_option(args, "-f"))
                self.dockerfiles.append(dockerfile.read_text() if dockerfile.is_file() else "")
                new_id = image_id(" ".join(args))
                Path(_option(args, "--iidfile")).write_text(new_id + "\n")
                self.images[new_id] = new_id
                return Reply(0, BUILD_OUTPUT)
            case ["run", "--rm", "-i", *_, import_path, _code_dir] if "--entrypoint" in args:
                names = SERVE_DEPLOYMENTS.get(import_path, [])
                report = {"ok": True, "deployments": [{"name": name} for name in names]}
                return Reply(0, "@@raybuild-serve-app " + json.dumps(report))
            case ["run", "-d", *_]:
                name = _option(args, "--name")
                self.containers[name] = _labels(args)
                return Reply(0, container_id(name))
            case ["container", "inspect", "--format", "{{json .NetworkSettings.Ports}}", _]:
                return Reply(1, stderr="Error: No such container")
            case ["rm", "--force", "--volumes", word]:
                name = _by_name_or_id(self.containers, word, container_id)
                if name is None:
                    return Reply(1, stderr=f"Error: No such container: {word}")
                del self.containers[name]
            case ["ps", "-a", "--no-trunc", "--format", "{{.ID}}", *_]:
                return Reply(0, _selected(self.containers, args, container_id))
            case ["network", "create", *_, name]:
                self.networks[name] = _labels(args)
            case ["network", "ls", "--no-trunc", "--format", "{{.ID}}", *_]:
                return Reply(0, _selected(self.networks, args, network_id))
            case ["network", "rm", word]:
                name = _by_name_or_id(self.networks, word, network_id)
                if name is None:
                    return Reply(1, stderr=f"Error: No such network: {word}")
                del self.networks[name]
            case _:
                raise NotModelled(f"DockerCli does not model `docker {' '.join(args[:3])}`; script it")
        return Reply()


class CliEngine(Engine):
    """The real engine over a ``DockerCli``; the script and the records are the CLI's."""

    def __init__(self, images: Iterable[str] = (), client: DockerClient = DOCKER, **fields: Any) -> None:
        super().__init__(client=client, **fields)
        self.cli = DockerCli(images, client)
        self.cli.env = self.env
        self.runner = self.cli  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        if name in ("script", "calls", "builds", "commands", "envs", "containers", "networks", "images"):
            return getattr(self.cli, name)
        raise AttributeError(name)
