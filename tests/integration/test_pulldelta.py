"""The upgrade pull delta on real images: what a node that ran the baseline's image downloads.

Sizes only (no containers started): the project copy's hello and sklearn are built (cached layers), measured,
changed, rebuilt and measured again. Compressed sizes are the registry's, after a push to the copy's own
namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.verify.measure import Options, measure
from raybuild.verify.pulldelta import pull_deltas
from raybuild.verify.results import Measurement

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.network]


def _build(engine: Engine, config: LoadedConfig, *apps: str) -> None:
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    ca = default_ca_bundle() or (host_ca if host_ca.is_file() else None)
    Builder(config, engine, ca_bundle=ca).build(config.select(apps))


def _sizes(engine: Engine, config: LoadedConfig, *apps: str) -> Measurement:
    return measure(config, config.select(apps), engine, Options(startup=False)).measurement


@pytest.fixture
def project(engine: Engine, registry: str, project_copy: Path) -> LoadedConfig:
    path = project_copy / "raybuild.toml"
    # A namespace of this test's own: its measure pushes never meet another test's.
    namespace = f"{registry}/rb16-pulldelta-{uuid.uuid4().hex[:8]}"
    path.write_text(path.read_text().replace("127.0.0.1:5000/raybuild-test", namespace))
    return load_config(path)


def test_a_code_change_costs_one_small_layer_and_a_dependency_bump_never_the_ray_layer(
    engine: Engine, project: LoadedConfig, run_main: Callable[..., Any]
) -> None:
    _build(engine, project, "hello", "sklearn")
    baseline = _sizes(engine, project, "hello", "sklearn")
    ray = max(baseline.apps["hello"].size.layers, key=lambda layer: layer.size)
    assert ray.digest in {layer.digest for layer in baseline.apps["sklearn"].size.layers}

    code = project.root / "apps" / "hello" / "hello_app.py"
    code.write_text(code.read_text() + "\n# a code-only change\n")
    _build(engine, project, "hello")
    after_code = _sizes(engine, project, "hello")
    (delta,) = pull_deltas(baseline, after_code)
    assert delta.status == "changed" and len(delta.layers) == 1
    assert delta.layers[0].created_by.startswith("COPY")
    assert 0 < delta.download < 1_000_000 < delta.total

    requirements = project.root / "apps" / "hello" / "requirements.in"
    requirements.write_text(requirements.read_text() + "six\n")
    locked = run_main("--config", str(project.path), "lock", "hello")
    assert locked.exit_code == 0, locked.stderr
    _build(engine, project, "hello")
    after_bump = _sizes(engine, project, "hello")
    (delta,) = pull_deltas(baseline, after_bump)
    new = {layer.digest for layer in delta.layers}
    assert delta.layers and ray.digest not in new
    # Nothing the head image holds (base, Ray) is downloaded again: only the app's own layers.
    assert not new & {layer.digest for layer in baseline.apps["sklearn"].size.layers}
    assert delta.download < 0.1 * delta.total
