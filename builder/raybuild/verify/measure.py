"""`raybuild measure`: what each app image costs a node, as a ``raybuild.measure/v1`` document.

Sizes first, for every selected app (`sizes`), since ``shared_bytes`` needs every image's layers; then
``runs`` cold starts per app (`coldstart`): head, worker and Serve on this host's engine, and a pull plus
a head start on the cold node: a freshly started containerd with an empty store, as kubelet pulls
(`containerd`), or a second dockerd (``runtime="docker"``, for teams whose nodes run Docker). This
project's measure containers are swept by label before and after, whatever happens (an error, Ctrl-C,
SIGTERM), and the cold containerd is stopped and its folder removed. Images are pushed to the project's
registry, under ``<namespace>/<app>-measure``, each push and pull within [limits].registry_deadline_s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.errors import EngineError, GpuUnavailable, MeasureError, RaybuildError
from raybuild.images import ImageReferences, image_references
from raybuild.progress import Progress, silent
from raybuild.records import load_build_record
from raybuild.reference import ImageRef
from raybuild.registry import HttpRegistry, Registry
from raybuild.registry_retry import RetryPolicy, retrying
from raybuild.ship.push import Compression
from raybuild.state import HEAD_KEY, failure_log_path, project_id
from raybuild.verify import coldstart
from raybuild.verify.containerd import ContainerdNode
from raybuild.verify.results import SEVERITIES, AppResult, Measurement, Size, Startup, Stat, stat
from raybuild.verify.sizes import measure_ref, measure_size, shared_bytes


@dataclass(frozen=True)
class Options:
    runs: int = 3
    startup: bool = True
    pull: bool = True
    timeout: float = 180.0
    runtime: Literal["containerd", "docker"] = "containerd"  # the cold node's


ColdRuntime = coldstart.ColdNode | ContainerdNode


@dataclass(frozen=True)
class MeasureReport:
    """The document, plus what it has no key for: each cold-node head time and how sizes were compressed."""

    measurement: Measurement
    cold_head: dict[str, list[float]] = field(default_factory=dict)
    compressed_method: dict[str, str] = field(default_factory=dict)


# -- the whole run ------------------------------------------------------------------------------------------


def _gpu_available() -> bool:
    from raybuild.verify import gpu

    try:
        gpu.detect()
    except GpuUnavailable:
        return False
    return True


def _stat(samples: Sequence[float]) -> Stat | None:
    return stat(samples) if samples else None


def _others(
    images: ImageReferences, engine: Engine, app: str, measured: Mapping[str, Size]
) -> list[list[str]]:
    """The diff IDs of every other app image of the project: measured ones, and built ones still present."""
    others = []
    for key, image in images.images.items():
        if key in (app, HEAD_KEY):
            continue
        if key in measured:
            others.append([layer.digest for layer in measured[key].layers])
        elif image.built is not None and engine.image_exists(image.built):
            others.append(list(engine.inspect(image.built)["RootFS"].get("Layers", [])))
    return others


@dataclass
class _Samples:
    """One app's timings, in seconds rounded to milliseconds, in the order they were taken."""

    head: list[float] = field(default_factory=list)
    worker: list[float] = field(default_factory=list)
    serve: list[float] = field(default_factory=list)
    pull: list[float] = field(default_factory=list)
    cold_head: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)

    def startup(self, runtime: str | None = None) -> Startup:
        return Startup(
            runtime=runtime if self.pull else None,
            t_head=_stat(self.head),
            t_worker=_stat(self.worker),
            t_serve=_stat(self.serve),
            t_pull=_stat(self.pull),
            t_cold=_stat(self.cold),
        )


def _start_runs(
    engine: Engine,
    node: ColdRuntime | None,
    app: App,
    ref: str,
    options: Options,
    gpu: bool,
    progress: Progress,
    config: LoadedConfig,
) -> _Samples:
    """``options.runs`` cold starts of one app: warm node (head, worker, Serve), then the cold node."""
    samples = _Samples()
    for run in range(options.runs):
        progress(f"{app.name}: start {run + 1}/{options.runs} (head, worker, Serve)")
        warm = coldstart.warm_start(
            engine,
            app,
            ref,
            project=project_id(config),
            cpu_mode=app.device == "gpu" and not gpu,
            gpu=gpu,
            timeout=options.timeout,
            progress=progress,
            log_path=failure_log_path(config, "measure", app.name),
        )
        samples.head.append(round(warm.t_head, 3))
        samples.worker.append(round(warm.t_worker, 3))
        samples.serve.append(round(warm.t_serve, 3))
        if node is None:
            continue
        target = measure_ref(ref, app.name, config.project.registry)
        progress(f"{app.name}: cold node: pulling {target} into an empty image store")
        node.clear()
        t_pull = round(node.pull(target, config.config.limits.registry_deadline_s), 3)
        t_head = round(node.head(app, target, gpu=gpu, timeout=options.timeout), 3)
        progress(f"{app.name}: cold node: pull {t_pull:.1f}s, head {t_head:.1f}s")
        samples.pull.append(t_pull)
        samples.cold_head.append(t_head)
        # From the rounded parts, so that the document's t_cold is exactly their sum.
        samples.cold.append(round(t_pull + t_head, 3))
    return samples


def _docker_runtime(node: coldstart.ColdNode, compression: Compression) -> str:
    """The dockerd cold node's "docker VERSION"; MeasureError when it cannot pull ``compression``."""
    try:
        version = str(node.node.info("ServerVersion", timeout=30) or "unknown")
    except EngineError:
        version = "unknown"
    major = version.split(".", 1)[0]
    if compression.format == "zstd" and (not major.isdigit() or int(major) < 23):
        raise MeasureError(
            f"the dockerd cold node (Docker {version}) cannot pull zstd layers ([publish].compression)",
            hint="Docker Engine 23 or newer can; measure with --runtime containerd (containerd >= 1.5), "
            "or with --no-pull",
        )
    return f"docker {version}"


def measure(
    config: LoadedConfig,
    apps: Sequence[App],
    engine: Engine,
    options: Options = Options(),
    progress: Progress = silent,
    registry: Registry | None = None,
) -> MeasureReport:
    """Measure ``apps`` (all of the project's when empty): sizes, then ``options.runs`` cold starts each.

    ``registry``: the client of the registry that images are pushed to, to read their compressed sizes,
    and that the cold node pulls from; by default the host of [project].registry. When it does not answer,
    sizes come from `docker save`.
    """
    apps = list(apps) or list(config.apps)
    # The last build's tags, never published digests: measure pushes and starts images of this engine.
    images = image_references(config, None)
    refs = {app.name: images.built(app.name) for app in apps}
    engine.ping()  # a daemon that is down is one line saying so, not "the image is not in the engine"
    for name, ref in refs.items():
        if not engine.image_exists(ref):
            raise MeasureError(
                f"app {name!r}: image {ref} is not in the engine", hint=f"run `raybuild build {name}`"
            )
    host = ImageRef.parse_name(config.project.registry).host
    connected = registry if registry is not None else HttpRegistry(host, timeout=30.0)
    target = retrying(connected, RetryPolicy.of(config, progress))
    reachable = target.reachable()
    if not reachable:
        progress(
            f"registry {target.address} unreachable: compressed sizes from gzip of `docker save`; "
            "no cold-node pulls"
        )
    registry = target if reachable else None
    project = project_id(config)
    coldstart.sweep(engine, project)
    node: ColdRuntime | None = None
    runtime: str | None = None
    compression = Compression.of(config)
    try:
        if options.startup and options.pull and registry is not None:
            # Started before the sizes are measured, so that a host that cannot run it fails fast.
            if options.runtime == "containerd":
                node = ContainerdNode(engine, progress=progress)
                node.start()
                runtime = node.version
            else:
                node = coldstart.ColdNode(engine, project, progress=progress)
                node.start()
                coldstart.sweep(node.node, project)
                runtime = _docker_runtime(node, compression)

        def size_of(ref: str, app: str) -> tuple[Size, str]:
            return measure_size(
                engine,
                ref,
                app,
                config.project.python,
                registry,
                project=project,
                namespace=config.project.registry,
                deadline=config.config.limits.registry_deadline_s,
                compression=compression,
            )

        sizes: dict[str, Size] = {}
        methods: dict[str, str] = {}
        for app in apps:
            progress(f"{app.name}: measuring the size of {refs[app.name]}")
            sizes[app.name], methods[app.name] = size_of(refs[app.name], app.name)
            progress(f"{app.name}: compressed size from the {methods[app.name]}")
        for app in apps:
            shared = shared_bytes(sizes[app.name].layers, _others(images, engine, app.name, sizes))
            sizes[app.name] = sizes[app.name].model_copy(update={"shared_bytes": shared})
        other_sizes: dict[str, dict[str, Size]] = {}
        for app in apps:
            for platform, ref in _other_platforms(config, app.name):
                progress(f"{app.name}: measuring the size of {ref} ({platform}; sizes only, no timings)")
                other_sizes.setdefault(app.name, {})[platform] = size_of(ref, app.name)[0]

        gpu = options.startup and any(app.device == "gpu" for app in apps) and _gpu_available()
        results: dict[str, AppResult] = {}
        cold_heads: dict[str, list[float]] = {}
        for app in apps:
            samples = _Samples()
            if options.startup and not _runs_natively(config, app.name):
                progress(f"{app.name}: built for no platform this machine runs natively: no timings")
            elif options.startup:
                samples = _start_runs(
                    engine,
                    node,
                    app,
                    refs[app.name],
                    options,
                    gpu and app.device == "gpu",
                    progress,
                    config,
                )
            cold_heads[app.name] = samples.cold_head
            results[app.name] = AppResult(
                image=refs[app.name],
                device=app.device,
                size=sizes[app.name],
                startup=samples.startup(runtime),
                platform_sizes=other_sizes.get(app.name),
            )
    finally:
        # Best effort, so that the error or interruption that ended the run is what gets reported.
        engine.release(coldstart.measure_labels(project))
        if isinstance(node, ContainerdNode):
            try:
                node.stop()  # its processes and its whole folder: nothing of a cold node outlives the run
            except RaybuildError as exc:
                progress(f"warning: could not stop the cold containerd ({exc.message})")
        elif node is not None:
            try:
                if node.running():
                    node.clear()  # an empty store for the next measure, and the disk space back
            except RaybuildError as exc:
                progress(f"warning: could not clear the cold node ({exc.message})")
    measurement = Measurement.now(
        ray_version=config.project.ray_version,
        python=config.project.python,
        runs=options.runs if options.startup else 0,
        apps=results,
    )
    return MeasureReport(measurement, cold_heads, methods)


def _other_platforms(config: LoadedConfig, key: str) -> list[tuple[str, str]]:
    """(platform, tag) of each image of ``key`` beside the one its build tag names here (the native one)."""
    built = load_build_record(config).get(key)
    if built is None or len(built.platform_refs) < 2:
        return []
    local = next((p for p, _ in built.platform_refs if platforms.native(p)), built.platform_refs[0][0])
    return [(p, str(ref)) for p, ref in built.platform_refs if p != local]


def _runs_natively(config: LoadedConfig, key: str) -> bool:
    """Whether ``key``'s local image is of this machine's platform: timings of any other are qemu's."""
    built = load_build_record(config).get(key)
    return built is None or any(platforms.native(p) for p in built.platforms)


# -- output -------------------------------------------------------------------------------------------------

HEADERS = [
    "app",
    "size MB",
    "compressed MB",
    "shared MB",
    "t_head s",
    "t_worker s",
    "t_serve s",
    "t_pull s",
    "t_cold s",
]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def _median(value: Stat | None) -> str:
    return "-" if value is None else f"{value.median:.2f}"


def summary_rows(measurement: Measurement) -> list[list[str]]:
    rows = []
    for name, result in measurement.apps.items():
        size, startup = result.size, result.startup
        rows.append(
            [
                name,
                _mb(size.uncompressed),
                _mb(size.compressed),
                _mb(size.shared_bytes),
                *(
                    _median(getattr(startup, key))
                    for key in ("t_head", "t_worker", "t_serve", "t_pull", "t_cold")
                ),
            ]
        )
        # Another platform's image: its sizes, and never a time (it would be qemu's).
        for platform, other in (result.platform_sizes or {}).items():
            rows.append(
                [f"{name} ({platform})", _mb(other.uncompressed), _mb(other.compressed), "-"] + ["-"] * 5
            )
    return rows


def to_markdown(measurement: Measurement) -> str:
    lines = [
        f"### raybuild measure (Ray {measurement.ray_version}, Python {measurement.python}, "
        f"{measurement.runs} run{'s' if measurement.runs != 1 else ''}; medians)",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(measurement)]
    scanned = {name: app.vulnerabilities for name, app in measurement.apps.items() if app.vulnerabilities}
    if scanned:
        order = tuple(reversed(SEVERITIES))
        lines += ["", "| app | " + " | ".join(order) + " |", "|---" + "|---:" * len(order) + "|"]
        for name, found in scanned.items():
            lines.append(f"| {name} | " + " | ".join(str(found.counts.get(s, 0)) for s in order) + " |")
    return "\n".join(lines) + "\n"
