"""Fixtures for tests against a real Docker engine, registry and Ray.

Under CI=true a missing engine is a failure, never a silent skip: scripts/setup must have started one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.errors import EngineError
from tests.integration.docker_cli import docker

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "127.0.0.1:5000"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}; scripts/setup should have provided it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        engine = Engine()
        engine.ping()
    except EngineError as exc:
        _unavailable(f"no Docker engine: {exc.message}")
    return engine


@pytest.fixture(scope="session")
def bundled() -> LoadedConfig:
    return load_config(REPO_ROOT / "raybuild.toml")


def copy_project(source: Path, root: Path) -> Path:
    """Copy a project's config, apps, lockfiles and templates to ``root``."""
    root.mkdir(parents=True)
    # Images of a copy get a namespace of their own, so tests never move the bundled project's tags.
    text = (source / "raybuild.toml").read_text()
    text = text.replace('registry = "127.0.0.1:5000/raybuild"', 'registry = "127.0.0.1:5000/raybuild-test"')
    (root / "raybuild.toml").write_text(text)
    for folder in ("apps", "lockfiles", "images", "deploy"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def project_copy(tmp_path: Path) -> Iterator[Path]:
    """A copy of the bundled project (config, apps, lockfiles, templates) that a test may change."""
    yield copy_project(REPO_ROOT, tmp_path / "project")


@pytest.fixture(scope="session")
def registry() -> str:
    """The local registry; under CI=true a missing one fails the run (scripts/setup starts it)."""
    url = f"http://{REGISTRY}/v2/"
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5):
            pass
    except OSError as exc:
        _unavailable(f"no registry answers at {url} ({exc})")
    return REGISTRY


@pytest.fixture
def namespace(engine: Engine, registry: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A registry namespace of this test's own; the local tags it leaves are removed afterwards."""
    topic = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"{registry}/test-{topic}-{uuid.uuid4().hex[:10]}"
    yield name
    # Both the pushed tags and the digest references that pulls leave behind.
    fmt = "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}"
    listed = docker(engine, "images", "--digests", "--format", fmt, check=False).output
    for ref in listed.split():
        if ref.startswith(name + "/") and not ref.endswith((":<none>", "@<none>")):
            engine.remove_image(ref)


@pytest.fixture(scope="session")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raybuild's wheel, built from this checkout as users get it (pip fetches the build backend)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = out.glob("raybuild-*.whl")
    return path
