"""Fixtures every test folder shares: the golden-file switch and a small throwaway project.

Nothing here touches Docker, a registry or the network at import time; tests that do are marked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from raybuild.cli import main
from raybuild.config import LoadedConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# Whole-file expected outputs (Dockerfiles, manifests); `pytest --update-goldens` rewrites them.
GOLDEN_DIR = REPO_ROOT / "tests" / "unit" / "golden"

# A valid project with one CPU app, "demo". Tests rewrite it (or append tables) to make it invalid.
PROJECT_TOML = """\
[project]
name = "demo-project"
ray_version = "2.60.0"
python = "3.11"
registry = "127.0.0.1:5000/demo"

[[apps]]
name = "demo"
path = "apps/demo"
requirements = "apps/demo/requirements.in"
import_path = "demo_app:app"
route_prefix = "/demo"

[[apps.deployments]]
name = "Demo"
num_replicas = 1
ray_actor_options = { num_cpus = 0.5 }
"""

DEMO_APP = """\
from ray import serve


@serve.deployment
class Demo:
    async def __call__(self, request: object) -> str:
        return "demo"


app = Demo.bind()
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="Rewrite golden files from the current output instead of comparing against them.",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with --update-goldens."""
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture
def check_golden(update_goldens: bool) -> Callable[[Path, str], None]:
    """Compare ``text`` with the golden file at ``path``; with --update-goldens, rewrite it instead."""

    def check(path: Path, text: str) -> None:
        if update_goldens:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.is_file():
            pytest.fail(f"golden file {path} is missing; run pytest --update-goldens and review the diff")
        expected = path.read_text(encoding="utf-8")
        assert text == expected, (
            f"output differs from {path}; if the change is intended, run --update-goldens"
        )

    return check


def other_app(app_lines: str = "", deployment_lines: str = "") -> str:
    """The config tables of a second app, "other", with extra lines for its app and deployment tables."""
    return (
        '[[apps]]\nname = "other"\npath = "apps/other"\nrequirements = "apps/other/requirements.in"\n'
        f'import_path = "other_app:app"\nroute_prefix = "/other"\n{app_lines}'
        f'\n[[apps.deployments]]\nname = "Other"\n{deployment_lines}'
    )


@dataclass
class TmpProject:
    """A project on disk under tmp_path that a test may freely change."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "raybuild.toml"

    @property
    def app_dir(self) -> Path:
        return self.root / "apps" / "demo"

    @property
    def requirements(self) -> Path:
        return self.app_dir / "requirements.in"

    def write_config(self, text: str) -> Path:
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def append_config(self, text: str) -> Path:
        return self.write_config(self.config_path.read_text(encoding="utf-8") + "\n" + text)

    def add_app(self, name: str, requirements: str = "") -> Path:
        """Create the folder, module and requirements file of another app (its config is up to the test)."""
        app_dir = self.root / "apps" / name
        app_dir.mkdir(parents=True, exist_ok=True)
        (app_dir / f"{name.replace('-', '_')}_app.py").write_text(DEMO_APP, encoding="utf-8")
        (app_dir / "requirements.in").write_text(requirements, encoding="utf-8")
        return app_dir

    def load(self) -> LoadedConfig:
        return load_config(self.config_path)


@pytest.fixture
def tmp_project(tmp_path: Path) -> TmpProject:
    """A valid one-app project ("demo", CPU, requirements: orjson) in a fresh folder."""
    project = TmpProject(tmp_path / "project")
    project.add_app("demo", "orjson\n")
    project.write_config(PROJECT_TOML)
    return project


@dataclass(frozen=True)
class MainResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., MainResult]:
    """Run ``raybuild.cli.main`` (the console script, which maps errors to exit codes) in-process.

    CliRunner invokes the Click group directly, so it never sees main()'s error handling; this does.
    """

    def run(*args: str) -> MainResult:
        monkeypatch.setattr(sys, "argv", ["raybuild", *args])
        monkeypatch.delenv("RAYBUILD_CONFIG", raising=False)
        monkeypatch.delenv("RAYBUILD_DEBUG", raising=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        code = exited.value.code
        return MainResult(code if isinstance(code, int) else 1, out, err)

    return run
