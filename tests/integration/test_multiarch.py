"""linux/arm64 beside linux/amd64, from this amd64 machine: lock, build, smoke-test, publish one index, pull.

One project copy with `platforms = ["linux/amd64", "linux/arm64"]` goes through the whole flow for hello,
in one test: every step needs the previous one's output, and the arm64 steps run under qemu (an arm64 base
bootstraps in minutes on a fresh machine, the arm64 head builds in one or two). arm64 is exercised only
where it must be: the amd64 images are the ones every other test builds, and come from the cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raybuild import platforms
from raybuild.config import load_config
from raybuild.engine import Engine
from raybuild.image.build import stage_context
from raybuild.records import PublishRecord, load_build_record
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.tags import image_ref
from tests.integration.conftest import _unavailable
from tests.integration.docker_cli import docker

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.network]

BOTH = 'platforms = ["linux/amd64", "linux/arm64"]'
CA = Path("/etc/ssl/certs/ca-certificates.crt")
MACHINE = "import platform, ray; print(platform.machine(), ray.__version__)"


@pytest.fixture
def emulation() -> None:
    problem = platforms.emulation_problem(platforms.ARM64)
    if problem is not None:
        _unavailable(f"arm64 cannot run here: {problem}")


def _with_both_platforms(project_copy: Path) -> Path:
    config = project_copy / "raybuild.toml"
    text = config.read_text()
    config.write_text(text.replace("[project]\n", f"[project]\n{BOTH}\n", 1))
    return config


def _elf_is_stripped_aarch64(data: bytes) -> bool:
    e_machine = int.from_bytes(data[18:20], "little")
    return e_machine == 0xB7 and b".symtab" not in data and b".debug_info" not in data


@pytest.mark.usefixtures("emulation")
def test_hello_for_amd64_and_arm64_under_one_tag(
    engine: Engine,
    project_copy: Path,
    namespace: str,
    run_main: Callable[..., Any],
    tmp_path: Path,
) -> None:
    path = _with_both_platforms(project_copy)

    def raybuild(*args: str) -> Any:
        return run_main("--config", str(path), *args)

    # -- lock: one lockfile per platform; the amd64 ones are the bundled project's, unchanged -----------
    before = (project_copy / "lockfiles" / "hello.txt").read_bytes()
    result = raybuild("lock", "hello")
    assert result.exit_code == 0, result.stderr
    assert (project_copy / "lockfiles" / "hello.txt").read_bytes() == before
    assert "aarch64-manylinux" in (project_copy / "lockfiles" / "hello.linux-arm64.txt").read_text()
    assert raybuild("lock", "--check", "hello").exit_code == 0

    # A package without an arm64 wheel is refused at lock time, naming both; no lockfile changes.
    requirements = project_copy / "apps" / "hello" / "requirements.in"
    kept = requirements.read_text()
    requirements.write_text(kept + "docopt==0.6.2\n")
    refused = raybuild("lock", "hello")
    assert refused.exit_code != 0
    assert "error: app 'hello': docopt has no wheel for linux/arm64" in refused.stderr
    assert (project_copy / "lockfiles" / "hello.txt").read_bytes() == before
    requirements.write_text(kept)

    # -- build: an image per platform, and one tag for both --------------------------------------------
    args = ["build", "hello", *(["--ca-bundle", str(CA)] if CA.is_file() else [])]
    result = raybuild(*args)
    assert result.exit_code == 0, result.stderr
    config = load_config(path)
    record = load_build_record(config)
    hello = record["hello"]
    assert hello.platforms == ("linux/amd64", "linux/arm64")
    assert record[HEAD_KEY].platforms == ("linux/amd64", "linux/arm64")
    amd64, arm64 = hello.platform_ref("linux/amd64"), hello.platform_ref("linux/arm64")
    assert amd64 is not None and arm64 is not None and str(arm64).endswith("-arm64")
    assert engine.inspect(str(arm64))["Architecture"] == "arm64"
    assert engine.inspect(str(amd64))["Architecture"] == "amd64"
    # Adding a platform moved no tag: the amd64 image is the one a single-platform project gets.
    (app,) = config.select(("hello",))
    context = tmp_path / "context"
    context.mkdir()
    assert str(amd64) == image_ref(config, app, stage_context(config, app, context))
    # Ray's binaries were stripped with the arm64 binutils, and are arm64's.
    copy = tmp_path / "raylet.so"
    container = docker(engine, "create", str(arm64)).output.strip().splitlines()[-1]
    try:
        site = f"/opt/ray/venv/lib/python{config.project.python}/site-packages"
        docker(engine, "cp", f"{container}:{site}/ray/_raylet.so", str(copy))
    finally:
        docker(engine, "rm", container, check=False)
    assert _elf_is_stripped_aarch64(copy.read_bytes())

    # -- smoke test under emulation --------------------------------------------------------------------
    result = raybuild("test", "hello", "--platform", "linux/arm64", "--json")
    assert result.exit_code == 0, result.stderr
    smoke = json.loads(result.stdout)
    assert (smoke["platform"], smoke["emulated"], smoke["status"]) == ("linux/arm64", True, 200)
    assert smoke["image"] == str(arm64)

    # -- publish: each platform's image, then the index under the one tag ------------------------------
    result = raybuild("publish", "hello", "--registry", namespace, "--no-sbom", "--json")
    assert result.exit_code == 0, result.stderr
    published = PublishRecord.load(publish_record_path(config))
    assert published is not None
    index = published.images["hello"]
    assert index.reference.tag_or_latest == hello.ref.tag_or_latest
    pinned = index.pinned
    # An amd64 node pulling the index gets the amd64 image; --platform linux/arm64 gets the arm64 one.
    try:
        docker(engine, "pull", "-q", pinned)
        assert engine.inspect(pinned)["Architecture"] == "amd64"
        ran = docker(engine, "run", "--rm", "--entrypoint", "python", pinned, "-c", MACHINE)
        assert ran.output.split()[-2:] == ["x86_64", config.project.ray_version]
        engine.remove_image(pinned)  # Docker 20.10 never re-points a digest reference to another image
        docker(engine, "pull", "-q", "--platform", "linux/arm64", pinned)
        assert engine.inspect(pinned)["Architecture"] == "arm64"
        ran = docker(
            engine,
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "--entrypoint",
            "python",
            pinned,
            "-c",
            MACHINE,
        )
        assert ran.output.split()[-2:] == ["aarch64", config.project.ray_version]
    finally:
        docker(engine, "rmi", pinned, check=False)

    # -- render: the index digest, no arch pin for an app built for both, valid against the CRD ---------
    result = raybuild("render", "--validate")
    assert result.exit_code == 0, result.stderr
    assert f"image: {pinned}" in result.stdout
    hello_group = result.stdout.split("groupName: hello", 1)[1].split("groupName:", 1)[0]
    assert not re.search(r"kubernetes\.io/arch", hello_group)
