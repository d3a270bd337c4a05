"""SOURCE_DATE_EPOCH per image: from the last commit that changed its inputs, the override, the Debian Release
date for bootstrapped bases, and how bases pass theirs on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from raybuild.config import BaseImage, LoadedConfig
from raybuild.engine import Engine
from raybuild.errors import RaybuildError
from raybuild.image import bases, epoch
from tests.conftest import TmpProject
from tests.unit.conftest import RELEASE_DATE
from tests.unit.fakes import FakeEngine
from tests.unit.image.test_bases import all_refs, mmdebstrap, tiny_uv  # noqa: F401 (fixtures)
from tests.unit.image.test_build import write_locks

INPUTS_TIME = 1_700_000_000
# The real reader: the unit tests' conftest replaces `epoch.fetch_release_date` with a constant.
READ_RELEASE_DATE = epoch.fetch_release_date
README_TIME = 1_750_000_000


def commit(root: Path, when: int, *paths: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_DATE": f"@{when}", "GIT_COMMITTER_DATE": f"@{when}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example"}  # fmt: skip
    subprocess.run(["git", "-C", str(root), "add", *paths], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", f"at {when}"], check=True, env=env)


@pytest.fixture
def repo(tmp_project: TmpProject) -> LoadedConfig:
    """The project in git: its inputs committed at INPUTS_TIME, then a README at README_TIME."""
    config = tmp_project.load()
    write_locks(config)
    subprocess.run(["git", "init", "-q", str(tmp_project.root)], check=True)
    commit(tmp_project.root, INPUTS_TIME, ".")
    (tmp_project.root / "README.md").write_text("docs\n")
    commit(tmp_project.root, README_TIME, "README.md")
    return config


def test_a_readme_commit_changes_no_epoch(repo: LoadedConfig) -> None:
    engine = Engine()
    assert epoch.image_epoch(repo, engine) == INPUTS_TIME
    assert epoch.image_epoch(repo, engine, repo.apps[0]) == INPUTS_TIME


def test_an_app_commit_moves_that_apps_epoch_and_not_the_heads(
    repo: LoadedConfig, tmp_project: TmpProject
) -> None:
    (tmp_project.app_dir / "demo_app.py").write_text("app = None\n")
    commit(tmp_project.root, README_TIME + 100, ".")
    engine = Engine()
    assert epoch.image_epoch(repo, engine, repo.apps[0]) == README_TIME + 100
    assert epoch.image_epoch(repo, engine) == INPUTS_TIME


def test_a_ray_lock_commit_moves_every_epoch(repo: LoadedConfig) -> None:
    repo.ray_lockfile().write_text(repo.ray_lockfile().read_text() + "# edited\n")
    commit(repo.root, README_TIME + 200, ".")
    assert epoch.image_epoch(repo, Engine()) == README_TIME + 200


def test_the_config_overrides_git(repo: LoadedConfig, tmp_project: TmpProject) -> None:
    text = tmp_project.config_path.read_text()
    tmp_project.write_config(text.replace('python = "3.11"', 'python = "3.11"\nsource_date_epoch = 0'))
    config = tmp_project.load()
    assert epoch.image_epoch(config, Engine(), config.apps[0]) == 0
    assert epoch.rootfs_epoch(config, BaseImage()) == 0


def test_outside_git_the_epoch_is_the_fallback(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    write_locks(config)
    assert epoch.image_epoch(config, Engine()) == epoch.FALLBACK_EPOCH
    # A fake engine runs no git at all: the same answer.
    assert epoch.image_epoch(config, FakeEngine(), config.apps[0]) == epoch.FALLBACK_EPOCH


def test_a_snapshot_dates_its_rootfs(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert epoch.rootfs_epoch(config, BaseImage(snapshot="20261101T000000Z")) == 1_793_491_200


def test_without_a_snapshot_the_suites_release_file_dates_the_rootfs(tmp_project: TmpProject) -> None:
    asked: list[str] = []
    settings = BaseImage(mirror="http://mirror.example/debian/", suite="bookworm")
    found = epoch.rootfs_epoch(tmp_project.load(), settings, lambda url: asked.append(url) or 42)
    assert (found, asked) == (42, ["http://mirror.example/debian/dists/bookworm/Release"])


def test_the_release_date_is_read_from_the_release_file(tmp_path: Path) -> None:
    release = tmp_path / "Release"
    release.write_text(
        "Origin: Debian\nSuite: stable\nDate: Sat, 08 Nov 2025 09:31:01 UTC\nArchitectures: all\n"
    )
    assert READ_RELEASE_DATE(release.as_uri()) == 1_762_594_261
    release.write_text("Origin: Debian\n")
    with pytest.raises(RaybuildError, match="has no Date field"):
        READ_RELEASE_DATE(release.as_uri())
    with pytest.raises(RaybuildError, match=r"cannot read .* to date the root filesystem"):
        READ_RELEASE_DATE((tmp_path / "missing").as_uri())


# -- bases carry it ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("mmdebstrap", "tiny_uv")
def test_a_bootstrap_runs_with_the_epoch_and_the_bases_on_it_clamp_to_the_same(
    tmp_project: TmpProject,
) -> None:
    config = tmp_project.load()
    engine = FakeEngine()
    engine.runner.expect("mmdebstrap")
    bases.ensure_bases(config, engine, ("cpu",))
    bootstraps = [i for i, c in enumerate(engine.runner.commands) if c[0] == "mmdebstrap"]
    assert [engine.runner.envs[i] for i in bootstraps] == [{"SOURCE_DATE_EPOCH": str(RELEASE_DATE)}] * 2
    rootfs = all_refs(config)[3]
    assert engine.labels[engine.images[rootfs]][epoch.EPOCH_LABEL] == str(RELEASE_DATE)
    # The builder, then the CPU base: each clamps its RUN steps to its rootfs's epoch.
    assert [b["build_args"].get("SOURCE_DATE_EPOCH") for b in engine.builds()] == [str(RELEASE_DATE)] * 2


def test_the_mmdebstrap_output_does_not_depend_on_the_host() -> None:
    command = bases.mmdebstrap_command(bases.rootfs(BaseImage(), "runtime"), Path("/out.tar"))
    assert '--customize-hook=truncate -s 0 "$1"/etc/hosts "$1"/etc/resolv.conf "$1"/etc/hostname' in command
    # Bytecode compiled under SOURCE_DATE_EPOCH is checked-hash: gone, for the base to compile once.
    remove = '--customize-hook=find "$1"/usr/lib/python3* "$1"/usr/share/python3 -name __pycache__ -prune'
    assert f"{remove} -exec rm -rf {{}} +" in command
