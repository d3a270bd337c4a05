"""Reproducible layers and CI times: two cold builds of the same inputs on two empty Docker engines, then a
warm run on a third (an empty engine, and a registry that holds the first build's images).

    sudo scripts/setup && .venv/bin/python benchmarks/reproducible.py [--apps hello,sklearn,cuda] [--explain]

What it does, in this order:
  1. clones the repository's last commit twice (the history too: image epochs come from git), each
     publishing to a registry namespace of its own, so that the registry holds nothing for either;
  2. starts two empty dockerds (raybuild's cold node, each with its own image store and bridge) and runs
     `raybuild build` and `raybuild publish` on each: the cold CI run, bases bootstrapped with mmdebstrap;
  3. compares the layers of every image between the two: diff IDs (uncompressed) and the compressed
     digests the registry got. `--explain` lists the files that differ in a layer that differs;
  4. starts a third empty dockerd and runs build, publish and render for a clone that publishes to the
     first namespace: the warm CI run. It must pull every image, push nothing, and render byte for byte
     the manifest that the first run rendered.

It writes benchmarks/results/reproducible-<date>.json and .md; the README quotes them. Needs root (it
starts dockerds), the local registry on 127.0.0.1:5000, mmdebstrap, and Debian's mirror and PyPI. The
daemons are stopped and their stores removed at the end (--keep leaves them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.manifest.render import render_manifest
from raybuild.records import BuiltImage, load_publish_record
from raybuild.registry import HttpRegistry
from raybuild.ship.publish import Publisher
from raybuild.verify.coldstart import ColdNode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REGISTRY = "127.0.0.1:5000"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def start_node(main: Engine, index: int) -> tuple[ColdNode, Engine]:
    """An empty dockerd under /var/lib/raybuild/repro-<index>, on a bridge and /29 of its own."""
    node = ColdNode(
        main,
        f"benchmark-repro-{index}",  # the project id its containers carry
        root=Path(f"/var/lib/raybuild/repro-{index}"),
        progress=log,
        bridge=f"rbrepro{index}",
        bridge_cidr=f"198.51.100.{8 * index + 1}/29",
    )
    node.stop(remove=True)  # whatever an interrupted run left
    node.start()
    # Its bridge has no NAT, so RUN steps use the host's network to reach PyPI.
    return node, dataclasses.replace(node.node, build_network="host")


def clone(work: Path, name: str, namespace: str) -> LoadedConfig:
    root = work / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    config_path = root / "raybuild.toml"
    text = config_path.read_text()
    registry = next(line for line in text.splitlines() if line.startswith("registry = "))
    config_path.write_text(text.replace(registry, f'registry = "{namespace}"'))
    return load_config(config_path)


def timed(what: str, action: Any, *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = action(*args)
    elapsed = time.monotonic() - started
    log(f"{what}: {elapsed:.1f} s")
    return result, elapsed


def build(config: LoadedConfig, engine: Engine, apps: tuple[str, ...]) -> list[BuiltImage]:
    ca = default_ca_bundle() or (HOST_CA if HOST_CA.is_file() else None)
    return Builder(config, engine, ca_bundle=ca, progress=log).build(config.select(apps))


def publish(config: LoadedConfig, engine: Engine) -> list[str]:
    return [r.status for r in Publisher(config, engine, progress=log).publish()]


def layers(engine: Engine, built: list[BuiltImage]) -> dict[str, dict[str, Any]]:
    """Per image: its diff IDs here, and the compressed digests and sizes the registry holds for its tag."""
    out = {}
    for image in built:
        manifest = HttpRegistry(image.ref.host).manifest(image.ref.path, image.ref.api_reference)
        assert manifest is not None, f"{image.ref} is not in the registry"
        inspected = engine.inspect(str(image.ref))
        out[image.app] = {
            "ref": str(image.ref),
            "image_id": inspected["Id"],
            "created": inspected.get("Created"),
            "diff_ids": inspected["RootFS"]["Layers"],
            "digests": list(manifest.layer_digests),
            "sizes": list(manifest.layer_sizes),
        }
    return out


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per_image = {}
    unique: dict[str, tuple[int, bool]] = {}  # compressed digest in run A -> (size, identical in run B)
    for key, first in a.items():
        second = b[key]
        pairs = zip(first["diff_ids"], second["diff_ids"], first["digests"], second["digests"], strict=False)
        same = [x == y and p == q for x, y, p, q in pairs]
        same += [False] * (len(first["digests"]) - len(same))  # layers that run B does not have
        per_image[key] = {
            "layers": len(first["digests"]),
            "identical": sum(same),
            "bytes": sum(first["sizes"]),
            "identical_bytes": sum(size for size, ok in zip(first["sizes"], same, strict=True) if ok),
            "differing": [i for i, ok in enumerate(same) if not ok],
            # The image config records when it was built: identical layers still give a new image ID.
            "same_image_id": first["image_id"] == second["image_id"],
        }
        for digest, size, ok in zip(first["digests"], first["sizes"], same, strict=True):
            unique[digest] = (size, ok)
    return {
        "images": per_image,
        "unique_layers": len(unique),
        "unique_identical": sum(ok for _, ok in unique.values()),
        "unique_bytes": sum(size for size, _ in unique.values()),
        "unique_identical_bytes": sum(size for size, ok in unique.values() if ok),
    }


def _layer_entries(engine: Engine, ref: str, index: int) -> dict[str, str]:
    """name -> "mode uid:gid mtime sha" of every entry of one layer, from `docker save`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "image.tar"
        engine.save(ref, out)
        with tarfile.open(out) as outer:
            member = json.load(outer.extractfile("manifest.json"))[0]["Layers"][index]  # type: ignore[arg-type]
            raw = outer.extractfile(member).read()  # type: ignore[union-attr]
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as layer:
        for m in layer.getmembers():
            data = layer.extractfile(m).read() if m.isfile() else m.linkname.encode()  # type: ignore[union-attr]
            sha = hashlib.sha256(data).hexdigest()[:12]
            entries[m.name] = f"{oct(m.mode)} {m.uid}:{m.gid} {m.mtime} {sha}"
    return entries


def explain(
    engines: tuple[Engine, Engine], sets: tuple[dict[str, Any], dict[str, Any]], result: dict[str, Any]
) -> dict[str, list[str]]:
    """The first differing entries of every layer that differs (once per distinct layer)."""
    seen, out = set(), {}
    for key, image in result["images"].items():
        for index in image["differing"]:
            digest = sets[0][key]["digests"][index]
            if digest in seen:
                continue
            seen.add(digest)
            first, second = (
                _layer_entries(e, s[key]["ref"], index) for e, s in zip(engines, sets, strict=True)
            )
            lines = [
                f"{name}: {first.get(name, '-')} | {second.get(name, '-')}"
                for name in sorted(set(first) | set(second))
                if first.get(name) != second.get(name)
            ]
            out[f"{key} layer {index}"] = lines[:40] + (
                [f"... {len(lines) - 40} more"] if len(lines) > 40 else []
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    mb = 1e6
    r = report["reproducible"]
    lines = [
        f"# Reproducible layers and CI times ({report['date']})",
        "",
        f"Commit `{report['commit']}`, apps {', '.join(report['apps'])}; two cold builds on two empty "
        "dockerds (Docker 20.10, BuildKit), then a warm run on a third.",
        "",
        "| image | layers | identical | compressed MB | identical MB | same image ID |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, image in r["images"].items():
        lines.append(
            f"| {key} | {image['layers']} | {image['identical']} | {image['bytes'] / mb:.1f} | "
            f"{image['identical_bytes'] / mb:.1f} | {'yes' if image['same_image_id'] else 'no'} |"
        )
    lines += [
        f"| distinct layers | {r['unique_layers']} | {r['unique_identical']} | "
        f"{r['unique_bytes'] / mb:.1f} | {r['unique_identical_bytes'] / mb:.1f} | |",
        "",
        "| CI run | build (s) | publish (s) | images |",
        "|---|---:|---:|---|",
    ]
    for run in report["runs"]:
        lines.append(f"| {run['name']} | {run['build_s']:.1f} | {run['publish_s']:.1f} | {run['statuses']} |")
    lines += ["", f"Warm run: render byte-identical to the cold run's: {report['render_identical']}."]
    for layer, entries in report.get("explain", {}).items():
        lines += ["", f"Differences in {layer} (run A | run B):", "", "```", *entries, "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--apps", default="", help="comma-separated apps (default: all)")
    parser.add_argument("--explain", action="store_true", help="list the files that differ")
    parser.add_argument("--keep", action="store_true", help="leave the daemons and clones in place")
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"reproducible-{dt.date.today()}")
    args = parser.parse_args()
    main_engine = Engine()
    run_id = uuid.uuid4().hex[:8]
    apps = tuple(name for name in args.apps.split(",") if name)
    work = HERE / "work" / f"reproducible-{run_id}"
    work.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    nodes: list[ColdNode] = []
    try:
        configs, engines, built, layer_sets, runs = [], [], [], [], []
        for index, name in ((1, "a"), (2, "b")):
            config = clone(work, name, f"{REGISTRY}/repro-{run_id}-{name}")
            node, engine = start_node(main_engine, index)
            nodes.append(node)
            images, build_s = timed(f"cold build {name}", build, config, engine, apps)
            statuses, publish_s = timed(f"cold publish {name}", publish, config, engine)
            runs.append({"name": f"cold {name} (empty engine, empty registry)", "build_s": build_s,
                         "publish_s": publish_s, "statuses": ", ".join(sorted(set(statuses)))})  # fmt: skip
            configs.append(config)
            engines.append(engine)
            built.append(images)
            layer_sets.append(layers(engine, images))
        cold_render = render_manifest(configs[0], load_publish_record(configs[0])).text
        result = compare(layer_sets[0], layer_sets[1])
        report: dict[str, Any] = {
            "date": str(dt.date.today()),
            "commit": commit,
            "apps": [app.name for app in configs[0].select(apps)],
            "reproducible": result,
            "layers": {"a": layer_sets[0], "b": layer_sets[1]},
        }
        if args.explain:
            report["explain"] = explain((engines[0], engines[1]), (layer_sets[0], layer_sets[1]), result)
        # The warm run: a fresh engine, and a registry that holds run A's images.
        for node in nodes[1:]:
            node.stop(remove=True)
        config = clone(work, "c", f"{REGISTRY}/repro-{run_id}-a")
        node, engine = start_node(main_engine, 3)
        nodes.append(node)
        images, build_s = timed("warm build", build, config, engine, apps)
        statuses, publish_s = timed("warm publish", publish, config, engine)
        built_statuses = ["pulled" if i.pulled else "cached" if i.cached else "built" for i in images]
        runs.append({"name": "warm (empty engine, registry holds the images)", "build_s": build_s,
                     "publish_s": publish_s,
                     "statuses": f"build: {', '.join(sorted(set(built_statuses)))}; "
                                 f"publish: {', '.join(sorted(set(statuses)))}"})  # fmt: skip
        warm_render = render_manifest(config, load_publish_record(config)).text
        report["runs"] = runs
        report["render_identical"] = warm_render == cold_render
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
    finally:
        if not args.keep:
            for node in nodes:
                node.stop(remove=True)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
