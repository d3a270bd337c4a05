"""SOURCE_DATE_EPOCH for each image: the time every file in its layers is clamped to.

Docker 20.10's BuildKit stamps new files with the build's clock, so two builds of the same inputs gave
layers that differed in their file times alone. raybuild clamps them (see the templates), to a time that
follows from the inputs rather than from the clock:

- head and app images: the committer time of the last commit that changed the image's inputs (the Ray
  lock, the app's code and lockfile, the project's own Dockerfile templates). Not HEAD's: a commit to a
  README changes nothing. raybuild.toml is left out, because most of its edits (cluster, gate) change no
  image. A shallow clone sees only its own commit, so CI checks out the whole history.
- bootstrapped bases: the snapshot's time, else the Date of the Debian suite's Release file. Every file of
  every package in that suite is older, so mmdebstrap's clamping never changes a packaged file's time
  (Debian's .pyc files record their source's time, and would go stale).
- ``[project] source_date_epoch`` overrides both.

The epoch is not part of an image's tag: the tag names its inputs, and the registry holds the one image
that carries it (`raybuild build` pulls it). The epoch only decides the bytes of a rebuild after a miss.
"""

from __future__ import annotations

import email.utils
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from raybuild.config import BaseImage, LoadedConfig
from raybuild.config_apps import App
from raybuild.engine import Engine, which
from raybuild.errors import RaybuildError
from raybuild.image.dockerfile import template_dir
from raybuild.labels import IMAGE_LABEL_PREFIX

# Outside git, and for registry bases: 1980-01-01, the earliest time a zip (and so a wheel) can hold.
FALLBACK_EPOCH = 315_532_800
# The label a bootstrapped rootfs carries, so that images built on it later use the same epoch.
EPOCH_LABEL = IMAGE_LABEL_PREFIX + "source-date-epoch"


@dataclass(frozen=True)
class Change:
    """The last commit that changed some paths: the one place raybuild asks git about an image's inputs."""

    revision: str
    epoch: int  # committer time, seconds since 1970: what SOURCE_DATE_EPOCH means
    clean: bool  # no uncommitted change to those paths: the commit describes the image exactly

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_inputs(config: LoadedConfig, app: App | None) -> list[Path]:
    """What an image is made from in the project: the head image's (``app`` None) or an app image's."""
    paths = [config.ray_lockfile()]
    paths += [folder for folder in template_dir(config.root).dirs if folder.is_relative_to(config.root)]
    if app is not None:
        paths += [config.app_dir(app), config.lockfile(app)]
    return paths


def git(engine: Engine, root: Path, *args: str) -> str | None:
    git = which("git")
    if git is None:
        return None
    result = engine.runner.run([git, "-C", str(root), *args], check=False, timeout=30)
    return result.output if result.returncode == 0 else None


def last_change(engine: Engine, root: Path, paths: list[Path]) -> Change | None:
    """The last commit that changed ``paths``; None outside a repository or before their first commit."""
    relative = [str(path.relative_to(root)) for path in paths if path.exists() and path.is_relative_to(root)]
    if not relative:
        return None
    logged = git(engine, root, "log", "-1", "--format=%H %ct", "--", *relative)
    match = re.fullmatch(r"([0-9a-f]{40,64}) (\d+)", (logged or "").strip())
    if match is None:
        return None
    # What the build context leaves out (bytecode) does not make the inputs modified.
    ignored = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc")
    status = git(engine, root, "status", "--porcelain", "--untracked-files=all", "--", *relative, *ignored)
    return Change(match.group(1), int(match.group(2)), clean=status is not None and not status.strip())


def image_epoch(config: LoadedConfig, engine: Engine, app: App | None = None) -> int:
    """The epoch of the head image (``app`` None) or of an app image."""
    if config.project.source_date_epoch is not None:
        return config.project.source_date_epoch
    return epoch_of(config, last_change(engine, config.root, image_inputs(config, app)))


def epoch_of(config: LoadedConfig, change: Change | None) -> int:
    """The epoch for an image whose inputs last changed in ``change`` (None: outside git)."""
    if config.project.source_date_epoch is not None:
        return config.project.source_date_epoch
    return change.epoch if change is not None else FALLBACK_EPOCH


def _snapshot_epoch(snapshot: str) -> int:
    return int(datetime.strptime(snapshot, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())


def release_url(settings: BaseImage) -> str:
    return f"{settings.mirror.rstrip('/')}/dists/{settings.suite}/Release"


def fetch_release_date(url: str, timeout: float = 30.0) -> int:
    """The Date field of a Debian Release file, as seconds since 1970."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(65536).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise RaybuildError(
            f"cannot read {url} to date the root filesystem: {exc}",
            hint="check the Debian mirror ([base.cpu] mirror), or set [project] source_date_epoch",
        ) from None
    for line in text.splitlines():
        if line.startswith("Date:"):
            return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
    raise RaybuildError(f"{url} has no Date field", hint="set [project] source_date_epoch")


def rootfs_epoch(config: LoadedConfig, settings: BaseImage, fetch: Callable[[str], int] | None = None) -> int:
    """The epoch of a bootstrapped root filesystem (and of the bases built on it)."""
    if config.project.source_date_epoch is not None:
        return config.project.source_date_epoch
    if settings.snapshot:
        return _snapshot_epoch(settings.snapshot)
    return (fetch or fetch_release_date)(release_url(settings))
