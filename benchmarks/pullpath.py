"""The pull path for benchmarks/compare.py: cold pulls and head starts on containerd, interleaved.

Single runs on a shared 2-core machine swing by 10% or more, and the load drifts over minutes. So every
variant is measured in turns (A, B, C, then B, C, A, ...: the order rotates, so that no variant always
goes first), never all of A then all of B: a slow minute falls on all of them alike. Each figure keeps
its samples, min, median and max, and a comparison says when the spread is wider than the difference it
reports.

- ``cold_pulls``: per round and variant, a freshly started containerd with an empty store (raybuild's
  containerd cold node) pulls the image, as kubelet does (t_pull), then starts KubeRay's head until both
  probes pass (t_cold = t_pull + that start).
- ``head_starts``: one containerd holding every image; KubeRay's head of each variant, in turns.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.verify.containerd import ContainerdNode


@dataclass(frozen=True)
class Variant:
    name: str  # "naive (gzip)", "raybuild (zstd)"
    app: App
    ref: str  # in the registry, for the pull


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        if not self.values:
            return {"samples": [], "min": None, "median": None, "max": None}
        return {
            "samples": self.values,
            "min": min(self.values),
            "median": statistics.median(self.values),
            "max": max(self.values),
        }


def _rotated(variants: Sequence[Variant], run: int) -> list[Variant]:
    shift = run % len(variants)
    return [*variants[shift:], *variants[:shift]]


def cold_pulls(
    engine: Engine, variants: Sequence[Variant], runs: int, log: Callable[[str], None], deadline: float = 900
) -> dict[str, dict[str, Any]]:
    """{variant: {"t_pull": summary, "t_cold": summary, "runtime": ...}}, a fresh containerd per pull."""
    pulls = {v.name: Samples() for v in variants}
    colds = {v.name: Samples() for v in variants}
    node = ContainerdNode(engine, progress=log)
    try:
        for run in range(runs):
            for variant in _rotated(variants, run):
                node.start()  # a new containerd on a new folder: nothing cached from the turn before
                t_pull = node.pull(variant.ref, deadline)
                t_head = node.head(variant.app, variant.ref, timeout=240)
                log(f"round {run + 1}/{runs} {variant.name}: pull {t_pull:.2f}s, head {t_head:.2f}s")
                pulls[variant.name].values.append(round(t_pull, 3))
                colds[variant.name].values.append(round(t_pull + t_head, 3))
    finally:
        node.stop()
    return {
        name: {"t_pull": pulls[name].summary(), "t_cold": colds[name].summary(), "runtime": node.version}
        for name in pulls
    }


def head_starts(
    engine: Engine, variants: Sequence[Variant], runs: int, log: Callable[[str], None], deadline: float = 900
) -> dict[str, dict[str, Any]]:
    """{variant: summary of t_head}: ``runs`` KubeRay-style head starts of each, alternating."""
    starts = {v.name: Samples() for v in variants}
    node = ContainerdNode(engine, progress=log)
    try:
        node.start()
        for variant in variants:
            node.pull(variant.ref, deadline)
        for run in range(runs):
            for variant in _rotated(variants, run):
                t_head = node.head(variant.app, variant.ref, timeout=240)
                log(f"head {run + 1}/{runs} {variant.name}: {t_head:.2f}s")
                starts[variant.name].values.append(round(t_head, 3))
    finally:
        node.stop()
    return {name: samples.summary() for name, samples in starts.items()}


def spread_note(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> str | None:
    """A warning when the medians differ by less than either figure's spread (max - min)."""
    if a.get("median") is None or b.get("median") is None:
        return None
    difference = abs(a["median"] - b["median"])
    spread = max(a["max"] - a["min"], b["max"] - b["min"])
    if spread > difference:
        return (
            f"{a_name} vs {b_name}: the medians differ by {difference:.2f} s, less than the spread of the "
            f"samples ({spread:.2f} s): within noise on this machine."
        )
    return None


def zstd_copy(engine: Engine, ref: str, target: str, level: int = 19) -> int:
    """Push the daemon's ``ref`` to ``target`` with zstd layers; their compressed size in the registry."""
    from raybuild.reference import ImageRef
    from raybuild.registry import HttpRegistry
    from raybuild.ship.push import Compression, check_layers, push_image

    compression = Compression("zstd", level)
    digest = push_image(engine, ref, target, compression)
    parsed = ImageRef.parse(target)
    manifest = HttpRegistry(parsed.host).manifest(parsed.path, digest or parsed.tag_or_latest)
    assert manifest is not None, f"{target} is not in the registry after the push"
    check_layers(target, manifest, compression)
    return manifest.compressed_size


def pull_path_table(pull: Mapping[str, Any]) -> list[str]:
    """The README's pull-path section: sizes, containerd t_pull and t_cold, interleaved t_head."""
    cold, heads, sizes = pull["cold"], pull["head"], pull["compressed"]
    names = list(cold)
    lines = [
        f"Pull path on a fresh containerd per pull ({pull['runtime']}, kubelet's `ctr images pull` from the "
        f"registry on 127.0.0.1), {pull['runs']} interleaved rounds; t_head: {pull['head_runs']} "
        "KubeRay-style head starts of each image, alternating. min / median / max in seconds.",
        "",
        "| image | compressed (MB) | t_pull | t_cold | t_head |",
        "|---|---:|---|---|---|",
    ]

    def triple(summary: Mapping[str, Any] | None) -> str:
        if not summary or summary.get("median") is None:
            return "n/a"
        return f"{summary['min']:.2f} / **{summary['median']:.2f}** / {summary['max']:.2f}"

    for name in names:
        lines.append(
            f"| {name} | {sizes[name] / 1e6:.1f} | {triple(cold[name]['t_pull'])} | "
            f"{triple(cold[name]['t_cold'])} | {triple(heads.get(name))} |"
        )
    lines += ["", *[f"- {line}" for line in pull["verdicts"]]]
    notes = [note for note in pull["notes"] if note]
    if notes:
        lines += ["", *[f"Note: {note}" for note in notes]]
    return lines
