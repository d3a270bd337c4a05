"""Test doubles for the seams to Docker and to registries: a fake engine, a scripted docker CLI, a registry
in memory, and an app builder.

``FakeEngine`` subclasses ``Engine`` and replaces only ``run``, the method every docker call goes through, so
tests see the commands that the real engine builds (build, tag, import, run ...). It keeps the little Docker
state that code checks before it acts (images, containers, networks), and answers from a script first.
``FakeRegistry`` implements ``raybuild.registry.Registry`` for publish and measure alike. ``FakeResolver``
stands in for uv when a test locks a project.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from raybuild.config_apps import App
from raybuild.docker_client import DockerClient
from raybuild.engine import Engine, Result, classify_failure
from raybuild.errors import EngineError
from raybuild.progress import Progress
from raybuild.registry import DOCKER_MANIFEST, Descriptor, Manifest, parse_manifest

# What the build-time import check finds in the apps the tests use (the bundled project, the tmp project's
# "demo" and "other"), by import path; a test scripts `run --rm` itself for anything else.
SERVE_DEPLOYMENTS = {
    "hello_app:app": ["Hello"],
    "sklearn_app:app": ["Iris"],
    "cuda_app:app": ["CudaInfo"],
    "demo_app:app": ["Demo"],
    "other_app:app": ["Other"],
}

DOCKER = DockerClient("/usr/bin/docker", "28.1.1", buildx=True)
BUILD_OUTPUT = "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n"


def image_id(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@dataclass(frozen=True)
class Reply:
    returncode: int = 0
    output: str = ""  # stdout
    raises: EngineError | None = None
    stderr: str = (
        ""  # warnings and errors: apart with stdout_only, else after the output, as docker mixes them
    )


def container_id(name: str) -> str:
    """The 64-hex ID the fake daemon gives the container ``name``."""
    return image_id(f"container:{name}")[7:]


def network_id(name: str) -> str:
    return image_id(f"network:{name}")[7:]


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


class FakeEngine(Engine):
    """An engine that records every command and never starts a process."""

    def __init__(
        self,
        images: Iterable[str] = (),
        client: DockerClient = DOCKER,
        remote: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(client=client)
        self.images: dict[str, str] = {ref: image_id(ref) for ref in images}  # ref -> image ID
        # What `docker pull REF` gets: REF -> (image ID, registry digest); any other ref is not found.
        self.remote: dict[str, tuple[str, str]] = dict(remote or {})
        self.repo_digests: dict[
            str, list[str]
        ] = {}  # image ID -> name@digest, as pulls and pushes leave them
        self.labels: dict[str, dict[str, str]] = {}  # image ID -> labels (`import --change LABEL k=v`)
        self.containers: dict[str, dict[str, str]] = {}  # name -> labels
        self.networks: dict[str, dict[str, str]] = {}
        self.commands: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.created: list[str] = []  # refs in the order they were made (imported or tagged)
        self.dockerfiles: list[str] = []  # the Dockerfile of each build, read when it ran
        self._script: list[tuple[tuple[str, ...], Reply]] = []

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
            reply = self._docker(args) if command[0] == self.client.path else Reply()
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
                return Reply(0, self.docker.version)
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
        return Reply()


class ScriptedDocker:
    """Stands in for docker binaries in ``find_docker_client``: path -> (client version, has buildx).

    Like the real client, ``docker version`` prints the client version and exits 1 when the daemon is down.
    """

    def __init__(self, clients: dict[str, tuple[str | None, bool]], daemon_up: bool = True) -> None:
        self.clients = clients
        self.daemon_up = daemon_up
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        version, buildx = self.clients.get(command[0], (None, False))
        if command[1:2] == ["version"]:
            if version is None:
                return subprocess.CompletedProcess(command, 126, "", "exec format error")
            ok = self.daemon_up
            err = "" if ok else "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
            return subprocess.CompletedProcess(command, 0 if ok else 1, version + "\n", err)
        if command[1:3] == ["buildx", "version"]:
            if buildx:
                return subprocess.CompletedProcess(command, 0, "github.com/docker/buildx v0.19.3\n", "")
            return subprocess.CompletedProcess(command, 1, "", "docker: 'buildx' is not a docker command.")
        return subprocess.CompletedProcess(command, 1, "", f"unexpected command {command}")


def make_app(name: str = "demo", **fields: Any) -> App:
    """A valid app; ``fields`` replace or add keys of its raybuild.toml table."""
    data: dict[str, Any] = {
        "name": name,
        "path": f"apps/{name}",
        "requirements": f"apps/{name}/requirements.in",
        "import_path": f"{name.replace('-', '_')}_app:app",
        "route_prefix": f"/{name}",
        "deployments": [{"name": "Demo", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}],
        **fields,
    }
    return App.model_validate(data)


def manifest_body(config_digest: str, layer_sizes: Sequence[int] = (1000, 2000)) -> bytes:
    """An image manifest as `docker push` writes it (Docker v2, gzip layers)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 900,
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": size,
                    "digest": f"sha256:{i:064x}",
                }
                for i, size in enumerate(layer_sizes)
            ],
        }
    ).encode()


@dataclass
class FakeRegistry:
    """A registry in memory: manifests by (repository, tag or digest), blobs by digest.

    ``failures`` are raised first, one per manifest or blob read, and ``blob_failures`` one per blob read
    only (a config blob that fails while its manifest reads fine); ``up`` is what ``reachable`` answers.
    ``connect`` stands in for ``HttpRegistry`` as a factory and records each address asked for. Writes land
    in ``bodies`` (manifest bytes by (repository, tag or digest)) and ``blobs``; ``writes`` lists them in
    order. Like Debian's registry 2.8 it has no referrers API unless ``referrers_api`` is set, in which
    case it indexes manifests with a subject itself and says so.
    """

    address: str = "127.0.0.1:5000"
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    failures: list[Exception] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    up: bool = True
    bodies: dict[tuple[str, str], bytes] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    referrers_api: bool = False
    write_failures: list[Exception] = field(default_factory=list)
    blob_failures: list[Exception] = field(default_factory=list)

    def connect(self, address: str) -> FakeRegistry:
        self.connected.append(address)
        return self

    def reachable(self) -> bool:
        return self.up

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        self._read(f"{repository}:{reference}")
        return self.manifests.get((repository, reference))

    def blob(self, repository: str, digest: str) -> bytes | None:
        self._read(f"{repository}@{digest}")
        if self.blob_failures:
            raise self.blob_failures.pop(0)
        return self.blobs.get(digest)

    def manifest_body(self, repository: str, reference: str) -> bytes | None:
        self._read(f"{repository}:{reference}")
        return self.bodies.get((repository, reference))

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        if not self.referrers_api:
            return None
        found = []
        for (repo, reference), body in sorted(self.bodies.items()):
            data = json.loads(body)
            if (
                repo == repository
                and reference.startswith("sha256:")
                and data.get("subject", {}).get("digest") == digest
            ):
                found.append(
                    Descriptor.of(
                        data["mediaType"], body, artifact_type=data.get("artifactType"),
                        annotations=data.get("annotations") or {},
                    )
                )  # fmt: skip
        return found

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._write(f"blob {repository}@{digest}")
        if digest not in self.blobs:
            self.writes.append(f"upload {repository}@{digest}")
            self.blobs[digest] = data
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> bool:
        self._write(f"manifest {repository}:{reference}")
        self.writes.append(f"put {repository}:{reference}")
        self.bodies[(repository, reference)] = body
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.bodies[(repository, digest)] = body
        return self.referrers_api and b'"subject"' in body

    def _write(self, what: str) -> None:
        if self.write_failures:
            raise self.write_failures.pop(0)

    def _read(self, what: str) -> None:
        self.reads.append(what)
        if self.failures:
            raise self.failures.pop(0)

    def store(
        self,
        repository: str,
        tag: str,
        config_digest: str,
        layer_sizes: Sequence[int] = (1000, 2000),
        config: bytes | None = None,
    ) -> Manifest:
        """What a push leaves: the manifest under its tag and its digest, and the config blob if given."""
        manifest = parse_manifest(manifest_body(config_digest, layer_sizes))
        self.manifests[(repository, tag)] = self.manifests[(repository, manifest.digest)] = manifest
        if config is not None:
            self.blobs[config_digest] = config
        return manifest


class FakeResolver:
    """Stands in for uv: writes a lock with one pin per input line, and remembers each command."""

    def __init__(self, fail_with: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail_with = fail_with

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if self.fail_with is not None:
            return subprocess.CompletedProcess(command, 1, "", self.fail_with)
        source = Path(command[command.index("compile") + 1])
        output = Path(command[command.index("-o") + 1])
        lines = []
        for requirement in source.read_text().splitlines():
            name = re.split(r"[\[<>=;\s]", requirement.strip(), maxsplit=1)[0]
            if not name or name.startswith("#"):
                continue
            lines.append(f"{name}==1.0 \\\n    --hash=sha256:{name}\n    # via -r {source}")
            if "-c" in command:
                # Resolvers print the constraint path as they were given it.
                lines.append(f"    #   -c {command[command.index('-c') + 1]}")
        output.write_text("\n".join(lines) + "\n")
        return subprocess.CompletedProcess(command, 0, "", "")


DashboardAnswer = tuple[int, str]  # (status, body); status 0: nothing answered


class FakeDashboard:
    """The Ray dashboard's REST API (raybuild.dashboard.Dashboard) from answers set up per call.

    Each of ``nodes``, ``applications`` and ``deploy`` is one ``(status, body)`` answer for every call, or a
    list answered in turn (its last answer repeats). A call that was not set up fails the test: a test says
    every request its code makes. ``calls`` records each one as (call, url, config or None, timeout or None).
    A test whose clock the dashboard's replies advance overrides ``answer``.
    """

    def __init__(
        self,
        *,
        nodes: DashboardAnswer | list[DashboardAnswer] | None = None,
        applications: DashboardAnswer | list[DashboardAnswer] | None = None,
        deploy: DashboardAnswer | list[DashboardAnswer] | None = None,
    ) -> None:
        self.answers: dict[str, list[DashboardAnswer]] = {
            name: list(answer) if isinstance(answer, list) else [answer]
            for name, answer in (("nodes", nodes), ("applications", applications), ("deploy", deploy))
            if answer is not None
        }
        self.calls: list[tuple[str, str, Any, float | None]] = []

    @classmethod
    def serving(cls, applications: Mapping[str, Any]) -> FakeDashboard:
        """A dashboard that accepts deploys and reports ``applications`` (Serve's status, by app name)."""
        return cls(applications=(200, json.dumps({"applications": applications})), deploy=(200, "{}"))

    def answer(
        self, call: str, url: str, config: Any = None, timeout: float | None = None
    ) -> DashboardAnswer:
        if call not in self.answers:
            raise AssertionError(f"unexpected dashboard call {call} on {url}; set up: {sorted(self.answers)}")
        self.calls.append((call, url, config, timeout))
        queue = self.answers[call]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def nodes(self, url: str) -> DashboardAnswer:
        return self.answer("nodes", url)

    def applications(self, url: str) -> DashboardAnswer:
        return self.answer("applications", url)

    def deploy_applications(self, url: str, config: Mapping[str, Any], timeout: float) -> DashboardAnswer:
        return self.answer("deploy", url, dict(config), timeout)

    def called(self, call: str) -> list[tuple[str, Any, float | None]]:
        """(url, config, timeout) of each call named ``call``, in order."""
        return [(url, config, timeout) for name, url, config, timeout in self.calls if name == call]
