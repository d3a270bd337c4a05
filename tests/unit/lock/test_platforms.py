"""Locking for several platforms: a lockfile per platform, wheels only beyond the default, all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild.config import LoadedConfig
from raybuild.errors import LockError, StaleLockError
from raybuild.lock import resolve as locking
from raybuild.lock.lockfile import read
from raybuild.runner import Result
from tests.conftest import TmpProject
from tests.unit.fakes import FakeResolver

BUNDLED = Path(__file__).resolve().parents[3]
NO_ARM64_WHEEL = (
    "error: No solution found when resolving dependencies\n"
    "  cause: Because all versions of docopt have no usable wheels and you require docopt, we can conclude "
    "that your requirements are unsatisfiable.\n\n"
    "hint: Wheels are required for `docopt` because building from source is disabled for all packages"
)


@pytest.fixture
def both(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace(
            'registry = "127.0.0.1:5000/demo"',
            'registry = "127.0.0.1:5000/demo"\nplatforms = ["linux/amd64", "linux/arm64"]',
        )
    )
    return tmp_project.load()


def test_each_platform_gets_its_lockfile_resolved_for_it(both: LoadedConfig) -> None:
    resolver = FakeResolver()
    results = locking.lock(both, both.apps, runner=resolver)
    assert [(r.name, r.platform, r.path.name) for r in results] == [
        ("ray", "linux/amd64", "ray.txt"),
        ("ray", "linux/arm64", "ray.linux-arm64.txt"),
        ("demo", "linux/amd64", "demo.txt"),
        ("demo", "linux/arm64", "demo.linux-arm64.txt"),
    ]
    platforms_asked = [c[c.index("--python-platform") + 1] for c in resolver.commands]
    assert platforms_asked == ["x86_64-manylinux_2_36", "aarch64-manylinux_2_36"] * 2
    # Wheels only for the emulated platform; the default platform resolves as it always did.
    assert ["--only-binary" in c for c in resolver.commands] == [False, True, False, True]
    arm64_app = resolver.commands[3]
    assert arm64_app[arm64_app.index("-c") + 1].endswith("ray.linux-arm64.txt")
    header = read(both.lockfile(both.apps[0], "linux/arm64"))
    assert header is not None and "aarch64-manylinux_2_36" in header.header
    assert locking.stale(both, both.apps) == []


def test_lock_check_covers_every_platform(both: LoadedConfig) -> None:
    locking.lock(both, both.apps, runner=FakeResolver())
    both.lockfile(both.apps[0], "linux/arm64").unlink()
    with pytest.raises(StaleLockError) as caught:
        locking.check(both, both.apps)
    assert "lockfiles/demo.linux-arm64.txt" in caught.value.message


def test_a_package_without_a_wheel_for_a_platform_fails_naming_both_and_writes_nothing(
    both: LoadedConfig,
) -> None:
    locking.lock(both, both.apps, runner=FakeResolver())
    before = {p.name: p.read_bytes() for p in both.lock_dir().iterdir()}
    (both.requirements_file(both.apps[0])).write_text("docopt\n")

    def runner(command: list[str]) -> Result:
        if "aarch64-manylinux_2_36" in command and "-c" in command:
            return Result(command, 1, "", NO_ARM64_WHEEL)
        return FakeResolver()(command)

    with pytest.raises(LockError) as caught:
        locking.lock(both, both.apps, runner=runner)
    assert caught.value.message == "app 'demo': docopt has no wheel for linux/arm64"
    # The amd64 lockfile resolved, but is not written without its arm64 sibling.
    assert {p.name: p.read_bytes() for p in both.lock_dir().iterdir()} == before


def test_pip_tools_is_refused_for_another_platform_before_anything_is_compiled(both: LoadedConfig) -> None:
    resolver = FakeResolver()
    with pytest.raises(LockError) as caught:
        locking.lock(both.with_resolver("pip-tools"), both.apps, runner=resolver)
    assert "pip-tools cannot lock for linux/arm64" in caught.value.message
    assert resolver.commands == []
    assert not both.lock_dir().exists() or not any(both.lock_dir().iterdir())


def test_the_bundled_projects_amd64_lockfiles_stay_current() -> None:
    # The platform set never changes the default platform's inputs hash: today's lockfiles stay valid.
    from raybuild.config import load_config

    config = load_config(BUNDLED / "raybuild.toml")
    assert locking.stale(config, config.apps) == []
