"""The Click commands, over the bundled project and throwaway ones.

Errors are checked through main(), which turns them into what users see.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import click
import pytest
from click.testing import CliRunner, Result

import raybuild.cli as cli_package
from raybuild.cli import cli
from raybuild.cli import drill as drill_cli
from raybuild.config import load_config
from raybuild.image import bases
from raybuild.local.drill import DrillReport, Window
from tests.conftest import GOLDEN_DIR, REPO_ROOT, MainResult, TmpProject

GOLDEN = GOLDEN_DIR / "dockerfiles"
BUNDLED = str(REPO_ROOT / "raybuild.toml")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"RAYBUILD_CONFIG": None})


@pytest.fixture
def fixed_uv_version() -> Iterator[mock.MagicMock]:
    # The builder image's name hashes the uv version; the goldens are rendered with this one.
    with mock.patch.object(bases, "uv_version", return_value="0.13.9") as patched:
        yield patched


# -- list -------------------------------------------------------------------------------------------------


def test_list_prints_a_table_of_the_apps() -> None:
    result = invoke("--config", BUNDLED, "list")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "APP      DEVICE  LOCKFILE               IMAGE                            ROUTE",
        "hello    cpu     lockfiles/hello.txt    127.0.0.1:5000/raybuild/hello    /hello",
        "sklearn  cpu     lockfiles/sklearn.txt  127.0.0.1:5000/raybuild/sklearn  /iris",
        "cuda     gpu     lockfiles/cuda.txt     127.0.0.1:5000/raybuild/cuda     /cuda",
    ]


def test_list_json_is_machine_readable() -> None:
    result = invoke("--config", BUNDLED, "list", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == ["hello", "sklearn", "cuda"]
    assert rows[2] == {
        "name": "cuda",
        "device": "gpu",
        "lockfile": "lockfiles/cuda.txt",
        "image": "127.0.0.1:5000/raybuild/cuda",
        "route_prefix": "/cuda",
        "platforms": ["linux/amd64"],
    }


def test_config_option_accepts_the_project_folder() -> None:
    assert invoke("--config", str(REPO_ROOT), "list", "--json").stdout == invoke("--config", BUNDLED, "list",
                                                                                 "--json").stdout  # fmt: skip


# -- init -------------------------------------------------------------------------------------------------


def test_init_scaffolds_a_project_that_loads_and_lists(tmp_path: Path) -> None:
    project = tmp_path / "svc"
    result = invoke("init", str(project), "--name", "api-v2")
    assert result.exit_code == 0, result.output
    assert f"created {project / 'raybuild.toml'}" in result.stdout
    config = load_config(project / "raybuild.toml")
    app = config.apps[0]
    assert (app.name, app.import_path, app.route_prefix) == ("api-v2", "api_v2_app:app", "/api-v2")
    assert (project / "apps" / "api-v2" / "api_v2_app.py").is_file()
    listed = json.loads(invoke("--config", str(project), "list", "--json").stdout)
    assert [row["name"] for row in listed] == ["api-v2"]


def test_init_refuses_an_existing_project(tmp_path: Path, run_main: Callable[..., MainResult]) -> None:
    assert invoke("init", str(tmp_path)).exit_code == 0
    before = (tmp_path / "raybuild.toml").read_text()
    result = run_main("init", str(tmp_path), "--name", "other")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"error: {tmp_path / 'raybuild.toml'} already exists"
    assert (tmp_path / "raybuild.toml").read_text() == before
    assert not (tmp_path / "apps" / "other").exists()


@pytest.mark.parametrize("name", ["Bad_Name", 'a"b'])
def test_init_with_a_bad_name_writes_nothing(tmp_path: Path, run_main: Callable[..., MainResult],
                                             name: str) -> None:  # fmt: skip
    result = run_main("init", str(tmp_path / "svc"), "--name", name)
    assert result.exit_code in (1, 2)
    assert result.stderr.startswith("error: ")
    assert not (tmp_path / "svc").exists()


# -- generate ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fixed_uv_version")
def test_generate_stdout_prints_the_dockerfile() -> None:
    result = invoke("--config", BUNDLED, "generate", "--stdout", "hello")
    assert result.exit_code == 0
    assert result.stdout == (GOLDEN / "hello.Dockerfile").read_text()


@pytest.mark.usefixtures("fixed_uv_version")
def test_generate_stdout_prints_every_app_in_config_order() -> None:
    result = invoke("--config", BUNDLED, "generate", "--stdout")
    assert result.stdout == "".join((GOLDEN / f"{name}.Dockerfile").read_text()
                                    for name in ("hello", "sklearn", "cuda"))  # fmt: skip


@pytest.mark.usefixtures("fixed_uv_version")
def test_generate_writes_one_file_per_app(tmp_path: Path) -> None:
    result = invoke("--config", BUNDLED, "generate", "--out-dir", str(tmp_path), "sklearn", "cuda")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"sklearn: {tmp_path / 'sklearn.Dockerfile'}",
                                          f"cuda: {tmp_path / 'cuda.Dockerfile'}"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuda.Dockerfile", "sklearn.Dockerfile"]
    for name in ("sklearn", "cuda"):
        assert (tmp_path / f"{name}.Dockerfile").read_text() == (GOLDEN / f"{name}.Dockerfile").read_text()


@pytest.mark.usefixtures("fixed_uv_version")
def test_generate_replaces_the_dockerfiles_it_made_before(tmp_path: Path) -> None:
    (tmp_path / "hello.Dockerfile").write_text('# Generated by raybuild for app "hello" (an older one)\n')
    result = invoke("--config", BUNDLED, "generate", "--out-dir", str(tmp_path), "hello")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hello.Dockerfile").read_text() == (GOLDEN / "hello.Dockerfile").read_text()


def test_generate_json_names_the_written_files(tmp_path: Path) -> None:
    result = invoke("--config", BUNDLED, "generate", "--out-dir", str(tmp_path), "--json", "hello")
    assert json.loads(result.stdout) == {"hello": str(tmp_path / "hello.Dockerfile")}


# -- lock --check on the committed project ----------------------------------------------------------------


def test_lock_check_passes_on_the_bundled_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    before = {p.name: p.read_text() for p in (REPO_ROOT / "lockfiles").iterdir()}
    result = invoke("lock", "--check")
    assert result.exit_code == 0, result.output
    assert result.stdout == "4 lockfiles are up to date\n"
    assert {p.name: p.read_text() for p in (REPO_ROOT / "lockfiles").iterdir()} == before


def test_lock_check_json_reports_nothing_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    result = invoke("lock", "--check", "--json", "hello")
    assert json.loads(result.stdout) == {"ok": True, "stale": []}


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["generate", "--stdout"], ["lock", "--check"]])
def test_unknown_app_is_a_usage_error_naming_the_known_apps(
    run_main: Callable[..., MainResult], command: list[str]
) -> None:
    result = run_main("--config", BUNDLED, *command, "hello", "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: unknown app 'nope' in raybuild.toml",
        "hint: known apps: cuda, hello, sklearn",
    ]


def test_missing_config_is_one_line_with_a_hint(tmp_path: Path, run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", str(tmp_path / "raybuild.toml"), "list")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'raybuild.toml'}: no such file",
        "hint: run `raybuild init DIR` or pass --config PATH/raybuild.toml",
    ]


def test_click_usage_errors_keep_clicks_exit_code(run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", BUNDLED, "list", "--no-such-option")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: No such option '--no-such-option'.",
        "hint: see `raybuild list --help`",
    ]


# -- help is documentation ----------------------------------------------------------------------------------


def test_the_group_has_help() -> None:
    assert cli.help and cli.help.strip()
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Build, measure and ship slim Ray Serve images for KubeRay." in result.stdout
    for name in cli.commands:
        assert name in result.stdout


def _all_commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every registered command, subcommands included, so commands added later are checked too."""
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found += _all_commands(command, (*prefix, name))
    return found


COMMANDS = _all_commands(cli)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: click.Command) -> None:
    assert command.help and command.help.strip(), f"`raybuild {' '.join(path)}` has no help text"
    assert command.get_short_help_str().strip()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"`raybuild {' '.join(path)} {param.opts[0]}` has no help text"
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    first_paragraph = command.help.strip().split("\n\n")[0]
    assert " ".join(first_paragraph.split()) in " ".join(result.stdout.split())


def test_the_group_options_have_help() -> None:
    for param in cli.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"`raybuild {param.opts[0]}` has no help text"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_lives_in_a_module_named_after_it(
    path: tuple[str, ...], command: click.Command
) -> None:
    module = {"list": "list_apps"}.get(path[-1], path[-1])
    assert command.callback is not None
    assert command.callback.__module__ == f"raybuild.cli.{module}"


CLI_DIR = Path(cli_package.__file__).parent


@pytest.mark.parametrize("module", sorted(p.name for p in CLI_DIR.glob("*.py") if p.name != "__init__.py"))
def test_commands_exit_only_through_main(module: str) -> None:
    # A command returns (an exit code at most) or raises RaybuildError; main() alone ends the process.
    tree = ast.parse((CLI_DIR / module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("exit", "abort"), f"{module}:{node.lineno} calls .{node.attr}()"
        if isinstance(node, ast.Name):
            assert node.id != "SystemExit", f"{module}:{node.lineno} raises SystemExit"


# -- exit codes a command returns ---------------------------------------------------------------------------


def _drill(ok: bool) -> DrillReport:
    window = Window(sent=10, failed=0 if ok else 3, latency=None)
    return DrillReport("head-restart", "head", 1.0, 10.0, window, window, 2.0, True, True, True, {})


@pytest.mark.parametrize(("ok", "allow", "code"), [(True, False, 0), (False, False, 1), (False, True, 0)])
def test_a_drill_with_failed_requests_exits_1_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., MainResult], ok: bool, allow: bool, code: int
) -> None:
    monkeypatch.setattr(drill_cli.local, "load_cluster", lambda config: None)
    monkeypatch.setattr(drill_cli, "run_drill", lambda *args, **kwargs: _drill(ok))
    args = ["--config", BUNDLED, "drill", "head-restart", "--json", *(["--allow-failures"] if allow else [])]
    result = run_main(*args)
    payload = json.loads(result.stdout)  # one object, passed or failed
    assert (result.exit_code, payload["ok"], payload["total"]["failed"]) == (code, ok, 0 if ok else 3)
    if code:
        assert (
            payload["error"]
            == "the head-restart drill failed: 3 of 10 requests failed, recovered: True, apps running: True"
        )
        assert result.stderr.splitlines()[0] == f"error: {payload['error']}"
    else:
        assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "kind", "direct"),
    [
        (["worker-drain"], "worker-drain", False),
        (["worker-kill", "--direct"], "worker-kill", True),
        (["worker-restart"], "worker-kill", False),  # the old name
    ],
)
def test_a_worker_drill_goes_through_the_front_unless_direct(
    monkeypatch: pytest.MonkeyPatch,
    run_main: Callable[..., MainResult],
    args: list[str],
    kind: str,
    direct: bool,
) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(*positional: Any, **options: Any) -> DrillReport:
        calls.append((positional[3], options["direct"]))
        return _drill(True)

    monkeypatch.setattr(drill_cli.local, "load_cluster", lambda config: None)
    monkeypatch.setattr(drill_cli, "run_drill", fake)
    result = run_main("--config", BUNDLED, "drill", *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert calls == [(kind, direct)]


def test_up_refuses_an_unknown_front(run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", BUNDLED, "up", "--front", "gateway")
    assert result.exit_code == 2
    assert "'gateway' is not one of 'service', 'ingress'" in result.stderr


def test_version() -> None:
    from raybuild import __version__

    assert invoke("--version").stdout == f"raybuild, version {__version__}\n"


# -- numbers that are not numbers, and down against a daemon that does not answer -------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("drill", "head-restart", "--rps", "nan"),
        ("drill", "head-restart", "--duration", "nan"),
        ("drill", "head-restart", "--duration", "inf"),
        ("drill", "gcs-outage", "--outage", "-inf"),
        ("up", "--timeout", "nan"),
        ("test", "hello", "--timeout", "inf"),
        ("measure", "--timeout", "nan"),
        ("check", "--baseline", "b.json", "--max-size-growth", "nan"),
    ],
)
def test_nan_and_inf_are_usage_errors(run_main: Callable[..., MainResult], args: tuple[str, ...]) -> None:
    result = run_main("--config", BUNDLED, *args)
    assert result.exit_code == 2
    assert "is not a finite number" in result.stderr or "is not in the range" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_drill_whose_client_fell_behind_says_so_and_fails(
    monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., MainResult]
) -> None:
    from raybuild.local.drill import DrillReport, Window

    clean = Window(10, 0, None)
    report = DrillReport("head-restart", "h", 1.0, 10.0, clean, clean, 0.5, True, True, True, {}, 7, True)
    monkeypatch.setattr(drill_cli.local, "load_cluster", lambda config: None)
    monkeypatch.setattr(drill_cli, "run_drill", lambda *args, **kwargs: report)
    result = run_main("--config", BUNDLED, "drill", "head-restart")
    assert result.exit_code == 1
    assert "client saturated: 7 requests could not be sent on time and are not counted above" in result.stdout


def test_down_with_the_daemon_unreachable_is_one_error_line_and_keeps_the_record(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., MainResult]
) -> None:
    from raybuild.cli import down as down_cli
    from raybuild.errors import EngineError
    from raybuild.state import cluster_record_path
    from tests.unit.fakes import FakeEngine, docker_error

    monkeypatch.delenv("DOCKER_HOST", raising=False)  # the hint names it when it is set
    record = cluster_record_path(tmp_project.load())
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"name": "raybuild-serve"}\n')
    engine = FakeEngine()
    unreachable = "Cannot connect to the Docker daemon at unix:///nonexistent. Is the docker daemon running?"
    hint = "start it (sudo scripts/setup starts dockerd) and check `docker info`"  # Engine.ping's
    engine.script(
        "ping", raises=EngineError("the Docker daemon is not reachable", output_tail=unreachable, hint=hint)
    )
    engine.script("container_ids", raises=docker_error("docker ps failed (exit 1)", unreachable))
    monkeypatch.setattr(down_cli, "engine_for", lambda state: engine)
    result = run_main("--config", str(tmp_project.config_path), "down")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: the Docker daemon is not reachable",
        f"  | {unreachable}",
        "hint: start it (sudo scripts/setup starts dockerd) and check `docker info`",
    ]
    assert "removed" not in result.stdout
    assert record.read_text() == '{"name": "raybuild-serve"}\n'
