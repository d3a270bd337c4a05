"""One digest per content-addressed tag, on every machine: a second, empty Docker engine (a fresh CI runner)
against the real registry on 127.0.0.1:5000, holding what the main engine published.

- the fresh engine rebuilds nothing: it pulls every image, publish pushes nothing, and render gives the
  same bytes as on the machine that built them;
- a new app built on the fresh engine sits on the published head image: its base and Ray layers have the
  published digests;
- publish refuses to move a tag the registry holds as another image, and --force overwrites it.

Each test publishes under a namespace of its own, from copies of the bundled project.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image import bases
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.manifest.render import render_manifest
from raybuild.records import load_build_record, load_publish_record
from raybuild.reference import ImageRef
from raybuild.registry import HttpRegistry, Manifest
from raybuild.ship.publish import Publisher
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.verify.coldstart import ColdNode
from tests.integration.conftest import REPO_ROOT, copy_project

pytestmark = [pytest.mark.docker, pytest.mark.registry]

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _ca() -> Path | None:
    return default_ca_bundle() or (HOST_CA if HOST_CA.is_file() else None)


def project(root: Path, namespace: str) -> LoadedConfig:
    """A copy of the bundled project that publishes to ``namespace``; no .raybuild records, as on a runner."""
    copy_project(REPO_ROOT, root)
    path = root / "raybuild.toml"
    path.write_text(path.read_text().replace('"127.0.0.1:5000/raybuild-test"', f'"{namespace}"'))
    return load_config(path)


@pytest.fixture
def fresh_engine(engine: Engine) -> Iterator[Engine]:
    """A second dockerd with an empty image store and build cache: a fresh CI runner."""
    node = ColdNode(
        engine,
        f"test-digests-{os.getpid()}",  # the project id its containers carry
        root=Path(f"/var/lib/raybuild/test-digests-{os.getpid()}"),
        bridge="rbtestdigests",
        bridge_cidr="198.51.100.49/29",
    )
    try:
        node.start()
    except Exception as exc:  # not root, no dockerd: this machine cannot be a second runner
        node.stop(remove=True)
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but a second dockerd did not start: {exc}", pytrace=False)
        pytest.skip(f"a second dockerd did not start: {exc}")
    # Its bridge has no NAT: RUN steps reach the package index through the host's network.
    yield dataclasses.replace(node.node, build_network="host")
    node.stop(remove=True)


def manifest_of(ref: str) -> Manifest:
    parsed = ImageRef.parse(ref)
    found = HttpRegistry(parsed.host).manifest(parsed.path, parsed.api_reference)
    assert found is not None, f"{ref} is not in the registry"
    return found


def add_app(config: LoadedConfig, name: str) -> LoadedConfig:
    """A new app with hello's packages (its lockfile applies unchanged) and code of its own."""
    root = config.root
    shutil.copytree(root / "apps" / "hello", root / "apps" / name)
    code = root / "apps" / name / "hello_app.py"
    code.write_text(code.read_text().replace('f"hello, {name}"', 'f"hello again, {name}"'))
    shutil.copy(
        config.lockfile(next(a for a in config.apps if a.name == "hello")), root / "lockfiles" / f"{name}.txt"
    )
    with config.path.open("a") as toml:
        toml.write(
            f'\n[[apps]]\nname = "{name}"\npath = "apps/{name}"\n'
            f'requirements = "apps/{name}/requirements.in"\nimport_path = "hello_app:app"\n'
            f'route_prefix = "/{name}"\n\n[[apps.deployments]]\nname = "Hello"\n'
        )
    return load_config(config.path)


def test_a_fresh_engine_rebuilds_nothing_and_a_new_app_shares_the_published_ray_layer(
    engine: Engine, fresh_engine: Engine, namespace: str, tmp_path: Path
) -> None:
    # The main branch's machine: build, publish, render.
    main = project(tmp_path / "main", namespace)
    Builder(main, engine, ca_bundle=_ca()).build(main.select(("hello",)))
    assert {r.status for r in Publisher(main, engine).publish(("hello",))} == {"pushed"}
    rendered = render_manifest(main, load_publish_record(main)).text
    built_on_main = load_build_record(main)

    # A fresh runner: the same checkout, no records, an empty engine.
    runner = project(tmp_path / "runner", namespace)
    built = Builder(runner, fresh_engine, ca_bundle=_ca()).build(runner.select(("hello",)))
    assert [(b.app, b.pulled) for b in built] == [(HEAD_KEY, True), ("hello", True)]
    assert {b.app: b.image_id for b in built} == {k: v.image_id for k, v in built_on_main.items()}
    assert not fresh_engine.image_exists(bases.builder_ref(runner))  # nothing built, so no base either
    record = publish_record_path(runner)
    assert {r.status for r in Publisher(runner, fresh_engine).publish(("hello",))} == {"skipped"}
    assert render_manifest(runner, load_publish_record(runner)).text == rendered
    before = (record.read_bytes(), record.stat().st_ino)
    assert {r.status for r in Publisher(runner, fresh_engine).publish(("hello",))} == {"skipped"}
    assert (record.read_bytes(), record.stat().st_ino) == before  # nothing pushed: the record as it was

    # A new app, built on that runner: it sits on the published head image, byte for byte.
    runner = add_app(runner, "hello-again")
    built = Builder(runner, fresh_engine, ca_bundle=_ca()).build(runner.select(("hello-again",)))
    head, new = built
    assert head.app == HEAD_KEY and not new.cached
    assert not fresh_engine.image_exists(bases.base_ref(runner, "cpu"))  # the builder image was enough
    Publisher(runner, fresh_engine).publish(("hello-again",))
    published_head, published_new = manifest_of(str(head.ref)), manifest_of(str(new.ref))
    shared = len(published_head.layer_digests)
    assert published_new.layer_digests[:shared] == published_head.layer_digests
    assert len(published_new.layer_digests) == shared + 2  # its packages and its code


def test_publish_refuses_to_move_a_tag_and_force_overwrites_it(
    engine: Engine, namespace: str, tmp_path: Path, run_main: Callable[..., Any]
) -> None:
    config = project(tmp_path / "project", namespace)
    built = {b.app: b for b in Builder(config, engine, ca_bundle=_ca()).build(config.select(("hello",)))}
    hello, head = built["hello"], built[HEAD_KEY]
    # Another machine's image under hello's tag: the head image, pushed as hello.
    engine.tag(str(head.ref), str(hello.ref))
    engine.push(str(hello.ref))
    engine.tag(hello.image_id, str(hello.ref))
    taken = manifest_of(str(hello.ref))

    refused = run_main("--config", str(config.path), "publish", "hello")
    assert refused.exit_code == 1
    assert (
        f"error: refusing to move a content-addressed tag: {hello.ref} is {taken.digest} "
        f"(image {head.image_id}) in the registry, but image {hello.image_id} here"
    ) in refused.stderr
    assert "Traceback" not in refused.stderr
    assert manifest_of(str(hello.ref)).digest == taken.digest
    assert not publish_record_path(config).exists()

    forced = run_main("--config", str(config.path), "publish", "hello", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert f"warning: --force: overwriting {hello.ref} is {taken.digest}" in forced.stderr
    assert manifest_of(str(hello.ref)).config_digest == hello.image_id
