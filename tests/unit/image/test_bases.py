"""Base images without Docker: the mmdebstrap call, content-addressed names, and `ensure_bases` making only
what is missing, in dependency order, against the fake engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from raybuild import platforms
from raybuild.config import BaseImage, LoadedConfig
from raybuild.errors import EngineError, RaybuildError
from raybuild.image import bases
from raybuild.image.dockerfile import render_base
from raybuild.lock import resolve as locking
from tests.conftest import TmpProject
from tests.unit.fakes import FakeEngine

SNAPSHOT = "20260101T000000Z"
REAL_WHICH = shutil.which


@pytest.fixture
def mmdebstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmdebstrap on PATH (the fake engine never runs it)."""
    monkeypatch.setattr(
        shutil, "which", lambda name: "/usr/bin/mmdebstrap" if name == "mmdebstrap" else REAL_WHICH(name)
    )


@pytest.fixture
def tiny_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in uv binary, so importing the uv image does not tar the real 40 MB one."""
    binary = tmp_path / "uv"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setattr(locking, "uv_binary", lambda: str(binary))


def all_refs(config: LoadedConfig) -> list[str]:
    """Every image ensure_bases makes for cpu and gpu, in the order it must make them."""
    cpu = config.config.base.cpu
    return [
        bases.uv_image(),
        bases.rootfs(cpu, "builder").ref,
        bases.builder_ref(config),
        bases.rootfs(cpu, "runtime").ref,
        bases.base_ref(config, "cpu"),
        bases.base_ref(config, "gpu"),
    ]


# -- mmdebstrap -------------------------------------------------------------------------------------------


def test_mmdebstrap_makes_a_minimal_rootfs_without_docs_or_perl() -> None:
    root = bases.rootfs(BaseImage(), "runtime")
    command = bases.mmdebstrap_command(root, Path("/tmp/rootfs.tar"))
    assert command[:3] == [
        "mmdebstrap",
        "--variant=essential",
        "--include=python3-minimal,libpython3-stdlib,bash,wget,ca-certificates,libstdc++6",
    ]
    assert command[-3:] == ["bookworm", "/tmp/rootfs.tar", "http://deb.debian.org/debian"]
    for folder in ("man", "doc", "locale", "info", "lintian", "common-licenses"):
        assert f"--dpkgopt=path-exclude=/usr/share/{folder}/*" in command
    # dpkg applies filters in order: the copyright files are kept only if included after the doc exclude.
    keep = command.index("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    assert keep > command.index("--dpkgopt=path-exclude=/usr/share/doc/*")
    assert (
        '--customize-hook=chroot "$1" dpkg --purge --force-depends --force-remove-essential usrmerge '
        "libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl libperl5.36 perl-modules-5.36 "
        "perl-base"
    ) in command
    assert (
        '--customize-hook=rm -rf "$1"/usr/lib/x86_64-linux-gnu/gconv "$1"/var/lib/apt/lists/* '
        '"$1"/var/cache/* "$1"/var/log/*'
    ) in command
    assert not any(arg.startswith("--aptopt") for arg in command)


def test_mmdebstrap_from_a_snapshot_accepts_its_expired_release_files() -> None:
    settings = BaseImage(suite="trixie", snapshot=SNAPSHOT)
    command = bases.mmdebstrap_command(bases.rootfs(settings, "builder"), Path("/out.tar"))
    assert command[-3:] == ["trixie", "/out.tar", f"http://snapshot.debian.org/archive/debian/{SNAPSHOT}"]
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in command
    assert command[2].endswith(",binutils")


# -- names ------------------------------------------------------------------------------------------------


def test_rootfs_ref_is_a_hash_of_what_goes_into_it() -> None:
    default = bases.rootfs(BaseImage(), "runtime")
    assert default.ref.startswith("raybuild/rootfs-runtime:bookworm-")
    assert default == bases.rootfs(BaseImage(), "runtime")
    variants = [
        default.ref,
        bases.rootfs(BaseImage(), "builder").ref,
        bases.rootfs(BaseImage(suite="trixie"), "runtime").ref,
        bases.rootfs(BaseImage(snapshot=SNAPSHOT), "runtime").ref,
        bases.rootfs(BaseImage(mirror="http://mirror.example/debian"), "runtime").ref,
    ]
    assert len(set(variants)) == len(variants)


def test_an_image_source_uses_the_registry_image_and_installs_packages(tmp_project: TmpProject) -> None:
    root = bases.rootfs(BaseImage(source="image", image="debian:trixie-slim"), "runtime")
    assert (root.ref, root.bootstrapped) == ("debian:trixie-slim", False)

    bootstrapped = tmp_project.load()
    tmp_project.append_config('[base.cpu]\nsource = "image"\n')
    from_image = tmp_project.load()
    spec = bases.base_spec(from_image, "cpu")
    assert (spec.rootfs, spec.install_packages, spec.packages) == (
        "debian:bookworm-slim",
        True,
        bases.RUNTIME_PACKAGES,
    )
    text = render_base(spec)
    assert text.count("FROM debian:bookworm-slim") == 1
    assert "apt-get install -y --no-install-recommends " + " ".join(bases.RUNTIME_PACKAGES) in text
    assert "apt-get" not in render_base(bases.base_spec(bootstrapped, "cpu"))
    assert bases.base_ref(from_image, "cpu") != bases.base_ref(bootstrapped, "cpu")
    assert bases.builder_ref(from_image) != bases.builder_ref(bootstrapped)


def test_the_gpu_base_builds_on_the_cpu_base_unless_a_cuda_image_is_set(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert bases.base_spec(config, "gpu").parent == bases.base_ref(config, "cpu")
    tmp_project.append_config('[base.gpu]\ncuda_runtime_image = "nvidia/cuda:12.9.1-runtime-ubuntu24.04"\n')
    assert bases.base_spec(tmp_project.load(), "gpu").parent == "nvidia/cuda:12.9.1-runtime-ubuntu24.04"


# -- ensure_bases -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_ensure_bases_makes_every_missing_image_in_order(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    engine = FakeEngine()
    engine.runner.expect("mmdebstrap")
    refs = bases.ensure_bases(config, engine, ("cpu", "gpu"))
    expected = all_refs(config)
    assert engine.created == expected
    assert refs == {"builder": expected[2], "cpu": expected[4], "gpu": expected[5]}
    assert engine.verbs()[0] == "ping"
    bootstraps = engine.runner.calls("mmdebstrap")
    assert [c[-3] for c in bootstraps] == ["bookworm", "bookworm"]
    assert [c[2].endswith(",binutils") for c in bootstraps] == [True, False]
    assert engine.calls("import_tarball")[0]["changes"] == ["LABEL io.raybuild.role=uv"]
    # Each image is built FROM the one made before it.
    builder, cpu, gpu = engine.dockerfiles
    assert f"FROM {expected[1]}" in builder and f"COPY --from={expected[0]} /uv" in builder
    assert f"FROM {expected[3]}" in cpu
    assert f"FROM {expected[4]}" in gpu


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_ensure_bases_makes_nothing_that_exists(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    engine = FakeEngine(images=all_refs(config))
    bases.ensure_bases(config, engine, ("cpu", "gpu"))
    assert engine.created == []
    assert engine.builds() == []
    assert engine.runner.calls("mmdebstrap") == []


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_ensure_bases_makes_only_the_missing_ones(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    refs = all_refs(config)
    engine = FakeEngine(images=refs[:4])
    engine.runner.expect("mmdebstrap")
    bases.ensure_bases(config, engine, ("gpu",))  # the GPU base needs the CPU base
    assert engine.created == refs[4:]
    cpu_only = FakeEngine(images=refs[:4])
    cpu_only.runner.expect("mmdebstrap")
    bases.ensure_bases(config, cpu_only, ("cpu",))
    assert cpu_only.created == [refs[4]]


@pytest.mark.usefixtures("tiny_uv")
def test_a_missing_mmdebstrap_is_a_clear_error(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    config = tmp_project.load()
    engine = FakeEngine()
    with pytest.raises(RaybuildError) as raised:
        bases.ensure_bases(config, engine, ("cpu",))
    builder_rootfs = bases.rootfs(config.config.base.cpu, "builder").ref
    assert str(raised.value) == f"cannot bootstrap {builder_rootfs}: mmdebstrap is not installed"
    assert raised.value.hint is not None and 'source = "image"' in raised.value.hint
    assert engine.created == [bases.uv_image()]


@pytest.mark.usefixtures("tiny_uv")
def test_an_image_source_needs_no_mmdebstrap(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    tmp_project.append_config('[base.cpu]\nsource = "image"\n')
    config = tmp_project.load()
    engine = FakeEngine()
    bases.ensure_bases(config, engine, ("cpu",))
    assert engine.created == [bases.uv_image(), bases.builder_ref(config), bases.base_ref(config, "cpu")]
    assert "FROM debian:bookworm-slim" in engine.dockerfiles[0]


def test_ensure_bases_stops_when_the_daemon_is_down(tmp_project: TmpProject) -> None:
    engine = FakeEngine()
    engine.script("ping", raises=EngineError("the Docker daemon is not reachable"))
    with pytest.raises(EngineError, match="not reachable"):
        bases.ensure_bases(tmp_project.load(), engine)
    assert engine.verbs() == ["ping"]


# -- other platforms ----------------------------------------------------------------------------------------


def test_the_default_platforms_names_do_not_move_and_arm64_gets_its_own() -> None:
    amd64 = bases.rootfs(BaseImage(), "runtime")
    arm64 = bases.rootfs(BaseImage(), "runtime", platforms.ARM64)
    assert amd64 == bases.rootfs(BaseImage(), "runtime", platforms.DEFAULT)
    assert not amd64.ref.endswith("-arm64") and arm64.ref.endswith("-arm64")
    assert arm64.ref.rsplit("-", 2)[-2] != amd64.ref.rsplit("-", 1)[-1]  # its own content hash too
    command = bases.mmdebstrap_command(arm64, Path("/tmp/rootfs.tar"))
    assert command[:2] == ["mmdebstrap", "--arch=arm64"]
    assert any("/usr/lib/aarch64-linux-gnu/gconv" in arg for arg in command)
    assert not any("x86_64" in arg for arg in command)


def test_a_registry_rootfs_is_refused_for_another_platform() -> None:
    with pytest.raises(RaybuildError, match='source = "image" gives linux/amd64 bases only'):
        bases.rootfs(BaseImage(source="image"), "runtime", platforms.ARM64)


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_arm64_bases_are_loaded_with_their_architecture_and_built_for_it(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_project.load()
    engine = FakeEngine()
    monkeypatch.setattr(platforms, "emulation_problem", lambda name: None)
    archives: list[tuple[str, str]] = []

    def fake_archive(rootfs: Path, out: Path, ref: str, platform: platforms.Platform, labels: object) -> str:
        archives.append((ref, platform.architecture))
        return "sha256:" + "0" * 64

    monkeypatch.setattr(bases, "write_archive", fake_archive)
    monkeypatch.setattr(bases, "_import", _recording_import(bases._import, archives))

    def download(command: list[str]) -> None:  # the uv download leaves the arm64 binary at bin/uv
        target = Path(command[command.index("--target") + 1])
        (target / "bin").mkdir(parents=True)
        (target / "bin" / "uv").write_bytes(b"\x7fELF")

    engine.runner.expect("*", "pip", "install", effect=download)
    engine.runner.expect("mmdebstrap")
    engine.script("load")
    refs = bases.ensure_bases(config, engine, ("cpu",), platform=platforms.ARM64)
    assert refs["cpu"] == bases.base_ref(config, "cpu", platforms.ARM64)
    assert refs["cpu"].endswith("-arm64") and refs["builder"].endswith("-arm64")
    # The uv image, the builder rootfs and the runtime rootfs: each loaded as an arm64 image.
    cpu = config.config.base.cpu
    assert archives == [
        (bases.uv_image(platforms.ARM64), "arm64"),
        (bases.rootfs(cpu, "builder", platforms.ARM64).ref, "arm64"),
        (bases.rootfs(cpu, "runtime", platforms.ARM64).ref, "arm64"),
    ]
    assert not engine.calls("import_tarball")
    assert len(engine.calls("load")) == 3
    (downloaded,) = engine.runner.calls("*", "pip", "install")
    assert "aarch64-manylinux_2_28" in downloaded and f"uv=={bases.uv_version()}" in downloaded
    assert [b["platform"] for b in engine.builds()] == ["linux/arm64", "linux/arm64"]


def _recording_import(real: object, archives: list[tuple[str, str]]) -> object:
    def run(engine: FakeEngine, tarball: Path, ref: str, platform: str, labels: dict[str, str]) -> None:
        tarball.write_bytes(b"")  # what mmdebstrap or the uv download would have left
        assert callable(real)
        real(engine, tarball, ref, platform, labels)
        engine.images[ref] = ref  # `docker load` tagged it

    return run


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_arm64_without_emulation_is_one_error_naming_the_fix(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platforms, "emulation_problem", lambda name: "binfmt_misc is not mounted")
    monkeypatch.setattr(bases, "ensure_uv_image", lambda *args: "uv")
    with pytest.raises(RaybuildError) as caught:
        bases.ensure_bases(tmp_project.load(), FakeEngine(), ("cpu",), platform=platforms.ARM64)
    assert "binfmt_misc is not mounted" in caught.value.message
    assert caught.value.hint is not None and "scripts/setup" in caught.value.hint
