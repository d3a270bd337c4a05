"""`raybuild init`: plans every file first, never loses a user's file, and adopts an existing Serve config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from raybuild import __version__
from raybuild.adopt import read_serve_config
from raybuild.config import load_config
from raybuild.errors import ConfigError, UsageError
from raybuild.scaffold import WORKFLOW, plan_adoption, plan_example, workflow, write
from tests.conftest import MainResult


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_example_project_loads(tmp_path: Path) -> None:
    written = write(plan_example(tmp_path / "proj", "hello"))
    config = load_config(tmp_path / "proj" / "raybuild.toml")
    assert [app.name for app in config.apps] == ["hello"]
    assert config.project.registry == "127.0.0.1:5000/proj"
    assert sorted(p.relative_to(tmp_path / "proj").as_posix() for p in written) == [
        ".github/workflows/raybuild.yml",
        "apps/hello/hello_app.py",
        "apps/hello/requirements.in",
        "raybuild.toml",
    ]


def test_init_never_overwrites_a_users_file_and_writes_nothing_when_one_collides(tmp_path: Path) -> None:
    app = tmp_path / "apps" / "hello"
    app.mkdir(parents=True)
    (app / "hello_app.py").write_text("# my own code\n", encoding="utf-8")
    (app / "requirements.in").write_text("numpy\n", encoding="utf-8")
    before = _tree(tmp_path)
    with pytest.raises(UsageError) as raised:
        write(plan_example(tmp_path, "hello"))
    assert raised.value.message.startswith("init would overwrite 2 existing file(s): ")
    assert str(app / "hello_app.py") in raised.value.message
    assert "nothing was written" in (raised.value.hint or "")
    assert _tree(tmp_path) == before


def test_force_replaces_colliding_files_but_never_an_existing_raybuild_toml(tmp_path: Path) -> None:
    app = tmp_path / "apps" / "hello"
    app.mkdir(parents=True)
    (app / "hello_app.py").write_text("# my own code\n", encoding="utf-8")
    write(plan_example(tmp_path, "hello"), force=True)
    assert "@serve.deployment" in (app / "hello_app.py").read_text(encoding="utf-8")
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match=r"raybuild\.toml already exists"):
        write(plan_example(tmp_path, "hello"), force=True)
    assert _tree(tmp_path) == before


def test_init_into_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="is not a folder"):
        write(plan_example(target, "hello"))


def test_an_invalid_app_name_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"apps\[0\]\.name"):
        write(plan_example(tmp_path / "proj", "Bad_Name"))
    assert not (tmp_path / "proj").exists()


SERVE = """\
applications:
  - name: summarize
    route_prefix: /summarize
    import_path: summarize_app:app
    runtime_env:
      working_dir: ./services/summarize
      pip: [humanize==4.12.3]
      env_vars: {STYLE: short}
    deployments:
      - name: Summarizer
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.5}
  - name: echo
    route_prefix: /echo
    import_path: echo_app:app
    runtime_env:
      pip: [orjson]
    deployments:
      - name: Echo
"""


def test_a_serve_config_becomes_a_project_that_loads(tmp_path: Path) -> None:
    (tmp_path / "services" / "summarize").mkdir(parents=True)
    (tmp_path / "services" / "summarize" / "summarize_app.py").write_text("# code\n", encoding="utf-8")
    source = tmp_path / "serve.yaml"
    source.write_text(SERVE, encoding="utf-8")
    plan = plan_adoption(tmp_path, read_serve_config(source))
    assert plan.notes == ("app 'echo': no working_dir; put the app's code in apps/echo",)
    write(plan)
    config = load_config(tmp_path / "raybuild.toml")
    summarize, echo = config.apps
    assert (summarize.path, summarize.requirements) == (
        "services/summarize",
        "services/summarize/requirements.in",
    )
    assert summarize.env == {"STYLE": "short"}
    assert summarize.deployments[0].ray_actor_options.num_cpus == 0.5
    assert (
        config.requirements_file(summarize).read_text(encoding="utf-8").splitlines()[-1] == "humanize==4.12.3"
    )
    assert (echo.path, echo.import_path, echo.deployments[0].name) == ("apps/echo", "echo_app:app", "Echo")
    assert (tmp_path / "services" / "summarize" / "summarize_app.py").read_text(
        encoding="utf-8"
    ) == "# code\n"


def test_a_working_dir_outside_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    source = tmp_path / "serve.yaml"
    source.write_text(
        "applications:\n  - name: a\n    import_path: m:app\n    runtime_env: {working_dir: ./code}\n"
        "    deployments: [{name: A}]\n",
        encoding="utf-8",
    )
    with pytest.raises(UsageError, match="lies outside"):
        plan_adoption(tmp_path / "project", read_serve_config(source))


def test_the_workflow_is_pinned_to_this_raybuild() -> None:
    # Its validity against GitHub's schema and its raybuild calls are checked in test_workflow.py.
    data = yaml.safe_load(workflow())
    assert data["env"]["RAYBUILD_VERSION"] == __version__
    steps = data["jobs"]["images"]["steps"]
    install = next(step["run"] for step in steps if step.get("name", "").startswith("Install raybuild"))
    assert install == 'pip install "raybuild==${RAYBUILD_VERSION}"'
    # Logged in before the build, which then pulls what the registry holds; the full history for epochs.
    runs = [step.get("run", "") for step in steps]
    assert next(i for i, r in enumerate(runs) if "docker login" in r) < runs.index("raybuild build")
    assert steps[0]["uses"].startswith("actions/checkout@") and steps[0]["with"]["fetch-depth"] == 0
    gate = next(step["run"] for step in steps if step.get("name") == "Gate")
    assert "--deployed deployed/rayservice.yaml" in gate


def test_an_existing_workflow_is_a_collision(tmp_path: Path) -> None:
    (tmp_path / WORKFLOW).parent.mkdir(parents=True)
    (tmp_path / WORKFLOW).write_text("name: ours\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"raybuild\.yml"):
        write(plan_example(tmp_path, "hello"))
    assert (tmp_path / WORKFLOW).read_text(encoding="utf-8") == "name: ours\n"


def test_the_cli_lists_collisions_in_one_error_line_and_changes_nothing(
    tmp_path: Path, run_main: Callable[..., MainResult]
) -> None:
    app = tmp_path / "apps" / "hello"
    app.mkdir(parents=True)
    (app / "hello_app.py").write_text("# mine\n", encoding="utf-8")
    before = _tree(tmp_path)
    result = run_main("init", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith("error: init would overwrite 1 existing file(s): ")
    assert "Traceback" not in result.stderr
    assert _tree(tmp_path) == before


def test_the_cli_adopts_a_serve_config_and_reports_what_it_left(
    tmp_path: Path, run_main: Callable[..., MainResult]
) -> None:
    source = tmp_path / "serve.yaml"
    source.write_text(SERVE, encoding="utf-8")
    (tmp_path / "services" / "summarize").mkdir(parents=True)
    result = run_main("init", str(tmp_path), "--from-serve-config", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["not_carried_over"] == ["app 'echo': no working_dir; put the app's code in apps/echo"]
    assert str(tmp_path / "raybuild.toml") in report["created"]
