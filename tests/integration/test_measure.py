"""`raybuild measure` of the bundled hello image, end to end: registry push, dive, warm and cold node.

One run only: the test checks the document and its arithmetic, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jsonschema
import pytest

from raybuild.config import LoadedConfig
from raybuild.engine import Engine
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.registry import HttpRegistry
from raybuild.state import project_id
from raybuild.verify.coldstart import ColdNode, measure_labels
from raybuild.verify.measure import MeasureReport, Options, measure
from raybuild.verify.results import Measurement, schema

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.fixture(scope="module")
def hello_ref(engine: Engine, bundled: LoadedConfig) -> str:
    if not HttpRegistry(bundled.project.registry.split("/", 1)[0]).reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but no registry on 127.0.0.1:5000; scripts/setup should start it", pytrace=False
            )
        pytest.skip("no registry on 127.0.0.1:5000")
    # Cached after `raybuild build`: only checks that the image is current.
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    ca = default_ca_bundle() or (host_ca if host_ca.is_file() else None)
    images = Builder(bundled, engine, ca_bundle=ca).build(bundled.select(("hello",)))
    return next(str(image.ref) for image in images if image.app == "hello")


@pytest.fixture(scope="module")
def report(engine: Engine, bundled: LoadedConfig, hello_ref: str) -> MeasureReport:
    return measure(bundled, bundled.select(("hello",)), engine, Options(runs=1, timeout=240))


def test_document_matches_the_published_schema(report: MeasureReport) -> None:
    text = report.measurement.to_json()
    jsonschema.validate(json.loads(text), schema())
    assert Measurement.from_json(text) == report.measurement
    assert report.measurement.runs == 1
    assert list(report.measurement.apps) == ["hello"]


def test_sizes_come_from_the_registry_and_match_the_image(
    engine: Engine, report: MeasureReport, hello_ref: str
) -> None:
    hello = report.measurement.apps["hello"]
    size = hello.size
    assert hello.image == hello_ref
    assert report.compressed_method["hello"] == "registry manifest"
    inspected = engine.inspect(hello_ref)
    assert size.uncompressed == inspected["Size"] > 0
    assert 0 < size.compressed < size.uncompressed
    assert [layer.digest for layer in size.layers] == inspected["RootFS"]["Layers"]
    assert sum(layer.size for layer in size.layers) == size.uncompressed
    assert sum(layer.compressed or 0 for layer in size.layers) == size.compressed
    assert all(layer.compressed is not None and layer.compressed > 0 for layer in size.layers)
    # Every layer is named by the instruction that made it; the Ray layer (copied from the build stage, its
    # file times clamped) is the largest.
    assert all(layer.created_by for layer in size.layers)
    ray_layer = max(size.layers, key=lambda layer: layer.size)
    assert ray_layer.created_by.startswith("COPY /out/") and ray_layer.size > 200_000_000
    # sklearn is built from the same base and Ray layers.
    assert 0 < size.shared_bytes < size.uncompressed
    assert size.largest_packages[0].name == "ray"
    assert size.prune_saved.get("ray-java-jars", 0) > 0
    assert size.dive is not None and 0 < size.dive.efficiency <= 1


def test_every_phase_is_timed_once_and_t_cold_is_pull_plus_cold_head(report: MeasureReport) -> None:
    startup = report.measurement.apps["hello"].startup
    for name in ("t_head", "t_worker", "t_serve", "t_pull", "t_cold"):
        value = getattr(startup, name)
        assert value is not None, name
        assert len(value.samples) == 1 and value.median > 0, name
    assert startup.t_cold is not None and startup.t_pull is not None
    (cold_head,) = report.cold_head["hello"]
    assert startup.t_cold.median == pytest.approx(startup.t_pull.median + cold_head, abs=0.002)


def test_no_measure_container_is_left(engine: Engine, bundled: LoadedConfig, report: MeasureReport) -> None:
    labels = measure_labels(project_id(bundled))
    assert engine.container_ids(labels) == []
    node = ColdNode(engine, project_id(bundled))
    if node.running():
        assert node.node.container_ids(labels) == []
    assert engine.network_ids(labels) == []


def test_the_cold_node_is_a_fresh_containerd_that_leaves_nothing_behind(report: MeasureReport) -> None:
    startup = report.measurement.apps["hello"].startup
    assert startup.runtime is not None and startup.runtime.startswith("containerd ")
    assert report.measurement.apps["hello"].size.compression == "gzip"
    folders = list(Path(tempfile.gettempdir()).glob("raybuild-containerd-*"))
    assert folders == [], "the cold containerd's folder must be removed"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert b"raybuild-containerd-" not in cmdline.read_bytes(), "a cold containerd still runs"
        except OSError:  # the process ended while we looked
            continue
