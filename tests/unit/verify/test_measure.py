"""raybuild measure over a fake engine and a fake registry: layer mapping, shared bytes, dive, prune, stats.

Nothing here starts a container or opens a socket; the real thing is tests/integration/test_measure.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

from raybuild.config import LoadedConfig
from raybuild.engine import Result
from raybuild.errors import MeasureError, StateError
from raybuild.progress import Progress, silent
from raybuild.records import BuiltImage, save_build_record
from raybuild.registry import OCI_INDEX, RegistryUnreachable, RegistryUnverifiable, parse_manifest
from raybuild.ship.push import Compression
from raybuild.state import build_record_path, project_id
from raybuild.verify import coldstart, sizes
from raybuild.verify import measure as measure_module
from raybuild.verify.coldstart import WarmStart
from raybuild.verify.measure import MeasureReport, Options, measure, summary_rows, to_markdown
from raybuild.verify.results import AppResult, Measurement, Package, Size, Startup, schema, stat
from raybuild.verify.sizes import (
    gzip_size,
    history_sizes,
    map_layers,
    measure_ref,
    measure_size,
    merge_prune,
    parse_dive,
    parse_inspection,
    shared_bytes,
)
from tests.conftest import other_app
from tests.unit.fakes import FakeEngine as RecordingEngine
from tests.unit.fakes import FakeRegistry

if TYPE_CHECKING:  # only for annotations: "conftest" is ambiguous when unit and integration run together
    from tests.conftest import MainResult, TmpProject

NAMESPACE = "127.0.0.1:5000/demo"  # the tmp project's [project].registry
PROJECT = "0123456789abcdef"
MEASURED = {"project": PROJECT, "namespace": NAMESPACE}
DEMO_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
OTHER_REF = "127.0.0.1:5000/demo/other:ray2.60.0-py3.11-cpu-333333333333"
BASE, RAY, APP_DEMO, APP_OTHER = (f"sha256:{c * 64}" for c in "abcd")

OTHER_APP = "\n" + other_app()

# One history entry per Dockerfile step; ENV and LABEL make no layer. Sizes per entry, oldest first.
HISTORY: list[tuple[dict[str, Any], int]] = [
    ({"created_by": "", "comment": "Imported from -"}, 90_000_000),
    ({"created_by": "ENV LANG=C.UTF-8", "empty_layer": True}, 0),
    ({"created_by": "COPY /opt/ray/venv /opt/ray/venv # buildkit"}, 270_000_000),
    ({"created_by": "LABEL io.raybuild.app=demo", "empty_layer": True}, 0),
    ({"created_by": "COPY /opt/app/site-packages /opt/app/site-packages # buildkit"}, 330_000),
]
DIVE_REPORT = {
    "layer": [{"index": 0, "id": "x", "digestId": BASE, "sizeBytes": 1, "command": "", "fileList": []}],
    "image": {
        "sizeBytes": 362731125,
        "inefficientBytes": 1714,
        "efficiencyScore": 0.9999975877449171,
        "fileReference": [{"count": 2, "sizeBytes": 1714, "file": "/etc/passwd"}],
    },
}
INSIDE = """\
118552849\t/opt/ray/venv/lib/python3.11/site-packages/ray
25924155\t/opt/ray/venv/lib/python3.11/site-packages/numpy
1200\t/opt/ray/venv/lib/python3.11/site-packages/six.py
300000\t/opt/app/site-packages/numpy
420\t/opt/app/site-packages/raybuild-prune.json
@@raybuild-prune /opt/ray/venv/raybuild-prune.json
{"ray-java-jars": 34514818, "strip-debug-symbols": 75459171, "source-maps": 0}

@@raybuild-prune /opt/app/site-packages/raybuild-prune.json
{"strip-debug-symbols": 216, "source-maps": 0}

"""


def config_blob(diff_ids: list[str], history: list[tuple[dict[str, Any], int]] = HISTORY) -> dict[str, Any]:
    return {"rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": [entry for entry, _ in history]}


def history_output(history: list[tuple[dict[str, Any], int]] = HISTORY) -> str:
    """What `docker history --format '{{json .}}'` prints: newest first, Size as a string."""
    rows = [
        {"CreatedBy": entry["created_by"], "ID": "<missing>", "Size": str(size)} for entry, size in history
    ]
    return "\n".join(json.dumps(row) for row in reversed(rows)) + "\n"


# -- pure parsing -------------------------------------------------------------------------------------------


def test_history_sizes_are_oldest_first() -> None:
    assert history_sizes(history_output()) == [size for _, size in HISTORY]


def test_history_sizes_refuse_garbage() -> None:
    with pytest.raises(MeasureError, match="unexpected `docker history` line"):
        history_sizes("IMAGE CREATED SIZE\n")


def test_layers_map_history_entries_that_made_a_layer_to_the_diff_ids() -> None:
    layers = map_layers(config_blob([BASE, RAY, APP_DEMO]), history_sizes(history_output()), [35, 91, 1])
    assert [(layer.digest, layer.size, layer.compressed, layer.created_by) for layer in layers] == [
        (BASE, 90_000_000, 35, "Imported from -"),
        (RAY, 270_000_000, 91, "COPY /opt/ray/venv /opt/ray/venv # buildkit"),
        (APP_DEMO, 330_000, 1, "COPY /opt/app/site-packages /opt/app/site-packages # buildkit"),
    ]


def test_layers_without_compressed_sizes_have_none() -> None:
    layers = map_layers(config_blob([BASE, RAY, APP_DEMO]), history_sizes(history_output()), None)
    assert [layer.compressed for layer in layers] == [None, None, None]


@pytest.mark.parametrize(
    ("diff_ids", "sizes", "compressed", "message"),
    [
        ([BASE, RAY], [1, 0, 2, 0, 3], None, "3 history entries that made one"),
        ([BASE, RAY, APP_DEMO], [1, 2, 3], None, "`docker history` has 3 entries but the image config 5"),
        ([BASE, RAY, APP_DEMO], [1, 0, 2, 0, 3], [1, 2], "the manifest has 2 layers"),
    ],
)
def test_layer_mapping_refuses_inconsistent_inputs(
    diff_ids: list[str], sizes: list[int], compressed: list[int] | None, message: str
) -> None:
    with pytest.raises(MeasureError, match=message):
        map_layers(config_blob(diff_ids), sizes, compressed)


@pytest.mark.parametrize(
    ("ref", "pushed"),
    [
        (DEMO_REF, "127.0.0.1:5000/demo/demo-measure:ray2.60.0-py3.11-cpu-222222222222"),
        ("127.0.0.1:5000/demo/demo", "127.0.0.1:5000/demo/demo-measure:latest"),
        ("demo:v1@sha256:" + "e" * 64, "127.0.0.1:5000/demo/demo-measure:v1"),
    ],
)
def test_measure_ref_keeps_the_tag_in_the_projects_namespace(ref: str, pushed: str) -> None:
    assert measure_ref(ref, "demo", NAMESPACE) == pushed
    assert measure_ref(ref, "demo", "ghcr.io/acme/") == pushed.replace("127.0.0.1:5000/demo", "ghcr.io/acme")


def test_shared_bytes_count_layers_found_in_any_other_image() -> None:
    layers = map_layers(config_blob([BASE, RAY, APP_DEMO]), history_sizes(history_output()), None)
    assert shared_bytes(layers, [[BASE, APP_OTHER], [RAY]]) == 90_000_000 + 270_000_000
    assert shared_bytes(layers, [[BASE]]) == 90_000_000
    assert shared_bytes(layers, []) == 0


def test_dive_report_gives_efficiency_and_wasted_bytes() -> None:
    dive = parse_dive(DIVE_REPORT)
    assert dive.efficiency == pytest.approx(0.9999975877449171)
    assert dive.wasted_bytes == 1714


def test_dive_efficiency_is_clamped_and_a_bad_report_is_an_error() -> None:
    assert parse_dive({"image": {"efficiencyScore": 1.0000001, "inefficientBytes": 0}}).efficiency == 1.0
    with pytest.raises(MeasureError, match="unexpected dive report"):
        parse_dive({"layer": []})


def test_prune_reports_are_summed_per_rule() -> None:
    merged = merge_prune(
        [{"strip-debug-symbols": 75, "source-maps": 6}, {"strip-debug-symbols": 2, "x": True}]
    )
    assert merged == {"source-maps": 6, "strip-debug-symbols": 77}


def test_inspection_ranks_packages_and_merges_prune_reports() -> None:
    packages, prune = parse_inspection(INSIDE, limit=2)
    assert packages == [Package(name="ray", size=118552849), Package(name="numpy", size=25924155 + 300000)]
    assert prune == {"ray-java-jars": 34514818, "source-maps": 0, "strip-debug-symbols": 75459387}


def test_inspection_without_prune_reports() -> None:
    packages, prune = parse_inspection("10\t/opt/app/site-packages/a\n@@raybuild-prune /missing.json\n\n")
    assert packages == [Package(name="a", size=10)]
    assert prune == {}


def test_gzip_size_matches_gzip() -> None:
    data = b"ray serve " * 50_000 + bytes(range(256)) * 100
    assert gzip_size(io.BytesIO(data)) == len(gzip.compress(data, compresslevel=6, mtime=0))


# -- a fake engine and registry -----------------------------------------------------------------------------


@dataclass
class FakeImage:
    diff_ids: list[str]
    compressed: list[int]
    history: list[tuple[dict[str, Any], int]] = field(default_factory=lambda: list(HISTORY))

    @property
    def config(self) -> dict[str, Any]:
        return config_blob(self.diff_ids, self.history)

    def inspect(self) -> dict[str, Any]:
        return {"Size": sum(size for _, size in self.history), "RootFS": {"Layers": self.diff_ids}}


@dataclass
class FakeEngine:
    """Images by ref; a push stores the manifest and config in ``registry``; every docker call is recorded."""

    registry: FakeRegistry
    images: dict[str, FakeImage] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)

    def ping(self) -> None:
        """The daemon answers (measure asks before it looks for any image)."""

    def image_exists(self, ref: str) -> bool:
        return ref in self.images

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.images[ref].inspect()

    def tag(self, source: str, target: str) -> None:
        self.calls.append(["tag", source, target])
        self.images[target] = self.images[source]

    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result:
        self.calls.append(["push", ref])
        self.deadlines.append(timeout)
        image = self.images[ref]
        name, _, tag = ref.removeprefix(self.registry.address + "/").rpartition(":")
        config = json.dumps(image.config).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.registry.store(name, tag, config_digest, image.compressed, config=config)
        return Result(["docker", "push", ref], 0, "")

    def save(self, ref: str, out: Path) -> None:
        image = self.images[ref]
        with tarfile.open(out, "w") as tar:
            files = {"config.json": json.dumps(image.config).encode()}
            layers = []
            for index, diff_id in enumerate(image.diff_ids):
                files[f"{index}/layer.tar"] = diff_id.encode() * 1000
                layers.append(f"{index}/layer.tar")
            files["manifest.json"] = json.dumps([{"Config": "config.json", "Layers": layers}]).encode()
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    @property
    def runner(self) -> FakeEngine:
        return self  # dive, the one other tool measure runs, answers through ``run`` below

    def history(self, ref: str) -> str:
        self.calls.append(["history", ref])
        return history_output(self.images[ref].history)

    def run_once(
        self, image: str, entrypoint: str, args: Any, *, labels: Any, user: Any, what: str
    ) -> Result:
        command = [
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            user,
            *(f"{k}={v}" for k, v in labels.items()),
        ]
        self.calls.append([*command, "--entrypoint", entrypoint, image, *args])
        return Result(["docker", "run"], 0, INSIDE)

    def untag(self, ref: str) -> None:
        self.calls.append(["image", "rm", ref])

    def run(self, command: list[str], **kwargs: Any) -> Result:
        self.calls.append(command)
        if Path(command[0]).name == "dive":
            Path(command[2]).write_text(json.dumps(DIVE_REPORT), encoding="utf-8")
        return Result(command, 0, "")

    def remove_labelled(self, labels: dict[str, str]) -> int:
        self.calls.append(["sweep", labels["io.raybuild.purpose"], labels["io.raybuild.project"]])
        return 0

    def release(self, labels: dict[str, str], *, name: str | None = None) -> None:
        self.calls.append(["release", labels["io.raybuild.purpose"], labels["io.raybuild.project"]])


@pytest.fixture
def no_dive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizes, "dive_binary", lambda: None)


def demo_engine() -> FakeEngine:
    engine = FakeEngine(FakeRegistry())
    engine.images[DEMO_REF] = FakeImage([BASE, RAY, APP_DEMO], [35_000_000, 91_000_000, 120_000])
    engine.images[OTHER_REF] = FakeImage([BASE, RAY, APP_OTHER], [35_000_000, 91_000_000, 900_000])
    return engine


def test_size_from_the_registry_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizes, "dive_binary", lambda: "/venv/bin/dive")
    engine = demo_engine()
    size, method = measure_size(
        engine,
        DEMO_REF,
        "demo",
        "3.11",
        engine.registry,
        **MEASURED,
        deadline=60,  # type: ignore[arg-type]
    )
    target = "127.0.0.1:5000/demo/demo-measure:ray2.60.0-py3.11-cpu-222222222222"
    assert method == "registry manifest"
    assert ["push", target] in engine.calls
    assert engine.deadlines == [60], "the push is bounded"
    [inspect] = [call for call in engine.calls if call[0] == "run"]
    assert f"io.raybuild.project={PROJECT}" in inspect and "io.raybuild.purpose=measure" in inspect
    assert ["image", "rm", target] in engine.calls  # only the measure tag goes again
    assert size.uncompressed == 360_330_000
    assert size.compressed == 35_000_000 + 91_000_000 + 120_000
    assert [layer.compressed for layer in size.layers] == [35_000_000, 91_000_000, 120_000]
    assert size.dive is not None and size.dive.wasted_bytes == 1714
    assert size.largest_packages[0] == Package(name="ray", size=118552849)
    assert size.prune_saved["strip-debug-symbols"] == 75459387
    assert size.shared_bytes == 0  # filled in once every image is measured


@pytest.mark.usefixtures("no_dive")
def test_size_without_a_registry_gzips_docker_save_layers() -> None:
    engine = demo_engine()
    size, method = measure_size(engine, DEMO_REF, "demo", "3.11", None, **MEASURED)  # type: ignore[arg-type]
    assert method == "gzip of docker save"
    assert not any(call[0] == "push" for call in engine.calls)
    expected = [len(gzip.compress(digest.encode() * 1000, 6)) for digest in (BASE, RAY, APP_DEMO)]
    assert [layer.compressed for layer in size.layers] == expected
    assert size.compressed == sum(expected)
    assert size.dive is None


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (RegistryUnreachable("HTTP 503 Service Unavailable", down=False), "HTTP 503 Service Unavailable"),
        (RegistryUnverifiable("HTTP 401 Unauthorized"), "HTTP 401 Unauthorized"),
    ],
)
@pytest.mark.usefixtures("no_dive")
def test_a_registry_that_fails_after_the_push_is_a_measure_error(failure: Exception, said: str) -> None:
    engine = demo_engine()
    engine.registry.failures = [failure]
    with pytest.raises(MeasureError) as raised:
        measure_size(engine, DEMO_REF, "demo", "3.11", engine.registry, **MEASURED)  # type: ignore[arg-type]
    tag = DEMO_REF.rsplit(":", 1)[1]
    assert str(raised.value) == f"registry 127.0.0.1:5000: manifest demo/demo-measure:{tag}: {said}"
    assert raised.value.hint == "is the registry on 127.0.0.1:5000 running?"


@pytest.mark.usefixtures("no_dive")
def test_a_pushed_image_the_registry_lacks_or_holds_as_an_index_is_a_measure_error() -> None:
    engine = demo_engine()
    engine.push = lambda ref, **_: Result(["docker", "push", ref], 0, "")  # type: ignore[method-assign]
    with pytest.raises(MeasureError, match=r"manifest demo/demo-measure:\S+: not found"):
        measure_size(engine, DEMO_REF, "demo", "3.11", engine.registry, **MEASURED)  # type: ignore[arg-type]
    index = parse_manifest(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode())
    engine.registry.manifests[("demo/demo-measure", DEMO_REF.rsplit(":", 1)[1])] = index
    with pytest.raises(MeasureError, match=re.escape(f"expected an image manifest, got '{OCI_INDEX}'")):
        measure_size(engine, DEMO_REF, "demo", "3.11", engine.registry, **MEASURED)  # type: ignore[arg-type]


# -- the whole run, sizes only, and the startup statistics --------------------------------------------------


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.add_app("other")
    tmp_project.append_config(OTHER_APP)
    config = tmp_project.load()
    save_build_record(
        config,
        [
            BuiltImage("demo", DEMO_REF, "sha256:1", "cpu", False),
            BuiltImage("other", OTHER_REF, "sha256:2", "cpu", False),
        ],
    )
    return config


def measure_demo_sizes(
    project: LoadedConfig, engine: FakeEngine, progress: Progress = silent
) -> MeasureReport:
    """A sizes-only run of "demo" against the engine's registry."""
    apps = project.select(("demo",))
    options = Options(startup=False)
    return measure(project, apps, engine, options, progress, registry=engine.registry)  # type: ignore[arg-type]


@pytest.mark.usefixtures("no_dive")
def test_sizes_only_run_shares_layers_with_unmeasured_apps(project: LoadedConfig) -> None:
    engine = demo_engine()
    report = measure_demo_sizes(project, engine)
    document = report.measurement
    jsonschema.validate(json.loads(document.to_json()), schema())
    assert document.runs == 0
    assert list(document.apps) == ["demo"]
    demo = document.apps["demo"]
    assert demo.image == DEMO_REF and demo.device == "cpu"
    # "other" was not measured, but its built image shares the base and Ray layers.
    assert demo.size.shared_bytes == 90_000_000 + 270_000_000
    assert demo.startup == Startup(t_head=None, t_worker=None, t_serve=None, t_pull=None, t_cold=None)
    assert not any(call[0] == "pull" for call in engine.calls)
    sweeps = [call for call in engine.calls if call[0] in ("sweep", "release")]
    this_project = project_id(project)
    assert sweeps == [["sweep", "measure", this_project], ["release", "measure", this_project]], (
        "this project's leftovers are swept before, and everything released after"
    )
    assert ["push", f"{NAMESPACE}/demo-measure:{DEMO_REF.rsplit(':', 1)[1]}"] in engine.calls
    assert engine.deadlines == [900], "[limits].registry_deadline_s by default"


@pytest.mark.usefixtures("no_dive")
def test_an_unreachable_registry_measures_sizes_from_docker_save(project: LoadedConfig) -> None:
    engine = demo_engine()
    engine.registry.up = False
    progress: list[str] = []
    report = measure_demo_sizes(project, engine, progress.append)
    assert report.compressed_method == {"demo": "gzip of docker save"}
    assert not any(call[0] == "push" for call in engine.calls)
    assert engine.registry.reads == []
    assert progress[0].startswith("registry 127.0.0.1:5000 unreachable: compressed sizes from gzip")


def test_an_app_never_built_is_a_state_error(project: LoadedConfig) -> None:
    build_record_path(project).unlink()
    save_build_record(project, [BuiltImage("other", OTHER_REF, "sha256:2", "cpu", False)])
    engine = demo_engine()
    with pytest.raises(StateError, match=r"^app 'demo' has not been built$") as raised:
        measure(project, (), engine, Options(startup=False))  # type: ignore[arg-type]
    assert raised.value.hint == "run `raybuild build demo`"
    assert engine.calls == []


@pytest.mark.usefixtures("no_dive")
def test_an_unbuilt_image_is_an_error_before_anything_runs(
    project: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = demo_engine()
    del engine.images[OTHER_REF]
    with pytest.raises(MeasureError, match="is not in the engine") as raised:
        measure(project, (), engine, Options(startup=False))  # type: ignore[arg-type]
    assert raised.value.hint == "run `raybuild build other`"
    assert engine.calls == []


@dataclass
class FakeColdNode:
    pulls: list[float]
    heads: list[float]
    log: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.log.append("clear")

    def pull(self, ref: str, deadline: float | None = None) -> float:
        self.log.append(f"pull {ref} within {deadline}")
        return self.pulls.pop(0)

    def head(self, app: Any, ref: str, *, gpu: bool = False, timeout: float = 180.0) -> float:
        self.log.append(f"head {ref}")
        return self.heads.pop(0)


def test_runs_give_median_min_max_and_t_cold_is_pull_plus_cold_head(
    project: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = [WarmStart(6.1, 4.0, 3.0), WarmStart(5.2, 5.0, 2.5), WarmStart(5.9, 4.5, 2.0)]
    monkeypatch.setattr(coldstart, "warm_start", lambda *args, **kwargs: warm.pop(0))
    node = FakeColdNode(pulls=[8.0004, 7.5, 9.25], heads=[6.0, 6.1236, 5.5])
    (demo,) = project.select(("demo",))
    samples = measure_module._start_runs(
        demo_engine(),
        node,
        demo,
        DEMO_REF,
        Options(runs=3),
        False,
        lambda _: None,
        project,
    )
    startup = samples.startup()
    assert startup.t_head == stat([6.1, 5.2, 5.9])
    assert startup.t_head is not None and (startup.t_head.median, startup.t_head.min, startup.t_head.max) == (
        5.9,
        5.2,
        6.1,
    )
    assert startup.t_pull is not None and startup.t_pull.samples == [8.0, 7.5, 9.25]
    assert samples.cold_head == [6.0, 6.124, 5.5]
    assert startup.t_cold is not None
    for cold, pull, head in zip(
        startup.t_cold.samples, startup.t_pull.samples, samples.cold_head, strict=True
    ):
        assert cold == pytest.approx(pull + head, abs=1e-9)
    assert node.log[:3] == [
        "clear",
        f"pull {measure_ref(DEMO_REF, 'demo', NAMESPACE)} within 900",
        f"head {measure_ref(DEMO_REF, 'demo', NAMESPACE)}",
    ]


# -- output -------------------------------------------------------------------------------------------------


def example_document() -> Measurement:
    size = Size(
        uncompressed=362_746_793,
        compressed=126_537_462,
        layers=[],
        largest_packages=[],
        shared_bytes=362_408_677,
        dive=None,
        prune_saved={},
    )
    startup = Startup(
        t_head=stat([5.37]), t_worker=None, t_serve=stat([3.917]), t_pull=stat([5.852]), t_cold=stat([16.491])
    )
    return Measurement.now(
        ray_version="2.60.0",
        python="3.11",
        runs=1,
        apps={"hello": AppResult(image=DEMO_REF, device="cpu", size=size, startup=startup)},
    )


def test_summary_rows_and_markdown() -> None:
    document = example_document()
    assert summary_rows(document) == [
        ["hello", "362.7", "126.5", "362.4", "5.37", "-", "3.92", "5.85", "16.49"]
    ]
    assert to_markdown(document) == (
        "### raybuild measure (Ray 2.60.0, Python 3.11, 1 run; medians)\n"
        "\n"
        "| app | size MB | compressed MB | shared MB "
        "| t_head s | t_worker s | t_serve s | t_pull s | t_cold s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| hello | 362.7 | 126.5 | 362.4 | 5.37 | - | 3.92 | 5.85 | 16.49 |\n"
    )


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[Options]:
    """`raybuild measure` with the library replaced by example_document(); the options it was called with."""
    from raybuild.cli import measure as measure_cli

    seen: list[Options] = []

    def fake_measure(
        config: LoadedConfig, apps: Any, engine: Any, options: Options, progress: Any
    ) -> MeasureReport:
        seen.append(options)
        return MeasureReport(example_document())

    monkeypatch.setattr(measure_cli, "measure_apps", fake_measure)
    return seen


def test_cli_writes_the_requested_files(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], measured: list[Options], tmp_path: Path
) -> None:
    out, markdown = tmp_path / "out" / "m.json", tmp_path / "m.md"
    result = run_main(
        "--config",
        str(tmp_project.config_path),
        "measure",
        "demo",
        "--runs",
        "2",
        "--no-pull",
        "--out",
        str(out),
        "--markdown",
        str(markdown),
    )
    assert result.exit_code == 0, result.stderr
    assert measured == [Options(runs=2, startup=True, pull=False, timeout=180.0)]
    written = Measurement.load(out)
    assert not (tmp_project.root / ".raybuild" / "measure.json").exists()  # --out replaces the default
    assert written.model_dump(exclude={"created"}) == example_document().model_dump(exclude={"created"})
    assert markdown.read_text(encoding="utf-8") == to_markdown(written)
    assert result.stderr.splitlines()[-1] == f"wrote {out}"
    assert result.stdout.splitlines()[0].split() == [
        "APP",
        "SIZE",
        "MB",
        "COMPRESSED",
        "MB",
        "SHARED",
        "MB",
        "T_HEAD",
        "S",
        "T_WORKER",
        "S",
        "T_SERVE",
        "S",
        "T_PULL",
        "S",
        "T_COLD",
        "S",
    ]


def test_cli_json_prints_the_document_it_writes_where_check_looks(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], measured: list[Options]
) -> None:
    result = run_main("--config", str(tmp_project.config_path), "measure", "--no-startup", "--json")
    assert result.exit_code == 0, result.stderr
    assert measured == [Options(runs=3, startup=False, pull=True, timeout=180.0)]
    default = tmp_project.root / ".raybuild" / "measure.json"
    # stdout is the document alone, byte for byte the file `raybuild check` reads by default.
    assert result.stdout == default.read_text(encoding="utf-8")
    assert Measurement.from_json(result.stdout).schema_ == "raybuild.measure/v1"
    assert result.stderr.splitlines()[-1] == f"wrote {default}"


def test_cli_refuses_zero_runs(tmp_project: TmpProject, run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", str(tmp_project.config_path), "measure", "--runs", "0")
    assert result.exit_code == 2
    assert "--runs" in result.stderr


def test_other_platforms_have_size_rows_and_never_times() -> None:
    document = example_document()
    hello = document.apps["hello"]
    arm64 = hello.size.model_copy(update={"uncompressed": 368_400_000, "compressed": 123_900_000})
    with_arm64 = document.model_copy(
        update={"apps": {"hello": hello.model_copy(update={"platform_sizes": {"linux/arm64": arm64}})}}
    )
    assert summary_rows(with_arm64)[1] == [
        "hello (linux/arm64)",
        "368.4",
        "123.9",
        "-",
        "-",
        "-",
        "-",
        "-",
        "-",
    ]
    # The document carries them (and round-trips); a single-platform app has no platform_sizes key at all.
    assert Measurement.from_json(with_arm64.to_json()).apps["hello"].platform_sizes == {"linux/arm64": arm64}
    assert "platform_sizes" not in document.to_json()


def test_cli_runtime_docker_keeps_the_dockerd_cold_node(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], measured: list[Options], tmp_path: Path
) -> None:
    args = ["--config", str(tmp_project.config_path), "measure", "--out", str(tmp_path / "m.json")]
    assert run_main(*args, "--runtime", "docker").exit_code == 0
    assert run_main(*args).exit_code == 0
    assert [options.runtime for options in measured] == ["docker", "containerd"]
    bad = run_main(*args, "--runtime", "cri-o")
    assert bad.exit_code == 2 and "'containerd', 'docker'" in bad.stderr


def test_the_startup_names_the_runtime_only_when_a_cold_node_pulled() -> None:
    samples = measure_module._Samples(head=[5.0], pull=[4.0], cold=[9.0])
    assert samples.startup("containerd 1.6.20").runtime == "containerd 1.6.20"
    assert measure_module._Samples(head=[5.0]).startup("containerd 1.6.20").runtime is None


@dataclass
class _ColdDaemon:
    version: str

    @property
    def node(self) -> Any:
        engine = RecordingEngine()
        engine.script("info", "ServerVersion", returns=self.version)
        return engine


@pytest.mark.parametrize(("version", "refused"), [("20.10.24", True), ("25.0.3", False)])
def test_a_dockerd_cold_node_older_than_23_cannot_pull_zstd(version: str, refused: bool) -> None:
    node: Any = _ColdDaemon(version)
    assert measure_module._docker_runtime(node, Compression()) == f"docker {version}"
    if refused:
        with pytest.raises(MeasureError, match="cannot pull zstd") as raised:
            measure_module._docker_runtime(node, Compression("zstd", 19))
        assert "--runtime containerd" in (raised.value.hint or "")
    else:
        assert measure_module._docker_runtime(node, Compression("zstd", 19)) == f"docker {version}"


def test_a_document_without_the_new_keys_is_written_as_before() -> None:
    document = example_document()
    data = json.loads(document.to_json())
    assert "compression" not in data["apps"]["hello"]["size"]
    assert "runtime" not in data["apps"]["hello"]["startup"]
    app = document.apps["hello"]
    newer = app.model_copy(
        update={
            "size": app.size.model_copy(update={"compression": "zstd level 19"}),
            "startup": app.startup.model_copy(update={"runtime": "containerd 1.6.20~ds1"}),
        }
    )
    text = document.model_copy(update={"apps": {"hello": newer}}).to_json()
    assert Measurement.from_json(text).apps["hello"].startup.runtime == "containerd 1.6.20~ds1"
    jsonschema.Draft202012Validator(schema()).validate(json.loads(text))
