"""What changed between two image sets, and whether KubeRay upgrades the RayService for it.

The one model of an image delta: `raybuild render --diff` (the deployed manifest against the one rendered
now) and `raybuild check --deployed` (the same, in the pull-request comment) both use it.

Two references name the same image when their digests match, or, when either has none yet (a build not
yet published), when their content-addressed tags match: `raybuild publish` never moves such a tag.

KubeRay (v1.7.0, whose CRDs raybuild ships; `rayservice_controller.go`) decides from the RayService's
``rayClusterConfig``, with each worker group's replicas, minReplicas, maxReplicas and workersToDelete left
out (the autoscaler owns them), and the cluster's own upgradeStrategy too:
- equal: nothing happens to the cluster (a changed serveConfigV2 is applied to the running cluster);
- equal once new worker groups at the end are ignored: the running cluster is updated in place;
- anything else: with ``upgradeStrategy.type: NewCluster`` (raybuild's template) a whole new RayCluster
  comes up beside the old one and takes the traffic once its apps are healthy. With ``None`` the change
  waits until the RayService is deleted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from raybuild.engine import Engine
from raybuild.errors import EngineError, ManifestError
from raybuild.labels import CODE_LABEL, LOCK_LABEL, RAY_LOCK_LABEL
from raybuild.reference import ImageRef, ReferenceError
from raybuild.registry import HttpRegistry, Registry, RegistryUnreachable, RegistryUnverifiable
from raybuild.state import HEAD_KEY

Status = Literal["unchanged", "changed", "added", "removed"]
Labels = Mapping[str, str]
# Image labels by reference (None: unknown); raybuild's labels tell code, packages and Ray apart.
LabelLookup = Callable[[ImageRef], Labels | None]

_MUTED_GROUP_FIELDS = ("replicas", "minReplicas", "maxReplicas")


def same_image(before: ImageRef, after: ImageRef) -> bool:
    """Whether two manifest images are one: the same digest where both have one, else the same tag."""
    if before.digest and after.digest:
        return before.digest == after.digest
    return before.same_repository(after) and before.tag == after.tag and before.tag is not None


@dataclass(frozen=True)
class ImageChange:
    key: str  # HEAD_KEY, or the app (its worker group)
    status: Status
    before: ImageRef | None
    after: ImageRef | None
    reason: str  # "code changed", "packages changed", "Ray changed", "new app", ...

    @property
    def label(self) -> str:
        return "head" if self.key == HEAD_KEY else self.key

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.label,
            "status": self.status,
            "reason": self.reason,
            "before": str(self.before) if self.before else None,
            "after": str(self.after) if self.after else None,
            "digest_changed": self.digest_changed,
        }

    @property
    def digest_changed(self) -> bool | None:
        """Whether the digest differs; None when the new image has no digest yet (not published)."""
        if self.status == "unchanged":
            return False
        if self.before is None or self.after is None:
            return True
        return None if self.after.digest is None else self.after.digest != self.before.digest


Outcome = Literal["none", "in-place", "new-cluster", "deferred"]


@dataclass(frozen=True)
class Delta:
    changes: tuple[ImageChange, ...]  # the head, then the apps in the new manifest's order, then removed ones
    outcome: Outcome
    why: str  # what in rayClusterConfig changed, or why nothing happens
    serve_config_changed: bool = False
    kind: str = "RayService"

    @property
    def upgrade(self) -> bool:
        """Whether KubeRay brings up a new RayCluster (a zero-downtime upgrade: every node starts afresh)."""
        return self.outcome == "new-cluster"

    def summary(self) -> str:
        """One line for a PR comment: "this merge upgrades the RayService: hello (code changed), ..."."""
        verb = {
            "new-cluster": "upgrades the RayService",
            "in-place": "updates the RayService's cluster in place",
            "deferred": "changes the cluster, which KubeRay applies only when the RayService is recreated",
            "none": "does not upgrade the RayService",
        }[self.outcome]
        shown = [c for c in self.changes if c.key != HEAD_KEY or c.status != "unchanged"]
        return f"this merge {verb}: " + ", ".join(f"{c.label} ({c.reason})" for c in shown)

    def lines(self) -> list[str]:
        """The per-image report `render --diff` prints."""
        out = []
        for change in self.changes:
            before = change.before.digest or str(change.before) if change.before else "-"
            if change.status == "unchanged":
                out.append(f"{change.label}: unchanged ({before})")
                continue
            after = (change.after.digest or f"{change.after} (not published yet)") if change.after else "-"
            out.append(f"{change.label}: {change.reason}: {before} -> {after}")
        if self.kind == "RayService":
            out.append(("RayService cluster upgrade: " + ("yes: " if self.upgrade else "no: ")) + self.why)
        else:
            out.append(f"{self.kind}: {self.why}")
        if self.serve_config_changed:
            out.append("serveConfigV2 changed: Serve applies it to the running cluster")
        return out

    def to_markdown(self) -> str:
        heading = "**" + self.summary()[0].upper() + self.summary()[1:] + ".**"
        rows = ["| Image | Change | Deployed | New |", "| --- | --- | --- | --- |"]
        for c in self.changes:
            deployed = f"`{_short(c.before)}`" if c.before else "—"
            new = f"`{_short(c.after)}`" if c.after and c.status != "unchanged" else "—"
            rows.append(f"| {c.label} | {c.reason} | {deployed} | {new} |")
        return "\n".join(["### RayService upgrade", "", heading, "", self.why + ".", "", *rows, ""])

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "upgrade": self.upgrade,
            "outcome": self.outcome,
            "why": self.why,
            "serve_config_changed": self.serve_config_changed,
            "images": [c.to_dict() for c in self.changes],
        }


def _short(ref: ImageRef | None) -> str:
    if ref is None:
        return ""
    name = ref.name.rsplit("/", 1)[-1]
    digest = f"@{ref.digest[:19]}…" if ref.digest else " (not published)"
    return f"{name}:{ref.tag}{digest}" if ref.tag else f"{name}{digest}"


# -- manifests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterImages:
    """One manifest's Ray resource: its kind, cluster spec, Serve config, and image per key."""

    kind: str
    cluster: dict[str, Any]
    serve_config: str
    images: dict[str, ImageRef] = field(default_factory=dict)
    upgrade_type: str = "NewCluster"


def _first_image(template: Any, where: str) -> ImageRef:
    try:
        image = str(template["spec"]["containers"][0]["image"])
    except (KeyError, IndexError, TypeError):
        raise ManifestError(f"{where}: no container image in its pod template") from None
    try:
        return ImageRef.parse(image)
    except ReferenceError as exc:
        raise ManifestError(f"{where}: its container image is not an image reference: {exc}") from None


def cluster_images(text: str, source: str) -> ClusterImages:
    """The RayService (or RayCluster) in a manifest's YAML text; ManifestError naming ``source``."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not YAML: {exc}") from None
    found = next((d for d in documents if d.get("kind") in ("RayService", "RayCluster")), None)
    if found is None:
        raise ManifestError(
            f"{source}: no RayService or RayCluster in it",
            hint="pass the manifest that `raybuild render` wrote and is deployed",
        )
    spec = found.get("spec") or {}
    kind = str(found["kind"])
    cluster = spec.get("rayClusterConfig") if kind == "RayService" else spec
    if not isinstance(cluster, dict) or "headGroupSpec" not in cluster:
        raise ManifestError(f"{source}: the {kind} has no headGroupSpec")
    images = {HEAD_KEY: _first_image(cluster["headGroupSpec"].get("template"), f"{source}: headGroupSpec")}
    for group in cluster.get("workerGroupSpecs") or []:
        name = str(group.get("groupName", ""))
        images[name] = _first_image(group.get("template"), f"{source}: worker group {name!r}")
    upgrade = (spec.get("upgradeStrategy") or {}).get("type") or "NewCluster"
    return ClusterImages(kind, cluster, str(spec.get("serveConfigV2", "")), images, str(upgrade))


def _reason(before: Labels | None, after: Labels | None, key: str) -> str:
    if not before or not after:
        return "image changed"
    changed = [
        label for label in (RAY_LOCK_LABEL, LOCK_LABEL, CODE_LABEL) if before.get(label) != after.get(label)
    ]
    if RAY_LOCK_LABEL in changed:
        return "Ray changed" + (" and code changed" if CODE_LABEL in changed else "")
    words = [word for label, word in ((LOCK_LABEL, "packages"), (CODE_LABEL, "code")) if label in changed]
    if words:
        return " and ".join(words) + " changed"
    return "base changed" if key == HEAD_KEY else "image changed (base, templates or env)"


def image_changes(
    before: Mapping[str, ImageRef], after: Mapping[str, ImageRef], labels: LabelLookup | None = None
) -> tuple[ImageChange, ...]:
    changes = []
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            changes.append(ImageChange(key, "added", None, new, "new app"))
        elif same_image(old, new):
            changes.append(ImageChange(key, "unchanged", old, new, "unchanged"))
        elif old.tag is not None and (old.name, old.tag) == (new.name, new.tag):
            changes.append(ImageChange(key, "changed", old, new, "same inputs, new digest"))
        else:
            reason = _reason(labels(old), labels(new), key) if labels else "image changed"
            changes.append(ImageChange(key, "changed", old, new, reason))
    changes += [
        ImageChange(key, "removed", old, None, "removed") for key, old in before.items() if key not in after
    ]
    return tuple(changes)


def _muted(cluster: dict[str, Any], images: Mapping[str, str]) -> dict[str, Any]:
    """The cluster spec as KubeRay hashes it, with each image replaced by ``images[key]``."""
    muted = copy.deepcopy(cluster)
    muted.pop("upgradeStrategy", None)
    muted["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = images[HEAD_KEY]
    for group in muted.get("workerGroupSpecs") or []:
        for name in _MUTED_GROUP_FIELDS:
            group.pop(name, None)
        (group.get("scaleStrategy") or {}).pop("workersToDelete", None)
        group["template"]["spec"]["containers"][0]["image"] = images[str(group.get("groupName", ""))]
    return muted


def compare(deployed: ClusterImages, new: ClusterImages, labels: LabelLookup | None = None) -> Delta:
    changes = image_changes(deployed.images, new.images, labels)
    # An unchanged image counts as equal even when one side is pinned by digest and the other is not yet.
    tokens_before = {c.key: f"{c.key}:before" for c in changes if c.before}
    tokens_after = {c.key: f"{c.key}:{'before' if c.status == 'unchanged' else 'after'}" for c in changes}
    old, now = _muted(deployed.cluster, tokens_before), _muted(new.cluster, tokens_after)
    serve_changed = deployed.serve_config.strip() != new.serve_config.strip()
    moved = [c.label for c in changes if c.status in ("changed", "removed")]
    if old == now:
        outcome: Outcome = "none"
        why = "rayClusterConfig is unchanged (worker replicas aside)"
    else:
        groups_before = len(old.get("workerGroupSpecs") or [])
        trimmed = {**now, "workerGroupSpecs": (now.get("workerGroupSpecs") or [])[:groups_before]}
        if len(now.get("workerGroupSpecs") or []) > groups_before and trimmed == old:
            outcome = "in-place"
            added = ", ".join(c.label for c in changes if c.status == "added")
            why = f"only worker groups are added ({added}), at the end: KubeRay adds them in place"
        else:
            outcome = "new-cluster" if new.upgrade_type == "NewCluster" else "deferred"
            what = f"the image of {', '.join(moved)} changed" if moved else "rayClusterConfig changed"
            if moved and _muted(deployed.cluster, {k: "x" for k in tokens_before}) != _muted(
                new.cluster, {k: "x" for k in tokens_after}
            ):
                what += ", and so did the rest of rayClusterConfig"
            why = (
                f"{what}: KubeRay starts a new RayCluster beside the running one and moves traffic to it"
                if outcome == "new-cluster"
                else f"{what}, but upgradeStrategy is {new.upgrade_type}"
            )
    if new.kind != "RayService":
        outcome = "none"
        why = "KubeRay gives a RayCluster's new pod template only to the pods it creates from now on"
    return Delta(changes, outcome, why, serve_changed, new.kind)


def diff_manifests(
    deployed_text: str, deployed_source: str, new_text: str, labels: LabelLookup | None = None
) -> Delta:
    """The delta from the deployed manifest to the newly rendered one."""
    deployed = cluster_images(deployed_text, deployed_source)
    return compare(deployed, cluster_images(new_text, "the rendered manifest"), labels)


def image_labels(engine: Engine | None, connect: Callable[[str], Registry] | None = None) -> LabelLookup:
    """Labels from this engine's copy of an image, else from its config in the registry; None if neither."""
    cache: dict[str, Labels | None] = {}

    def local(ref: ImageRef) -> Labels | None:
        name = str(ref.pinned()) if ref.digest else str(ref)
        try:  # no Docker here at all is an EngineError too: then the registry must do
            if engine is None or not engine.image_exists(name):
                return None
            return dict(engine.inspect(name).get("Config", {}).get("Labels") or {})
        except EngineError:
            return None

    def remote(ref: ImageRef) -> Labels | None:
        repository = ref.path
        try:
            # Not retried: labels only name the reason for a change, and the diff is shown without them.
            registry = (connect or HttpRegistry)(ref.host)
            manifest = registry.manifest(repository, ref.api_reference)
            if manifest is None or manifest.config_digest is None:
                return None
            blob = registry.blob(repository, manifest.config_digest)
            config = json.loads(blob or b"{}").get("config") or {}
        except (RegistryUnreachable, RegistryUnverifiable, ValueError):
            return None
        return {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}

    def lookup(ref: ImageRef) -> Labels | None:
        if str(ref) not in cache:
            cache[str(ref)] = local(ref) or remote(ref)
        return cache[str(ref)]

    return lookup
