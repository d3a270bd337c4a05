"""Build plans: made once per command, so a command opens each lockfile once (counted with an audit hook on
`open`), and a plan's fields are the ones the single-image helpers and the build itself use."""

from __future__ import annotations

import contextvars
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from raybuild import platforms
from raybuild.cli import build as build_cli
from raybuild.cli import cli
from raybuild.config import LoadedConfig, load_config
from raybuild.image import build
from raybuild.image.plan import dockerfile_for, plan_builds, plan_for, stage_context
from raybuild.tags import head_ref, image_ref
from tests.conftest import REPO_ROOT, TmpProject
from tests.unit.fakes import FakeEngine, FakeRegistry
from tests.unit.image.test_build import base_images, write_locks

# Files opened while a test counts (None: not counting). An audit hook cannot be removed, so the one hook
# this module installs counts only inside `counting_opens`.
_OPENS: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar("opens", default=None)
_HOOKED: list[bool] = []


def _on_event(event: str, args: tuple[Any, ...]) -> None:
    opens = _OPENS.get()
    if opens is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        opens[os.path.abspath(os.fsdecode(args[0]))] += 1


class counting_opens:  # lower case: used as a context manager, like open()
    def __enter__(self) -> Counter[str]:
        if not _HOOKED:
            sys.addaudithook(_on_event)
            _HOOKED.append(True)
        self.counter: Counter[str] = Counter()
        self.token = _OPENS.set(self.counter)
        return self.counter

    def __exit__(self, *exc: object) -> None:
        _OPENS.reset(self.token)


@pytest.fixture
def bundled_copy(tmp_path: Path) -> Path:
    """The bundled project (config, apps, lockfiles, templates), copied so that builds write only there."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO_ROOT / "raybuild.toml", root / "raybuild.toml")
    for folder in ("apps", "lockfiles"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    return root


def _invoke(root: Path, *args: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(root / "raybuild.toml"), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _lock_opens(opens: Counter[str], root: Path) -> dict[str, int]:
    return {name: opens[str(root / "lockfiles" / name)] for name in ("ray.txt", "hello.txt")}


def test_generate_opens_each_lockfile_at_most_twice(bundled_copy: Path) -> None:
    with counting_opens() as opens:
        _invoke(bundled_copy, "generate", "hello")
    counts = _lock_opens(opens, bundled_copy)
    assert all(1 <= n <= 2 for n in counts.values()), counts  # read at all, and not again and again
    assert (bundled_copy / ".raybuild" / "dockerfiles" / "hello.Dockerfile").is_file()


def test_a_no_op_build_opens_each_lockfile_at_most_twice(
    bundled_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(bundled_copy / "raybuild.toml")
    engine = FakeEngine(images=base_images(config))
    monkeypatch.setattr(build_cli, "engine_for", lambda state: engine)
    monkeypatch.setattr(build, "HttpRegistry", FakeRegistry().connect)
    _invoke(bundled_copy, "build", "hello")
    built = len(engine.builds())
    assert built == 2  # the head image, then the app
    with counting_opens() as opens:
        _invoke(bundled_copy, "build", "hello")
    assert len(engine.builds()) == built  # a no-op: nothing built again
    counts = _lock_opens(opens, bundled_copy)
    assert all(1 <= n <= 2 for n in counts.values()), counts


def test_the_counter_sees_opens_inside_and_none_outside(tmp_path: Path) -> None:
    # Guards the guard: a hook that missed opens would let the tests above pass with any count.
    path = tmp_path / "x.txt"
    path.write_text("x")
    with counting_opens() as opens:
        path.read_text()
        path.read_bytes()
    path.read_text()
    assert opens[str(path)] == 2


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    config = tmp_project.load()
    write_locks(config)
    return config


def test_a_plan_names_the_image_its_staged_context_hashes_to(project: LoadedConfig, tmp_path: Path) -> None:
    app = project.apps[0]
    plan = plan_for(project, app)
    (tmp_path / "context").mkdir()
    assert stage_context(project, app, tmp_path / "context") == plan.content_hash
    assert plan.ref == image_ref(project, app, plan.content_hash)
    assert plan.head_ref == head_ref(project, plan.head_hash) == plan.spec.head_image
    assert (
        (tmp_path / "context" / "Dockerfile").read_text() == plan.dockerfile == dockerfile_for(project, app)
    )
    assert plan.platform == platforms.get(platforms.DEFAULT) and plan.main
    assert sorted(plan.code.files) == ["demo_app.py"]


def test_a_plan_changes_with_the_code_and_the_lock(project: LoadedConfig, tmp_project: TmpProject) -> None:
    app = project.apps[0]
    before = plan_for(project, app)
    (tmp_project.app_dir / "demo_app.py").write_text("# changed\n", encoding="utf-8")
    code_changed = plan_for(project, app)
    assert code_changed.ref != before.ref and code_changed.head_hash == before.head_hash
    assert code_changed.spec.code_hash != before.spec.code_hash
    write_locks(project, ray_body="ray==2.60.0 \\\n    --hash=sha256:2222\n")
    lock_changed = plan_for(project, app)
    assert lock_changed.head_hash != code_changed.head_hash
    assert lock_changed.ray_lock.sha256 != code_changed.ray_lock.sha256


def test_generate_plans_an_unlocked_app_and_build_refuses_it(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    (plan,) = plan_builds(config, config.apps, locked=False)
    assert plan.spec.lock_hash == "unlocked" and plan.app_lock.found is None
    with pytest.raises(Exception, match="no lockfile at"):
        plan_builds(config, config.apps)
