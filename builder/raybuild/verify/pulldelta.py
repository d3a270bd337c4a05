"""The upgrade pull delta: what a node that runs an app's baseline image must download to run the new one.

A KubeRay upgrade (or a scale-up after it) pulls the new image on nodes that ran the old one. Only layers
the node does not hold are downloaded, so the cost of a change is the compressed size of the layers that
are in the current image and not in the baseline's, not the image's size. A code-only change should cost
one small layer, and a dependency bump of one app its packages layer: never the shared Ray layer.

Layers are matched by their uncompressed digest (the diff ID, which the measure document records) within
one app: the node in that app's worker group ran that app's baseline image. A new app is compared with
every baseline image, since a node that ran any of them holds the shared base and Ray layers. A layer's
blob is the same only under the same compression: when the two measurements' compressions differ, every
layer is downloaded again, and the delta says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from raybuild.verify.results import AppResult, Layer, Measurement

_MB = 1_000_000

Status = Literal["changed", "unchanged", "new"]


@dataclass(frozen=True)
class PullDelta:
    app: str
    status: Status  # unchanged: not one new layer; new: the app is not in the baseline
    download: int  # compressed bytes of the new layers (unknown sizes count 0 and are listed in `unknown`)
    layers: tuple[Layer, ...]  # the new layers, base first
    total: int  # the current image's compressed size, for scale
    unknown: int = 0  # new layers whose compressed size the measurement lacks
    recompressed: bool = False  # the compression changed: no layer blob is shared with the baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "status": self.status,
            "download_bytes": self.download,
            "new_layers": [
                {"digest": layer.digest, "compressed": layer.compressed, "created_by": layer.created_by}
                for layer in self.layers
            ],
            "image_compressed_bytes": self.total,
            "unknown_sizes": self.unknown,
            "recompressed": self.recompressed,
        }


def _compression(app: AppResult) -> str:
    return app.size.compression or "gzip"  # documents from before it was recorded were all gzip


def pull_delta(name: str, current: AppResult, held: Sequence[AppResult], status: Status) -> PullDelta:
    """``current``'s layers against what a node holds after running the ``held`` images."""
    recompressed = bool(held) and all(_compression(app) != _compression(current) for app in held)
    have = set() if recompressed else {layer.digest for app in held for layer in app.size.layers}
    layers = tuple(layer for layer in current.size.layers if layer.digest not in have)
    download = sum(layer.compressed or 0 for layer in layers)
    unknown = sum(layer.compressed is None for layer in layers)
    if status == "changed" and not layers:
        status = "unchanged"
    return PullDelta(name, status, download, layers, current.size.compressed, unknown, recompressed)


def pull_deltas(baseline: Measurement, current: Measurement) -> tuple[PullDelta, ...]:
    """One delta per current app, in the current document's order."""
    deltas = []
    for name, app in current.apps.items():
        before = baseline.apps.get(name)
        if before is not None:
            deltas.append(pull_delta(name, app, [before], "changed"))
        else:
            deltas.append(pull_delta(name, app, list(baseline.apps.values()), "new"))
    return tuple(deltas)


def _what(layer: Layer) -> str:
    text = " ".join(layer.created_by.split()).removeprefix("/bin/sh -c ").removeprefix("#(nop) ")
    text = text.replace("|", "\\|").replace("`", "'")
    return text if len(text) <= 60 else text[:57] + "..."


def markdown(deltas: Sequence[PullDelta]) -> list[str]:
    """The PR comment's section: per app, what an upgraded node downloads."""
    if not deltas:
        return []
    lines = [
        "### Upgrade pull delta",
        "",
        "What a node that ran the baseline's image downloads for the current one (new layers, compressed).",
        "",
        "| App | Download | New layers | Largest new layer | Image (compressed) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for delta in deltas:
        largest = max(delta.layers, key=lambda layer: layer.compressed or 0, default=None)
        shown = "—" if largest is None else f"{(largest.compressed or 0) / _MB:.1f} MB `{_what(largest)}`"
        download = f"{delta.download / _MB:.1f} MB" + (" (+ unknown)" if delta.unknown else "")
        app = delta.app.replace("|", "\\|") + (" (new app)" if delta.status == "new" else "")
        lines.append(f"| {app} | {download} | {len(delta.layers)} | {shown} | {delta.total / _MB:.1f} MB |")
    if any(delta.recompressed for delta in deltas):
        lines += ["", "The layer compression changed since the baseline: every layer is downloaded again."]
    return lines
