"""Publishing to the real registry on 127.0.0.1:5000: push, pull back by digest, skip, and a registry down.

Each test publishes under a namespace of its own and works in a copy of the project, so the repository's
.raybuild records are never touched. The hello build is cached, so building it in the copy is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from raybuild.cli import publish as publish_cli
from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder
from raybuild.records import PublishRecord, load_build_record
from raybuild.reference import ImageRef
from raybuild.registry import OCI_MANIFEST, HttpRegistry, fallback_tag
from raybuild.ship.publish import Publisher
from raybuild.ship.push import ZSTD_LAYER
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.tags import published_tag, repository_name
from tests.integration.docker_cli import docker

pytestmark = [pytest.mark.docker, pytest.mark.registry]

DOWN = "127.0.0.1:5999"


@pytest.fixture
def project(engine: Engine, project_copy: Path) -> LoadedConfig:
    """The project copy with hello (and so the head image) built: its build record lives in the copy."""
    config = load_config(project_copy / "raybuild.toml")
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    Builder(config, engine, ca_bundle=ca if ca.is_file() else None).build(config.select(("hello",)))
    return config


@pytest.fixture
def publish(project: LoadedConfig, run_main: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: run_main("--config", str(project.path), "publish", *args)


def test_publish_round_trip_then_skip(
    engine: Engine, project: LoadedConfig, namespace: str, publish: Callable[..., Any]
) -> None:
    result = publish("hello", "--registry", namespace, "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["app"]: row for row in json.loads(result.stdout)}
    assert {key: row["status"] for key, row in rows.items()} == {HEAD_KEY: "pushed", "hello": "pushed"}
    assert "digest: sha256:" in result.stderr  # docker's progress went to stderr, the JSON to stdout

    built = load_build_record(project)
    record = PublishRecord.load(publish_record_path(project))
    assert record is not None and set(record.images) == {HEAD_KEY, "hello"}
    for key, row in rows.items():
        tag = built[key].ref.tag_or_latest
        assert row["reference"] == f"{namespace}/{repository_name(key)}:{tag}"
        assert record.images[key].pinned == row["pinned"]
        assert 0 < row["compressed_size"] < row["size"]
        # Pull by digest with the pushed tag gone: the registry hands back exactly the built image.
        engine.remove_image(row["reference"])
        assert not engine.image_exists(row["reference"])
        docker(engine, "pull", row["pinned"], what=f"docker pull {row['pinned']}")
        assert engine.inspect(row["pinned"])["Id"] == built[key].image_id

    before = publish_record_path(project).read_bytes()
    again = publish("hello", "--registry", namespace, "--json")
    assert again.exit_code == 0, again.stderr
    rows_again = {row["app"]: row for row in json.loads(again.stdout)}
    assert {row["status"] for row in rows_again.values()} == {"skipped"}
    assert {k: r["digest"] for k, r in rows_again.items()} == {k: r["digest"] for k, r in rows.items()}
    assert "The push refers to" not in again.stderr
    assert publish_record_path(project).read_bytes() == before


def test_registry_down_fails_clearly_and_keeps_the_record(
    project: LoadedConfig,
    namespace: str,
    publish: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert publish("hello", "--registry", namespace).exit_code == 0
    before = publish_record_path(project).read_bytes()
    sleeps: list[float] = []
    monkeypatch.setattr(publish_cli, "Publisher", partial(Publisher, sleep=sleeps.append))

    result = publish("hello", "--registry", f"{DOWN}/raybuild")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"error: registry {DOWN} is not reachable (connection refused, 4 attempts)" in result.stderr
    assert f"curl http://{DOWN}/v2/" in result.stderr
    assert "Traceback" not in result.stderr
    assert sleeps == [1.0, 2.0, 4.0]
    assert publish_record_path(project).read_bytes() == before


def test_zstd_layers_of_two_apps_keep_one_ray_layer_and_their_sboms(
    engine: Engine, project: LoadedConfig, namespace: str, publish: Callable[..., Any]
) -> None:
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    Builder(project, engine, ca_bundle=ca if ca.is_file() else None).build(project.select(("sklearn",)))
    project.path.write_text(project.path.read_text() + '\n[publish]\ncompression = "zstd"\n')
    config = load_config(project.path)

    result = publish("hello", "sklearn", "--registry", namespace, "--offline", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["app"]: row for row in json.loads(result.stdout)}
    registry = HttpRegistry(namespace.split("/", 1)[0])
    built, layers = load_build_record(config), {}
    for key, row in rows.items():
        # A tag of its own: the gzip tag of the same build is never moved.
        assert row["reference"].rsplit(":", 1)[1] == published_tag(config, built[key].ref.tag_or_latest)
        assert row["reference"].rsplit(":", 1)[1] != built[key].ref.tag_or_latest
        repository = ImageRef.parse(row["reference"]).path
        manifest = registry.manifest(repository, row["digest"])
        assert manifest is not None and manifest.media_type == OCI_MANIFEST
        assert set(manifest.layer_media_types) == {ZSTD_LAYER}
        assert row["sbom"], "the SBOM is attached to the zstd manifest"
        assert registry.manifest_body(repository, fallback_tag(row["digest"])) is not None
        layers[key] = manifest.layer_digests
    # zstd output is deterministic: the head's base and Ray layers have one digest in every app image, so
    # a node that runs one app pulls only the other's own layers.
    head = layers[HEAD_KEY]
    assert layers["hello"][: len(head)] == layers["sklearn"][: len(head)] == head

    again = publish("hello", "sklearn", "--registry", namespace, "--offline", "--json")
    assert again.exit_code == 0, again.stderr
    assert {row["status"] for row in json.loads(again.stdout)} == {"skipped"}
