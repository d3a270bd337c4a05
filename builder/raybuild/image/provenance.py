"""Provenance labels: which source, which commit, which lockfiles and which raybuild made an image.

`Builder` passes ``provenance_labels`` to every build. The OCI annotations ``org.opencontainers.image.*``
(source, revision, created, version) come from git when the project is a repository; the lockfile
hashes and raybuild's version are always there.

``revision`` and ``created`` name the last commit that changed the image's inputs (its lockfiles, code,
project templates and raybuild.toml), not HEAD: a commit that touches nothing else changes no label, so
rebuilding at any later commit gives the same image. When an input has uncommitted changes no commit
describes the image, and those two labels are left out. ``last_change`` is the one place that asks git;
a ``SOURCE_DATE_EPOCH`` for stable digests should come from it too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from raybuild import __version__
from raybuild.config import App, LoadedConfig
from raybuild.engine import Engine, which
from raybuild.image.dockerfile import template_dir
from raybuild.labels import IMAGE_LABEL_PREFIX

OCI = "org.opencontainers.image."
RAYBUILD = IMAGE_LABEL_PREFIX


@dataclass(frozen=True)
class Change:
    """The last commit that changed some paths."""

    revision: str
    epoch: int  # committer time, seconds since 1970: what SOURCE_DATE_EPOCH means

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_inputs(config: LoadedConfig, app: App | None) -> tuple[Path, ...]:
    """What an image is made from, in the project: the head image's (``app`` None) or an app image's."""
    paths = [config.path, config.ray_lockfile()]
    paths += [folder for folder in template_dir(config.root).dirs if folder.is_relative_to(config.root)]
    if app is not None:
        paths += [config.lockfile(app), config.app_dir(app)]
    return tuple(paths)


def _git(engine: Engine, root: Path, *args: str) -> str | None:
    git = which("git")
    if git is None:
        return None
    result = engine.run([git, "-C", str(root), *args], check=False, timeout=30)
    return result.output if result.returncode == 0 else None


def last_change(engine: Engine, root: Path, paths: tuple[Path, ...]) -> Change | None:
    """The last commit that changed ``paths``; None outside a repository, or with uncommitted changes."""
    relative = [str(path.relative_to(root)) if path.is_relative_to(root) else str(path) for path in paths]
    logged = _git(engine, root, "log", "-1", "--format=%H %ct", "--", *relative)
    match = re.fullmatch(r"([0-9a-f]{40,64}) (\d+)", (logged or "").strip())
    if match is None:
        return None
    # What the build context leaves out (bytecode) does not make the inputs modified.
    ignored = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc")
    status = _git(engine, root, "status", "--porcelain", "--untracked-files=all", "--", *relative, *ignored)
    if status is None or status.strip():
        return None
    return Change(match.group(1), int(match.group(2)))


def source_url(remote: str) -> str | None:
    """A browsable https URL for a git remote, without credentials; None for a local path."""
    remote = remote.strip()
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(.+)", remote)  # git@github.com:org/repo.git
    if scp:
        remote = f"https://{scp.group(1)}/{scp.group(2)}"
    found = re.fullmatch(r"(?:https?|ssh|git)://(?:[^@/]+@)?([^/]+)/(.+)", remote)
    if found is None:
        return None
    return f"https://{found.group(1)}/{found.group(2).removesuffix('/').removesuffix('.git')}"


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def provenance_labels(engine: Engine, config: LoadedConfig, app: App | None, ref: str) -> dict[str, str]:
    """The labels of the image ``ref`` (the head image's when ``app`` is None)."""
    labels = {OCI + "version": ref.rsplit(":", 1)[1], RAYBUILD + "version": __version__}
    for name, path in (("ray", config.ray_lockfile()), ("app", config.lockfile(app) if app else None)):
        digest = _sha256(path) if path is not None else None
        if digest:
            labels[f"{RAYBUILD}lockfile.{name}-sha256"] = digest
    change = last_change(engine, config.root, image_inputs(config, app))
    if change is not None:
        labels[OCI + "revision"] = change.revision
        labels[OCI + "created"] = change.created
    remote = _git(engine, config.root, "remote", "get-url", "origin")
    source = source_url(remote) if remote else None
    if source:
        labels[OCI + "source"] = source
    return labels
