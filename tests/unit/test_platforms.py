"""Platforms: their names for each tool, the config keys that choose them, and the emulation check."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild import platforms
from raybuild.config import load_config
from raybuild.errors import ConfigError
from tests.conftest import TmpProject

GPU_APP = """
[[apps]]
name = "vision"
path = "apps/vision"
requirements = "apps/vision/requirements.in"
import_path = "vision_app:app"
route_prefix = "/vision"
device = "gpu"
"""


def test_the_default_platform_keeps_every_name_it_had() -> None:
    amd64 = platforms.get(platforms.DEFAULT)
    assert (amd64.suffix, amd64.lock_suffix) == ("", "")
    assert amd64.python_platform("x86_64-manylinux_2_36") == "x86_64-manylinux_2_36"


def test_arm64_names_for_each_tool() -> None:
    arm64 = platforms.get(platforms.ARM64)
    assert (arm64.architecture, arm64.debian, arm64.machine) == ("arm64", "arm64", "aarch64")
    assert (arm64.suffix, arm64.lock_suffix) == ("-arm64", ".linux-arm64")
    # The glibc floor of [project].platform carries over to the other architecture.
    assert arm64.python_platform("x86_64-manylinux_2_28") == "aarch64-manylinux_2_28"


def test_ordered_puts_the_default_first_and_drops_repeats() -> None:
    assert platforms.ordered(["linux/arm64", "linux/amd64", "linux/arm64"]) == ("linux/amd64", "linux/arm64")


def _binfmt(tmp_path: Path, entry: str | None, status: bool = True) -> str:
    if status:
        (tmp_path / "status").write_text("enabled\n")
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    return str(tmp_path)


@pytest.mark.parametrize(
    ("entry", "status", "problem"),
    [
        ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n", True, None),
        ("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\n", True, "without the F flag"),
        ("disabled\nflags: PF\n", True, "is disabled"),
        (None, True, "no qemu-aarch64 handler is registered"),
        (None, False, "binfmt_misc is not mounted"),
    ],
)
def test_emulation_problem_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str | None, status: bool, problem: str | None
) -> None:
    monkeypatch.setattr(platforms, "host", lambda: platforms.get(platforms.DEFAULT))
    found = platforms.emulation_problem(platforms.ARM64, _binfmt(tmp_path, entry, status))
    assert found is None if problem is None else problem in (found or "")


def test_a_native_platform_needs_no_emulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platforms, "host", lambda: platforms.get(platforms.ARM64))
    assert platforms.emulation_problem(platforms.ARM64, str(tmp_path / "unmounted")) is None
    assert platforms.timeout_for(platforms.ARM64, 10) == 10
    assert platforms.timeout_for(platforms.DEFAULT, 10) == 10 * platforms.EMULATION_SLOWDOWN


def test_config_defaults_to_amd64_and_gpu_apps_stay_there(tmp_project: TmpProject) -> None:
    tmp_project.add_app("vision")
    tmp_project.append_config(GPU_APP)
    text = tmp_project.config_path.read_text().replace(
        'registry = "127.0.0.1:5000/demo"',
        'registry = "127.0.0.1:5000/demo"\nplatforms = ["linux/arm64", "linux/amd64"]',
    )
    tmp_project.write_config(text)
    config = tmp_project.load()
    demo, vision = config.apps
    assert config.platforms(demo) == ("linux/amd64", "linux/arm64")
    assert config.platforms(vision) == ("linux/amd64",)
    assert config.lockfile(demo, platforms.ARM64).name == "demo.linux-arm64.txt"
    assert config.lockfile(demo).name == "demo.txt"
    assert config.ray_lockfile(platforms.ARM64).name == "ray.linux-arm64.txt"
    # Built for both: no pin; built for one: pinned to it.
    assert (config.node_arch(demo), config.node_arch(vision)) == (None, "amd64")


def test_an_app_can_choose_its_platforms_and_its_node_arch(tmp_project: TmpProject) -> None:
    own = 'route_prefix = "/demo"\nplatforms = ["linux/arm64", "linux/amd64"]\nnode_arch = "arm64"'
    tmp_project.write_config(tmp_project.config_path.read_text().replace('route_prefix = "/demo"', own))
    config = tmp_project.load()
    (demo,) = config.apps
    assert config.platforms(demo) == ("linux/amd64", "linux/arm64")
    assert config.all_platforms() == ("linux/amd64", "linux/arm64")
    assert config.node_arch(demo) == "arm64"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["linux/s390x"]', "unknown platform 'linux/s390x'; allowed: 'linux/amd64', 'linux/arm64'"),
        ("[]", "must name at least one platform"),
        ('["linux/arm64", "linux/arm64"]', "names a platform twice"),
    ],
)
def test_bad_platforms_are_one_line_naming_the_key(tmp_project: TmpProject, value: str, message: str) -> None:
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace(
            'registry = "127.0.0.1:5000/demo"', f'registry = "127.0.0.1:5000/demo"\nplatforms = {value}'
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_project.config_path)
    assert "\n" not in caught.value.message
    assert "project.platforms" in caught.value.message
    assert message in caught.value.message


def test_node_arch_must_be_one_the_app_is_built_for(tmp_project: TmpProject) -> None:
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace(
            'route_prefix = "/demo"',
            'route_prefix = "/demo"\nplatforms = ["linux/arm64"]\nnode_arch = "amd64"',
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_project.config_path)
    assert "apps[0]" in caught.value.message
    assert "node_arch 'amd64'" in caught.value.message
