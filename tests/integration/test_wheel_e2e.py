"""raybuild as users get it: the wheel, installed into a fresh venv, run in an empty folder.

Nothing of this repository is visible to the installed tool: the project is made by `raybuild init` in a
temporary folder with nothing beside it, a second app with its own dependencies and no deployments table
is added by hand, and the whole path runs: lock, build, test, publish, render --validate, measure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raybuild.engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.network]

WORDS_APP = '''\
"""A second app, added by hand: its deployments are found in the code, not listed in raybuild.toml."""

import humanize
from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Words:
    async def __call__(self, request: Request) -> str:
        return humanize.intword(1_200_000)


app = Words.bind()
'''


@pytest.fixture(scope="module")
def installed(wheel_path: Path) -> Path:
    """A venv outside the repository with the raybuild wheel (and its dependencies) installed."""
    venv = Path(tempfile.mkdtemp(prefix="raybuild-venv-"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel_path)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return venv / "bin" / "raybuild"


@pytest.fixture
def empty_folder(engine: Engine) -> Iterator[Path]:
    # Directly under the temp root: no repository, no shared/ folder anywhere above or beside it.
    folder = Path(tempfile.mkdtemp(prefix="raybuild-user-"))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _run(raybuild: Path, cwd: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAYBUILD_", "PYTHONPATH", "VIRTUAL_ENV"))
    }
    result = subprocess.run(
        [str(raybuild), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"raybuild {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_a_new_user_goes_from_init_to_a_validated_rayservice(installed: Path, empty_folder: Path) -> None:
    project = empty_folder / f"team-{uuid.uuid4().hex[:6]}"
    _run(installed, empty_folder, "init", str(project))
    words = project / "apps" / "words"
    words.mkdir(parents=True)
    (words / "words_app.py").write_text(WORDS_APP, encoding="utf-8")
    (words / "requirements.in").write_text("humanize\n", encoding="utf-8")
    config = project / "raybuild.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + '\n[[apps]]\nname = "words"\npath = "apps/words"\nrequirements = "apps/words/requirements.in"\n'
        'import_path = "words_app:app"\nroute_prefix = "/words"\n',
        encoding="utf-8",
    )

    _run(installed, project, "lock")
    assert "humanize==" in (project / "lockfiles" / "words.txt").read_text(encoding="utf-8")
    built = json.loads(_run(installed, project, "build", "--json").stdout)
    assert {image["app"] for image in built} >= {"hello", "words"}
    for app in ("hello", "words"):
        tested = json.loads(_run(installed, project, "test", app, "--json").stdout)
        assert tested["status"] == 200
    assert "1.2 million" in tested["body"]
    _run(installed, project, "publish")
    rendered = _run(installed, project, "render", "--validate", "--out", "rayservice.yaml")
    assert "valid against the KubeRay CRD" in rendered.stderr
    manifest = (project / "rayservice.yaml").read_text(encoding="utf-8")
    assert "@sha256:" in manifest
    # The deployment found in the code carries the app's label selector and the CPUs its code asks for.
    (service,) = [d for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "RayService"]
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (words_app,) = [a for a in serve["applications"] if a["name"] == "words"]
    assert words_app["deployments"] == [
        {
            "name": "Words",
            "ray_actor_options": {"label_selector": {"raybuild.io/app": "words"}, "num_cpus": 0.25},
        }
    ]
    measured = json.loads(_run(installed, project, "measure", "--runs", "1", "--json").stdout)
    assert set(measured["apps"]) == {"hello", "words"}


SERVE_CONFIG = """\
proxy_location: EveryNode
applications:
  - name: greeter
    route_prefix: /greet
    import_path: greeter:app
    runtime_env:
      working_dir: ./services/greeter
      pip: ["humanize"]
      env_vars: {GREETING: "hi from env"}
    deployments:
      - name: Greeter
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
  - name: sizes
    route_prefix: /sizes
    import_path: sizes:app
    runtime_env:
      working_dir: ./services/sizes
      pip: ["orjson"]
      env_vars: {UNIT: "bytes"}
"""

GREETER = """\
import os

import humanize
from ray import serve


@serve.deployment
class Greeter:
    async def __call__(self, request) -> str:
        return f"{os.environ['GREETING']}: {humanize.intcomma(12345)}"


app = Greeter.bind()
"""

SIZES = """\
import os

import orjson
from ray import serve
from starlette.responses import Response


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Sizes:
    async def __call__(self, request) -> Response:
        return Response(orjson.dumps({"unit": os.environ["UNIT"]}), media_type="application/json")


app = Sizes.bind()
"""


def test_a_serve_config_with_pip_lists_becomes_a_working_project(installed: Path, empty_folder: Path) -> None:
    project = empty_folder / f"adopted-{uuid.uuid4().hex[:6]}"
    for name, code in (("greeter", GREETER), ("sizes", SIZES)):
        folder = project / "services" / name
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text(code, encoding="utf-8")
    (project / "serve.yaml").write_text(SERVE_CONFIG, encoding="utf-8")

    adopted = _run(installed, project, "init", ".", "--from-serve-config", "serve.yaml")
    assert "not carried over: proxy_location" in adopted.stderr
    _run(installed, project, "lock")
    assert "humanize==" in (project / "lockfiles" / "greeter.txt").read_text(encoding="utf-8")
    assert "orjson==" in (project / "lockfiles" / "sizes.txt").read_text(encoding="utf-8")
    _run(installed, project, "build")
    greeter = json.loads(_run(installed, project, "test", "greeter", "--json").stdout)
    assert greeter["body"] == "hi from env: 12,345"
    sizes = json.loads(_run(installed, project, "test", "sizes", "--json").stdout)
    assert json.loads(sizes["body"]) == {"unit": "bytes"}
