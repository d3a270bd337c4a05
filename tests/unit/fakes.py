"""Test doubles for the seams to Docker and to registries: a fake engine and runner (see `fake_docker`), a
registry in memory, and an app builder.

``FakeRegistry`` implements ``raybuild.registry.Registry`` for publish and measure alike. ``FakeResolver``
stands in for uv when a test locks a project.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybuild.config_apps import App
from raybuild.registry import DOCKER_MANIFEST, Descriptor, Manifest, parse_manifest
from raybuild.runner import Result
from tests.unit.fake_docker import (
    DOCKER,
    SERVE_DEPLOYMENTS,
    Call,
    FakeEngine,
    FakeRunner,
    NotModelled,
    ScriptedDocker,
    container_id,
    docker_error,
    docker_runs,
    image_id,
    network_id,
)

__all__ = [
    "DOCKER",
    "SERVE_DEPLOYMENTS",
    "Call",
    "FakeEngine",
    "FakeRunner",
    "NotModelled",
    "ScriptedDocker",
    "container_id",
    "docker_error",
    "docker_runs",
    "image_id",
    "network_id",
]


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

    def __call__(self, command: list[str]) -> Result:
        self.commands.append(command)
        if self.fail_with is not None:
            return Result(command, 1, "", self.fail_with)
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
        return Result(command, 0, "", "")


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
