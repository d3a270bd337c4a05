"""Provenance labels: which source, which commit, which lockfiles and which raybuild made an image.

`Builder` passes ``provenance_labels`` to every build. The OCI annotations ``org.opencontainers.image.*``
(source, revision, created, version) come from git when the project is a repository; the lockfile hashes and
raybuild's version are always there.

``revision`` and ``created`` name the last commit that changed the image's inputs (its lockfiles, code and
project templates: ``epoch.image_inputs``, the same commit that gives the image its SOURCE_DATE_EPOCH), not
HEAD: a commit that touches nothing else changes no label, so rebuilding at any later commit gives the same
image. When an input has uncommitted changes no commit describes the image, and those two labels are left out.
``epoch.last_change`` is the one place that asks git about the inputs; the SOURCE_DATE_EPOCH comes
from it too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from raybuild import __version__
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.image.epoch import Change, git
from raybuild.labels import IMAGE_LABEL_PREFIX
from raybuild.platforms import DEFAULT as DEFAULT_PLATFORM
from raybuild.reference import ImageRef

OCI = "org.opencontainers.image."
RAYBUILD = IMAGE_LABEL_PREFIX


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


def provenance_labels(
    engine: Engine,
    config: LoadedConfig,
    app: App | None,
    ref: str,
    change: Change | None,
    platform: str = DEFAULT_PLATFORM,
    lock_digests: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The labels of the image ``ref`` (the head image's when ``app`` is None); ``change`` is the last commit
    that changed its inputs (``epoch.last_change``), which also gives the image its SOURCE_DATE_EPOCH.
    The lockfile hashes are those of ``platform``'s lockfiles, which that image was installed from:
    ``lock_digests`` ("ray", "app") where the build plan read them already, else read here."""
    labels = {OCI + "version": ImageRef.parse(ref).tag_or_latest, RAYBUILD + "version": __version__}
    if lock_digests is None:
        ray_lock, app_lock = config.ray_lockfile(platform), config.lockfile(app, platform) if app else None
        lock_digests = {"ray": _sha256(ray_lock), "app": _sha256(app_lock) if app_lock else None}
    for name in ("ray", "app"):
        digest = lock_digests.get(name) if name == "ray" or app is not None else None
        if digest:
            labels[f"{RAYBUILD}lockfile.{name}-sha256"] = digest
    if change is not None and change.clean:
        labels[OCI + "revision"] = change.revision
        labels[OCI + "created"] = change.created
    remote = git(engine, config.root, "remote", "get-url", "origin")
    source = source_url(remote) if remote else None
    if source:
        labels[OCI + "source"] = source
    return labels
