"""raybuild.toml validation: every mistake is one line naming the file, the key and what is allowed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from raybuild.config import load_config, load_gate_config
from raybuild.errors import ConfigError
from tests.conftest import PROJECT_TOML, MainResult, TmpProject

SECOND_APP = """
[[apps]]
name = "{name}"
path = "apps/{name}"
requirements = "apps/{name}/requirements.in"
import_path = "{module}_app:app"
route_prefix = "{route}"

[[apps.deployments]]
name = "Second"
num_replicas = 1
"""


def config_error(project: TmpProject, text: str) -> ConfigError:
    project.write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(project.config_path)
    error = caught.value
    assert "\n" not in error.message, "a config error must be a single line"
    return error


def replaced(old: str, new: str) -> str:
    assert old in PROJECT_TOML, old
    return PROJECT_TOML.replace(old, new, 1)


def test_the_fixture_project_is_valid(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert [app.name for app in config.apps] == ["demo"]
    assert config.root == tmp_project.root.resolve()
    assert config.requirements_file(config.apps[0]).read_text() == "orjson\n"


def test_a_folder_resolves_to_its_raybuild_toml(tmp_project: TmpProject) -> None:
    assert load_config(tmp_project.root).path == tmp_project.config_path.resolve()


@pytest.mark.parametrize(
    ("old", "new", "key", "allowed"),
    [
        ("[project]", 'colour = "blue"\n[project]', "colour", ["apps", "base", "cluster", "gate", "project"]),
        ('python = "3.11"', 'python = "3.11"\npyton = "3.12"', "project.pyton", ["python", "ray_version"]),
        ('route_prefix = "/demo"', 'route_prefix = "/demo"\nroute = "/x"', "apps[0].route",
         ["import_path", "route_prefix", "workers"]),
        ("num_replicas = 1", "num_replicas = 1\nreplicas = 2", "apps[0].deployments[0].replicas",
         ["autoscaling", "num_replicas", "ray_actor_options"]),
    ],
    ids=["top-level", "project", "app", "deployment"],
)  # fmt: skip
def test_unknown_key_names_it_and_lists_the_allowed_keys(
    tmp_project: TmpProject, old: str, new: str, key: str, allowed: list[str]
) -> None:
    error = config_error(tmp_project, replaced(old, new))
    assert error.message.startswith("raybuild.toml: ")
    assert f"unknown key '{key}'" in error.message
    listed = re.search(r"\(allowed here: ([^)]*)\)$", error.message)
    assert listed is not None, error.message
    assert set(allowed) <= set(listed.group(1).split(", "))


def test_unknown_key_lists_exactly_the_keys_of_that_table(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced("num_replicas = 1", "num_replicas = 1\nreplicas = 2"))
    assert error.message.endswith("(allowed here: autoscaling, name, num_replicas, ray_actor_options)")


def test_wrong_type_names_the_key_the_expected_type_and_the_value(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced('python = "3.11"', "python = 3.11"))
    assert error.message.startswith("raybuild.toml: key 'project.python': ")
    assert "valid string" in error.message
    assert "got 3.11" in error.message


def test_wrong_type_in_a_deployment(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced("num_replicas = 1", 'num_replicas = "1"'))
    assert "key 'apps[0].deployments[0].num_replicas'" in error.message
    assert "valid integer" in error.message


def test_duplicate_app_name(tmp_project: TmpProject) -> None:
    tmp_project.add_app("other")
    text = PROJECT_TOML + SECOND_APP.format(name="other", module="other", route="/other")
    text = text.replace('name = "other"', 'name = "demo"')
    error = config_error(tmp_project, text)
    assert error.message.startswith("raybuild.toml: ")
    assert "apps[1].name" in error.message
    assert "duplicate name 'demo'" in error.message
    assert "apps[0]" in error.message


def test_duplicate_route_prefix(tmp_project: TmpProject) -> None:
    tmp_project.add_app("other")
    error = config_error(tmp_project, PROJECT_TOML + SECOND_APP.format(name="other", module="other",
                                                                       route="/demo"))  # fmt: skip
    assert "apps[1].route_prefix" in error.message
    assert "duplicate route_prefix '/demo'" in error.message


def test_two_distinct_apps_are_fine(tmp_project: TmpProject) -> None:
    tmp_project.add_app("other")
    tmp_project.write_config(PROJECT_TOML + SECOND_APP.format(name="other", module="other", route="/other"))
    assert [app.name for app in tmp_project.load().apps] == ["demo", "other"]


@pytest.mark.parametrize("bad", ["demo_app", "demo_app:", "demo-app:app", ":app", "demo_app:app:x"])
def test_import_path_must_be_module_colon_attr(tmp_project: TmpProject, bad: str) -> None:
    error = config_error(tmp_project, replaced('import_path = "demo_app:app"', f'import_path = "{bad}"'))
    assert error.message.startswith("raybuild.toml: key 'apps[0].import_path': ")
    assert "module:attr" in error.message


def test_dotted_import_path_is_accepted(tmp_project: TmpProject) -> None:
    tmp_project.write_config(
        replaced('import_path = "demo_app:app"', 'import_path = "pkg.demo_app:build.app"')
    )
    assert tmp_project.load().apps[0].import_path == "pkg.demo_app:build.app"


def test_missing_app_directory(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced('path = "apps/demo"', 'path = "apps/nowhere"'))
    assert error.message.startswith("raybuild.toml: key 'apps[0].path': ")
    assert "'apps/nowhere'" in error.message
    assert "does not exist" in error.message


def test_missing_requirements_file(tmp_project: TmpProject) -> None:
    tmp_project.requirements.unlink()
    error = config_error(tmp_project, PROJECT_TOML)
    assert error.message.startswith("raybuild.toml: key 'apps[0].requirements': ")
    assert "'apps/demo/requirements.in'" in error.message
    assert error.hint is not None


def test_bad_device_lists_the_allowed_values(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced("import_path", 'device = "tpu"\nimport_path'))
    assert error.message.startswith("raybuild.toml: key 'apps[0].device': ")
    assert "'cpu' or 'gpu'" in error.message
    assert "got 'tpu'" in error.message


def test_env_value_must_be_one_line(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced("import_path", 'env = { MOTD = "two\\nlines" }\nimport_path'))
    assert error.message.startswith("raybuild.toml: key 'apps[0].env': ")
    assert "'MOTD' must be a single line" in error.message


def test_num_replicas_and_autoscaling_are_exclusive(tmp_project: TmpProject) -> None:
    text = replaced(
        "num_replicas = 1", "num_replicas = 1\nautoscaling = { min_replicas = 1, max_replicas = 2 }"
    )
    error = config_error(tmp_project, text)
    assert error.message.startswith("raybuild.toml: key 'apps[0].deployments[0]': ")
    assert "num_replicas or autoscaling, not both" in error.message


def test_invalid_toml_names_the_file_and_the_line(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, replaced('name = "demo-project"', "name = demo-project"))
    assert error.message.startswith("raybuild.toml: not valid TOML: ")
    assert "line 2" in error.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "raybuild.toml")
    assert caught.value.message == f"{tmp_path / 'raybuild.toml'}: no such file"
    assert caught.value.hint is not None and "raybuild init" in caught.value.hint


def test_missing_apps_table(tmp_project: TmpProject) -> None:
    error = config_error(tmp_project, PROJECT_TOML.split("[[apps]]")[0])
    assert error.message == "raybuild.toml: missing required key 'apps'"


# -- the gate's reading: limits only -------------------------------------------------------------------------


def test_gate_config_needs_no_app_folders(tmp_project: TmpProject) -> None:
    # A gate job may check out nothing but the measure files.
    tmp_project.write_config(replaced("[[apps]]", "[gate]\nmax_size_growth = 0.15\n\n[[apps]]"))
    shutil.rmtree(tmp_project.app_dir)
    loaded = load_gate_config(tmp_project.root, required=True)
    assert loaded is not None
    assert loaded.config.gate.max_size_growth == 0.15
    assert loaded.root == tmp_project.root.resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_project.config_path)


def test_gate_config_that_is_missing_is_none_unless_required(tmp_path: Path) -> None:
    assert load_gate_config(tmp_path / "raybuild.toml", required=False) is None
    with pytest.raises(ConfigError) as caught:
        load_gate_config(tmp_path / "raybuild.toml", required=True)
    assert caught.value.message == f"{tmp_path / 'raybuild.toml'}: no such file"
    assert caught.value.hint is not None and "--config" in caught.value.hint


def test_gate_config_that_is_invalid_is_an_error_not_the_defaults(tmp_project: TmpProject) -> None:
    tmp_project.write_config(replaced("[[apps]]", "[gate]\nmax_size_grwth = 0.5\n\n[[apps]]"))
    with pytest.raises(ConfigError, match=r"unknown key 'gate\.max_size_grwth'"):
        load_gate_config(tmp_project.config_path, required=False)


# -- what the user sees: main() turns the error into one line, --debug brings the traceback back ----------


def test_cli_prints_one_error_line_and_exits_1(
    tmp_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    tmp_project.write_config(replaced('python = "3.11"', 'python = "3.11"\npyton = "3.12"'))
    result = run_main("--config", str(tmp_project.config_path), "list")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: raybuild.toml: unknown key 'project.pyton'")
    assert all(line.startswith("hint: ") for line in lines[1:])
    assert len(lines) <= 2
    assert "Traceback" not in result.stderr


def _python_m_raybuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAYBUILD_")}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "raybuild", *args], capture_output=True, text=True,
                          check=False, env=env)  # fmt: skip


def test_python_m_raybuild_hides_the_traceback(tmp_project: TmpProject) -> None:
    tmp_project.write_config(replaced("import_path", 'device = "tpu"\nimport_path'))
    result = _python_m_raybuild("--config", str(tmp_project.config_path), "list")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(":", 1)[0] for line in lines] in (["error"], ["error", "hint"])
    assert "apps[0].device" in lines[0]


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(tmp_project: TmpProject, how: str) -> None:
    tmp_project.write_config(replaced("import_path", 'device = "tpu"\nimport_path'))
    args = ["--config", str(tmp_project.config_path), "list"]
    if how == "option":
        result = _python_m_raybuild("--debug", *args)
    else:
        result = _python_m_raybuild(*args, env={"RAYBUILD_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "raybuild.errors.ConfigError" in result.stderr


def test_limits_have_defaults_and_bounds(tmp_project: TmpProject) -> None:
    limits = tmp_project.load().config.limits
    assert (limits.code_file_mb, limits.registry_deadline_s, limits.registry_attempts) == (50, 900, 4)
    tmp_project.append_config("[limits]\ncode_file_mb = 200\nregistry_deadline_s = 60\n")
    assert tmp_project.load().config.limits.code_file_mb == 200
    tmp_project.append_config("registry_attempts = 0\n")
    error = config_error(tmp_project, tmp_project.config_path.read_text())
    assert error.message.startswith("raybuild.toml: key 'limits.registry_attempts': ")
    assert "greater than or equal to 1" in error.message


def test_raybuild_registry_overrides_the_projects_registry(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI points every command at a registry that outlives the job (see .github/workflows/images.yml)."""
    assert tmp_project.load().project.registry == "127.0.0.1:5000/demo"
    monkeypatch.setenv("RAYBUILD_REGISTRY", "ghcr.io/acme/raybuild/")
    assert tmp_project.load().project.registry == "ghcr.io/acme/raybuild"
    monkeypatch.setenv("RAYBUILD_REGISTRY", "")
    assert tmp_project.load().project.registry == "127.0.0.1:5000/demo"


def test_ha_must_be_a_boolean(tmp_project: TmpProject) -> None:
    error = config_error(
        tmp_project, replaced('route_prefix = "/demo"', 'route_prefix = "/demo"\nha = "yes"')
    )
    assert error.message.startswith("raybuild.toml: key 'apps[0].ha': ")
    assert "valid boolean" in error.message


def test_ha_raises_every_replica_count_to_two_and_keeps_higher_ones(tmp_project: TmpProject) -> None:
    tmp_project.write_config(
        replaced(
            'route_prefix = "/demo"', 'route_prefix = "/demo"\nha = true\nworkers = { max_replicas = 5 }'
        )
        + '\n[[apps.deployments]]\nname = "Auto"\nautoscaling = { min_replicas = 0, max_replicas = 1 }\n'
        + '\n[[apps.deployments]]\nname = "Many"\nnum_replicas = 3\n'
        + '\n[[apps.deployments]]\nname = "Unset"\n'
    )
    app = tmp_project.load().apps[0]
    assert app.ha
    served = app.served()
    replicas = {d.name: d.num_replicas for d in served.deployments}
    assert replicas == {"Demo": 2, "Auto": None, "Many": 3, "Unset": 2}
    auto = served.deployments[1].autoscaling
    assert auto is not None and (auto.min_replicas, auto.max_replicas) == (2, 2)
    workers = served.workers
    assert (workers.replicas, workers.min_replicas, workers.max_replicas) == (2, 2, 5)
    assert app.deployments[0].num_replicas == 1, "the config as written is unchanged"


def test_without_ha_the_app_is_served_as_written(tmp_project: TmpProject) -> None:
    app = tmp_project.load().apps[0]
    assert not app.ha and app.served() is app


# -- [publish] --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('compression = "lz4"', "publish.compression", "'gzip' or 'zstd'"),
        ('compression = "zstd"\ncompression_level = 23', "publish.compression_level", "or equal to 22"),
        ("compression_level = 3", "publish", 'applies to compression = "zstd" only'),
    ],
)  # fmt: skip
def test_bad_publish_compression_is_one_line_naming_the_key(
    tmp_project: TmpProject, table: str, key: str, says: str
) -> None:
    error = config_error(tmp_project, PROJECT_TOML + f"\n[publish]\n{table}\n")
    assert f"key '{key}'" in error.message and says in error.message
    assert "\n" not in error.message


def test_publish_compression_defaults_to_gzip_and_zstd_to_level_19(tmp_project: TmpProject) -> None:
    assert tmp_project.load().config.publish.level is None
    tmp_project.write_config(PROJECT_TOML + '\n[publish]\ncompression = "zstd"\n')
    assert tmp_project.load().config.publish.level == 19
    tmp_project.write_config(PROJECT_TOML + '\n[publish]\ncompression = "zstd"\ncompression_level = 3\n')
    assert tmp_project.load().config.publish.level == 3
