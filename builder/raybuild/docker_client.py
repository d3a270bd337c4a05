"""Finding a docker client that can run BuildKit builds: the buildx plugin, or a 20.10 client's built-in.

A Docker 23+ client without buildx fails every BuildKit build ("BuildKit is enabled but the buildx
component is missing"), so it is skipped for the next candidate: $RAYBUILD_DOCKER first, then PATH.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from raybuild.errors import EngineError
from raybuild.runner import Runner


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


def find_docker_client(runner: Runner | None = None) -> DockerClient:
    """The first docker client that can run BuildKit builds (buildx plugin, or a built-in BuildKit)."""
    run = runner or Runner()
    tried = []
    for path in _candidates():
        # The client's version alone: `docker version` exits 1 when the daemon is down, after printing it.
        version_out = run.run(
            [path, "version", "--format", "{{.Client.Version}}"], check=False, stdout_only=True, timeout=30
        )
        version = version_out.output.strip().splitlines()[0] if version_out.output.strip() else ""
        if not version:
            tried.append(f"{path} (no version)")
            continue
        if run.run([path, "buildx", "version"], check=False, stdout_only=True, timeout=30).returncode == 0:
            return DockerClient(path, version, buildx=True)
        if _major(version) < 23:
            return DockerClient(path, version, buildx=False)
        tried.append(f"{path} {version} without buildx")
    raise EngineError(
        "no BuildKit-capable docker client found" + (f" (tried: {'; '.join(tried)})" if tried else ""),
        hint="install the buildx plugin, or run scripts/setup "
        "(Debian's docker.io client has BuildKit built in)",
    )
