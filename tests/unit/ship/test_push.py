"""Pushing one image: gzip through `docker push`, zstd through skopeo from the daemon, and the layer check."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild import engine as engine_module
from raybuild.engine import Engine
from raybuild.errors import EngineError, PublishError
from raybuild.registry import Manifest
from raybuild.ship.push import ZSTD_LAYER, Compression, check_layers, push_image, wrong_layers
from tests.unit.fakes import DOCKER, FakeEngine, FakeRunner

LOCAL = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def manifest(*types: str) -> Manifest:
    digests = tuple(f"sha256:{i:064x}" for i in range(len(types)))
    return Manifest("sha256:" + "9" * 64, "m", 1, "sha256:c", (1,) * len(types), digests, types)


def test_gzip_tags_the_target_then_docker_pushes_it() -> None:
    engine, made = FakeEngine(images=[LOCAL]), list[str]()
    target = "registry.example.com/staging/demo:t"
    engine.script("push", output=f"t: digest: sha256:{'a' * 64} size: 1")
    assert push_image(engine, LOCAL, target, Compression(), made=made) == "sha256:" + "a" * 64
    assert engine.calls("tag") == [["tag", LOCAL, target]] and made == [target]
    assert [c.args for c in engine.calls("push")] == [(target,)]


def skopeo_engine() -> tuple[Engine, FakeRunner]:
    """The real engine over a runner that answers skopeo as skopeo does: the digest in --digestfile."""
    engine, runner = Engine(client=DOCKER), FakeRunner()
    engine.runner = runner  # type: ignore[assignment]

    def copy(command: list[str]) -> None:
        Path(command[command.index("--digestfile") + 1]).write_text("sha256:" + "b" * 64 + "\n")

    runner.expect("/usr/bin/skopeo", "copy", effect=copy)
    return engine, runner


def test_zstd_copies_from_the_daemon_with_skopeo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "which", lambda tool: f"/usr/bin/{tool}")
    engine, runner = skopeo_engine()
    made = list[str]()
    target = "127.0.0.1:5000/demo/demo:zstd"
    assert push_image(engine, LOCAL, target, Compression("zstd", 19), made=made) == "sha256:" + "b" * 64
    (command,) = runner.commands
    assert command[:2] == ["/usr/bin/skopeo", "copy"]
    assert command[-2:] == [f"docker-daemon:{LOCAL}", f"docker://{target}"]
    assert command[4:6] == ["--dest-compress-format", "zstd"] and "--dest-compress-level" in command
    assert "--dest-tls-verify=false" in command  # a loopback registry speaks plain HTTP
    assert made == [] and runner.calls(DOCKER.path) == []  # no docker command: no tag to clean up


def test_zstd_to_a_remote_registry_keeps_tls_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "which", lambda tool: f"/usr/bin/{tool}")
    engine, runner = skopeo_engine()
    seen = runner.commands
    push_image(engine, LOCAL, "registry.example.com/ns/demo:z", Compression("zstd", 3))
    assert "--dest-tls-verify=false" not in seen[0]
    assert seen[0][seen[0].index("--dest-compress-level") + 1] == "3"


def test_zstd_without_skopeo_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "which", lambda tool: None)
    with pytest.raises(EngineError, match="skopeo not found") as raised:
        push_image(skopeo_engine()[0], LOCAL, "127.0.0.1:5000/d/x:t", Compression("zstd", 19))
    assert "scripts/setup" in (raised.value.hint or "")


def test_every_zstd_layer_must_be_zstd() -> None:
    zstd = Compression("zstd", 19)
    assert wrong_layers(manifest(ZSTD_LAYER, ZSTD_LAYER), zstd) == []
    mixed = manifest(ZSTD_LAYER, GZIP_LAYER)
    assert wrong_layers(mixed, zstd) == [f"sha256:{1:064x} ({GZIP_LAYER})"]
    with pytest.raises(PublishError, match="1 layer\\(s\\) not zstd"):
        check_layers("r/x:t", mixed, zstd)
    assert wrong_layers(manifest(), zstd)  # no media types at all proves nothing
    assert wrong_layers(manifest(GZIP_LAYER), Compression()) == []
    assert wrong_layers(manifest(ZSTD_LAYER), Compression()) != []


@pytest.mark.parametrize(
    ("local", "source"),
    [("demo", "demo:latest"), ("127.0.0.1:5000/ns/demo", "127.0.0.1:5000/ns/demo:latest"), (LOCAL, LOCAL)],
)
def test_skopeo_gets_a_tag_where_docker_would_assume_latest(
    monkeypatch: pytest.MonkeyPatch, local: str, source: str
) -> None:
    monkeypatch.setattr(engine_module, "which", lambda tool: f"/usr/bin/{tool}")
    engine, runner = skopeo_engine()
    seen = runner.commands
    push_image(engine, local, "127.0.0.1:5000/d/x:t", Compression("zstd", 19))
    assert seen[0][-2] == f"docker-daemon:{source}"
