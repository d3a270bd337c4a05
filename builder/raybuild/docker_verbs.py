"""What raybuild asks of Docker, as typed verbs: the ``Docker`` Protocol that ``raybuild.engine.Engine``
implements over the docker CLI and ``tests/unit/fakes.FakeEngine`` implements over a model of the daemon.

There is no raw-argv escape hatch: a new need is a new verb, added here, in the engine and in the fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from raybuild.progress import Progress
from raybuild.runner import Result, Runner


class DetachedContainer(Protocol):
    """A container as `docker run -d` starts it (``raybuild.kuberay.NodeSpec`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def image(self) -> str: ...
    @property
    def command(self) -> str: ...  # run with /bin/bash -c; empty: the image's own command
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def publish(self) -> Mapping[int, int]: ...  # port -> host port on 127.0.0.1 (0: any)
    @property
    def network(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def hostname(self) -> str | None: ...
    @property
    def gpus(self) -> int | Literal["all"]: ...
    @property
    def shm_size(self) -> str | None: ...
    @property
    def nofile(self) -> int | None: ...
    @property
    def restart(self) -> str | None: ...
    @property
    def stop_timeout(self) -> int | None: ...
    @property
    def platform(self) -> str | None: ...


class ImagePush(Protocol):
    """The verbs of one image's push (``ship/push.py``): docker push for gzip, skopeo from the daemon else."""

    def image_exists(self, ref: str) -> bool: ...
    def tag(self, source: str, target: str) -> None: ...
    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result: ...
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
    ) -> str: ...


class Docker(ImagePush, Protocol):
    """The Docker verbs raybuild uses, those of ``ImagePush`` included. Other tools run through ``runner``."""

    runner: Runner
    echo: Progress | None

    # -- daemon
    def ping(self) -> None: ...
    def info(self, field: str, *, timeout: float) -> Any: ...

    # -- images
    def inspect(self, ref: str) -> dict[str, Any]: ...
    def history(self, ref: str) -> str: ...
    def image_ids(self, *, what: str) -> list[str]: ...
    def untag(self, ref: str) -> None: ...
    def remove_image(self, ref: str) -> None: ...
    def remove_images(self, ids: Iterable[str]) -> None: ...
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
    ) -> str: ...
    def import_tarball(self, tarball: Path, ref: str, changes: Iterable[str] = ()) -> None: ...
    def load(self, archive: Path, what: str) -> None: ...
    def save(self, ref: str, out: Path) -> None: ...
    def pull(
        self, ref: str, timeout: float | None = None, what: str | None = None, on_line: Progress | None = None
    ) -> Result: ...

    # -- containers
    def run_detached(self, container: DetachedContainer, *, what: str) -> None: ...
    def run_once(
        self,
        image: str,
        entrypoint: str,
        args: Iterable[str],
        *,
        labels: Mapping[str, str],
        user: str | None = None,
        what: str,
    ) -> Result: ...
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
    ) -> Result: ...
    def start(self, name: str) -> bool: ...
    def stop(self, name: str, *, grace: int, timeout: float | None = None) -> bool: ...
    def inspect_container(self, name: str) -> dict[str, Any]: ...
    def container_state(self, name: str) -> dict[str, Any] | None: ...
    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result: ...
    def logs(self, container: str, tail: int = 30) -> str: ...
    def published_port(self, container: str, port: int) -> int: ...
    def container_ids(self, labels: Mapping[str, str], *, name: str | None = None) -> list[str]: ...
    def remove_containers(self, labels: Mapping[str, str], *, name: str | None = None) -> int: ...

    # -- networks
    def create_network(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        subnet: str | None = None,
        ip_range: str | None = None,
        check: bool = True,
    ) -> Result: ...
    def network_ids(self, labels: Mapping[str, str]) -> list[str]: ...
    def remove_network(self, name: str) -> bool: ...

    # -- label-scoped sweeps
    def remove_labelled(self, labels: Mapping[str, str]) -> int: ...
    def release(self, labels: Mapping[str, str], *, name: str | None = None) -> None: ...
