"""Provenance labels: the last commit that changed an image's inputs (in a real git repository, no network),
source URLs without credentials, and the labels every build carries."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from raybuild import __version__
from raybuild.config import LoadedConfig
from raybuild.engine import Engine
from raybuild.image.build import Builder
from raybuild.image.epoch import image_inputs, last_change
from raybuild.image.provenance import provenance_labels, source_url
from tests.conftest import TmpProject
from tests.unit.fakes import FakeEngine
from tests.unit.image.test_build import refs, write_locks

pytestmark = pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0,
                                reason="git is not installed")  # fmt: skip


def git(root: Path, *args: str, when: int = 1_700_000_000) -> str:
    env = {**os.environ, "GIT_COMMITTER_DATE": f"{when} +0000", "GIT_AUTHOR_DATE": f"{when} +0000"}
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.strip()


def commit(root: Path, message: str, when: int) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message, when=when)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_project: TmpProject) -> LoadedConfig:
    """The demo project, with lockfiles, committed as the first commit of a new repository."""
    config = tmp_project.load()
    write_locks(config)
    git(config.root, "init", "-q")
    commit(config.root, "the project", when=1_700_000_000)
    return config


def test_source_urls_are_browsable_and_never_carry_credentials() -> None:
    assert source_url("git@github.com:org/repo.git") == "https://github.com/org/repo"
    assert source_url("https://user:token@github.com/org/repo.git") == "https://github.com/org/repo"
    assert (
        source_url("ssh://git@gitlab.example.com/group/sub/repo.git\n")
        == "https://gitlab.example.com/group/sub/repo"
    )
    assert source_url("/srv/git/repo.git") is None


def test_the_inputs_are_lockfiles_code_and_project_templates(repo: LoadedConfig) -> None:
    # raybuild.toml is not one: most of its edits (cluster, gate) change no image, and those that do
    # (env, prune rules) change the staged context, so the tag, anyway.
    app = repo.apps[0]
    assert set(image_inputs(repo, None)) == {repo.ray_lockfile()}
    (repo.root / "images").mkdir()
    assert set(image_inputs(repo, app)) == {
        repo.ray_lockfile(),
        repo.root / "images",
        repo.lockfile(app),
        repo.app_dir(app),
    }


def test_the_last_change_is_the_last_commit_that_touched_the_inputs(repo: LoadedConfig) -> None:
    engine, app = Engine(), repo.apps[0]
    first = git(repo.root, "rev-parse", "HEAD")
    (repo.root / "README.md").write_text("docs only\n")
    commit(repo.root, "docs", when=1_700_000_100)
    change = last_change(engine, repo.root, image_inputs(repo, app))
    assert change is not None and (change.revision, change.epoch) == (first, 1_700_000_000)
    assert change.created == "2023-11-14T22:13:20Z"

    (repo.app_dir(app) / "demo_app.py").write_text("# changed\n")
    dirty = last_change(engine, repo.root, image_inputs(repo, app))
    assert dirty is not None and not dirty.clean  # uncommitted: no commit describes the image
    # The head image's inputs did not change: it still names the first commit.
    head = last_change(engine, repo.root, image_inputs(repo, None))
    assert head is not None and head.revision == first
    (repo.app_dir(app) / "__pycache__").mkdir()
    (repo.app_dir(app) / "__pycache__" / "demo_app.cpython-311.pyc").write_bytes(b"\0")
    code = commit(repo.root, "code", when=1_700_000_200)
    (repo.app_dir(app) / "__pycache__" / "more.pyc").write_bytes(b"\0")  # bytecode is not an input
    change = last_change(engine, repo.root, image_inputs(repo, app))
    assert change is not None and (change.revision, change.epoch) == (code, 1_700_000_200)


def test_outside_a_repository_there_is_no_change(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert last_change(Engine(), config.root, image_inputs(config, config.apps[0])) is None


def test_labels_of_a_committed_project(repo: LoadedConfig) -> None:
    git(repo.root, "remote", "add", "origin", "https://bot:secret@github.com/team/serving.git")
    ref = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
    app = repo.apps[0]
    labels = provenance_labels(
        Engine(), repo, app, ref, last_change(Engine(), repo.root, image_inputs(repo, app))
    )
    assert labels == {
        "org.opencontainers.image.version": "ray2.60.0-py3.11-cpu-222222222222",
        "org.opencontainers.image.revision": git(repo.root, "rev-parse", "HEAD"),
        "org.opencontainers.image.created": "2023-11-14T22:13:20Z",
        "org.opencontainers.image.source": "https://github.com/team/serving",
        "io.raybuild.version": __version__,
        "io.raybuild.lockfile.ray-sha256": labels["io.raybuild.lockfile.ray-sha256"],
        "io.raybuild.lockfile.app-sha256": labels["io.raybuild.lockfile.app-sha256"],
    }

    assert (
        labels["io.raybuild.lockfile.app-sha256"]
        == hashlib.sha256(repo.lockfile(repo.apps[0]).read_bytes()).hexdigest()
    )
    assert "secret" not in str(labels)


def test_every_build_carries_the_labels(repo: LoadedConfig, tmp_path: Path) -> None:
    ref, head = refs(repo, tmp_path)
    engine = FakeEngine()  # git answers nothing here: only the labels that need no repository
    engine.runner.expect("mmdebstrap")
    Builder(repo, engine).build_app(repo.apps[0])
    *_, head_build, app_build = engine.builds()
    assert head_build["labels"]["org.opencontainers.image.version"] == head.rsplit(":", 1)[1]
    assert app_build["labels"]["org.opencontainers.image.version"] == ref.rsplit(":", 1)[1]
    assert app_build["labels"]["io.raybuild.version"] == __version__
    assert not any(key.startswith("io.raybuild.lockfile.app-") for key in head_build["labels"])
