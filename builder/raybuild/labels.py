"""The labels of every container and network raybuild makes, and how a sweep selects by them.

Like testcontainers' labels module, this is the one place that knows raybuild's label keys. Every object
carries MANAGED_LABEL, PROJECT_LABEL (the checkout that made it: state.project_id) and PURPOSE_LABEL, so
that a sweep by label finds what an interrupted run left behind, and only that: two checkouts on one
daemon, even with the same cluster name, never touch each other's objects. A sweep must select by the
project (``label_filters`` refuses one that does not), and acts only on full IDs read from docker's
machine-readable output (``parse_ids``): a warning about a broken ~/.docker/config.json, or an error, is
never taken for a container's name. The sweeps themselves are Engine methods (``remove_labelled``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from raybuild.errors import EngineError

MANAGED_LABEL = "io.raybuild.managed"
PROJECT_LABEL = "io.raybuild.project"  # state.project_id: a hash of the config file's absolute path
PURPOSE_LABEL = "io.raybuild.purpose"  # smoke, measure, introspect, cluster or sbom
CLUSTER_LABEL = "io.raybuild.cluster"  # the local cluster's name
ROLE_LABEL = "io.raybuild.role"  # the local cluster node's role: gcs, head or worker
# Image labels raybuild sets at build time (its version, lockfile hashes) share the prefix.
IMAGE_LABEL_PREFIX = "io.raybuild."
# Labels in every app image (set by the Dockerfile templates) that say what went into it, so that a diff of
# two image sets can say why a digest changed (manifest/delta.py).
RAY_LOCK_LABEL = "io.raybuild.ray-lock-sha256"
LOCK_LABEL = "io.raybuild.lock-sha256"
CODE_LABEL = "io.raybuild.code-sha256"
# The annotation that marks an SBOM artifact in the registry as raybuild's own (so a newer one replaces it).
SBOM_ANNOTATION = "io.raybuild.sbom"
Purpose = Literal["smoke", "measure", "introspect", "cluster", "sbom"]

# What `docker ps --no-trunc --format '{{.ID}}'` and `docker network ls` print: nothing else is an ID.
_OBJECT_ID = re.compile(r"^[0-9a-f]{64}$")


def object_labels(
    project: str, purpose: Purpose, *, cluster: str | None = None, role: str | None = None
) -> dict[str, str]:
    """The labels of a container or network that raybuild makes for ``project`` (state.project_id)."""
    if not project:
        raise ValueError("a raybuild object needs its project's id")
    labels = {MANAGED_LABEL: "true", PROJECT_LABEL: project, PURPOSE_LABEL: purpose}
    for key, value in ((CLUSTER_LABEL, cluster), (ROLE_LABEL, role)):
        if value:
            labels[key] = value
    return labels


def label_filters(labels: Mapping[str, str]) -> list[str]:
    """``docker ... --filter`` arguments for ``labels``; refuses a filter that is not scoped to a project."""
    if labels.get(MANAGED_LABEL) != "true" or not labels.get(PROJECT_LABEL):
        raise ValueError(f"a sweep must select by {MANAGED_LABEL} and {PROJECT_LABEL}, got {dict(labels)}")
    return [arg for key, value in sorted(labels.items()) for arg in ("--filter", f"label={key}={value}")]


def parse_ids(output: str, what: str) -> list[str]:
    """The object IDs in ``output`` (one per line); an error when any line is something else."""
    ids = []
    for line in output.splitlines():
        word = line.strip()
        if not word:
            continue
        if not _OBJECT_ID.match(word):
            raise EngineError(
                f"{what} printed {word[:80]!r}, which is not an object ID; nothing was removed",
                output_tail=output[-2000:],
                hint="run `docker ps -a` to see what docker answers (a broken ~/.docker/config.json?)",
            )
        ids.append(word)
    return list(dict.fromkeys(ids))
