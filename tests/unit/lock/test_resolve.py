"""Lockfiles: the pure parts with a fake resolver, then (marked `network`) real uv and pip-tools runs."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from raybuild.config import LoadedConfig
from raybuild.errors import LockError, StaleLockError
from raybuild.lock import resolve as locking
from tests.conftest import MainResult, TmpProject
from tests.unit.fakes import FakeResolver

APP_LOCK = """\
aiohttp==3.14.5 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via ray
Numpy==2.4.6 \\
    --hash=sha256:cccc
    # via -r demo.in
orjson==3.13.0 \\
    --hash=sha256:dddd \\
    --hash=sha256:eeee
    # via -r demo.in
pydantic==2.15.0 \\
    --hash=sha256:ffff
ray[serve]==2.60.0 ; python_version >= "3.10" \\
    --hash=sha256:1111
zope.interface==7.0
"""

RAY_LOCK = """\
aiohttp==3.14.5 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
numpy==2.4.6 \\
    --hash=sha256:cccc
pydantic==2.14.4 \\
    --hash=sha256:9999
ray==2.60.0 \\
    --hash=sha256:1111
"""

# What uv 0.13 prints (on stderr, not a terminal) for the two failures users meet most.
UV_CONFLICT = """\
error: No solution found when resolving dependencies
  cause: Because you require numpy<2 and numpy==2.4.6, we can conclude that your requirements are \
unsatisfiable.
"""
UV_MISSING = """\
error: No solution found when resolving dependencies
  cause: Because raybuild-no-such-package was not found in the package registry and you require \
raybuild-no-such-package, we can conclude that your requirements are unsatisfiable.
"""
PIP_MISSING = """\
ERROR: Could not find a version that satisfies the requirement raybuild-no-such-package (from versions: none)
ERROR: No matching distribution found for raybuild-no-such-package
"""


# -- parsing ----------------------------------------------------------------------------------------------


def test_parse_pins_normalizes_names_and_ignores_extras_markers_and_hashes() -> None:
    assert locking.parse_pins(APP_LOCK) == {
        "aiohttp": "3.14.5",
        "numpy": "2.4.6",
        "orjson": "3.13.0",
        "pydantic": "2.15.0",
        "ray": "2.60.0",
        "zope-interface": "7.0",
    }


def test_parse_pins_skips_comments_and_options() -> None:
    text = "# numpy==1.0\n--index-url https://example.invalid/simple\n    # via numpy==1.0\nrich==13.9.4\n"
    assert locking.parse_pins(text) == {"rich": "13.9.4"}


def test_extras_lock_keeps_only_what_ray_lacks_with_its_hashes() -> None:
    extras = locking.extras_lock(APP_LOCK, RAY_LOCK)
    # orjson and zope.interface are new; pydantic differs from Ray's pin, so the app layer must carry it.
    assert extras == (
        "orjson==3.13.0 \\\n    --hash=sha256:dddd \\\n    --hash=sha256:eeee\n"
        "pydantic==2.15.0 \\\n    --hash=sha256:ffff\n"
        "zope.interface==7.0\n"
    )


def test_extras_lock_of_an_app_with_nothing_extra_is_empty() -> None:
    assert locking.extras_lock(RAY_LOCK, RAY_LOCK) == ""


# -- explaining resolver failures -------------------------------------------------------------------------


def explain(project: TmpProject, output: str, requirements: str | None = None, app: bool = True) -> LockError:
    """What `raybuild lock` says when the resolver printed ``output`` for the demo app (or the Ray lock)."""
    if requirements is not None:
        project.requirements.write_text(requirements)
    config = project.load()
    target = locking.app_target(config, config.apps[0]) if app else locking.ray_target(config)
    return locking.explain_failure(config, target, output)


def test_explain_conflict_names_the_app_pin_and_rays_pin(tmp_project: TmpProject) -> None:
    ray_lock = tmp_project.root / "lockfiles" / "ray.txt"
    ray_lock.parent.mkdir()
    ray_lock.write_text(RAY_LOCK)
    error = explain(tmp_project, UV_CONFLICT, "numpy<2\n")
    assert error.message == (
        "app 'demo' conflicts with the shared Ray lock: numpy<2 (app) vs numpy==2.4.6 (Ray's lock)"
    )
    assert error.hint is not None


def test_explain_missing_package_names_the_app_and_the_package(tmp_project: TmpProject) -> None:
    error = explain(tmp_project, UV_MISSING, "raybuild-no-such-package\n")
    assert error.message == "app 'demo': package 'raybuild-no-such-package' does not exist on the index"


def test_explain_missing_package_from_pip_tools_names_the_package(tmp_project: TmpProject) -> None:
    error = explain(tmp_project, PIP_MISSING, "raybuild-no-such-package\n")
    assert error.message == "app 'demo': package 'raybuild-no-such-package' does not exist on the index"


def test_explain_other_failures_keeps_the_resolvers_cause(tmp_project: TmpProject) -> None:
    output = "error: No solution found\n  cause: Because foo>=2 requires bar<1, foo>=2 cannot be used.\n"
    error = explain(tmp_project, output, "foo>=2\n")
    assert (
        error.message == "app 'demo': cannot resolve: Because foo>=2 requires bar<1, foo>=2 cannot be used."
    )
    assert error.hint == "check the app's requirements file"


# What uv 0.13.9 printed here for the failures that are not the app's fault (run by hand, 2026-11-30).
UV_NO_WHEELS = """\
error: No solution found when resolving dependencies
  cause: Because ray[serve]==2.60.0 has no wheels with a matching Python implementation tag (e.g., `cp39`) \
and you require ray[serve]==2.60.0, we can conclude that your requirements are unsatisfiable.

hint: You require CPython 3.9 (`cp39`), but we only found wheels for `ray` (v2.60.0) with the following \
Python implementation tags: `cp310`, `cp311`, `cp312`, `cp313`, `cp314`
"""
UV_NO_RAY_VERSION = """\
error: No solution found when resolving dependencies
  cause: Because there is no version of ray[serve]==2.99.0 and you require ray[serve]==2.99.0, we can \
conclude that your requirements are unsatisfiable.
"""
PIP_NO_RAY_VERSION = """\
ERROR: Could not find a version that satisfies the requirement ray[serve]==2.99.0 (from versions: 2.59.0)
ERROR: No matching distribution found for ray[serve]==2.99.0
"""
UV_INDEX_DOWN = """\
error: Request failed after 3 retries in 8.6s
  cause: Failed to fetch: http://127.0.0.1:9/simple/ray/
  cause: error sending request for url (http://127.0.0.1:9/simple/ray/)
  cause: client error (Connect)
  cause: tcp connect error
  cause: Connection refused (os error 111)
"""
PIP_INDEX_DOWN = """\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection \
broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f>: Failed to \
establish a new connection: [Errno 111] Connection refused')': /simple/ray/
ERROR: Could not find a version that satisfies the requirement ray[serve]==2.60.0 (from versions: none)
ERROR: No matching distribution found for ray[serve]==2.60.0
"""


def test_python_without_wheels_names_project_python(tmp_project: TmpProject) -> None:
    error = explain(tmp_project, UV_NO_WHEELS, app=False)
    assert error.message == (
        'project.python = "3.11": ray[serve]==2.60.0 has no wheels for Python 3.11 '
        "(it has wheels for 3.10, 3.11, 3.12, 3.13, 3.14)"
    )
    assert "[project].python" in (error.hint or "")
    assert "requirements" not in (error.hint or "")


@pytest.mark.parametrize("output", [UV_NO_RAY_VERSION, PIP_NO_RAY_VERSION], ids=["uv", "pip-tools"])
def test_a_ray_version_the_index_lacks_names_project_ray_version(
    tmp_project: TmpProject, output: str
) -> None:
    error = explain(tmp_project, output, app=False)
    assert (
        error.message
        == 'project.ray_version = "2.60.0": Ray 2.99.0 is not on the index (https://pypi.org/simple)'
    )
    assert "[project].ray_version" in (error.hint or "")


@pytest.mark.parametrize("output", [UV_INDEX_DOWN, PIP_INDEX_DOWN], ids=["uv", "pip-tools"])
def test_an_index_that_does_not_answer_names_the_index_url(tmp_project: TmpProject, output: str) -> None:
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace(
            'python = "3.11"\n', 'python = "3.11"\nindex_url = "http://127.0.0.1:9/simple"\n'
        )
    )
    error = explain(tmp_project, output, app=False)
    assert error.message.startswith(
        "the package index http://127.0.0.1:9/simple ([project].index_url) did not answer: "
    )
    assert "Connection refused" in error.message
    assert "[project].index_url" in (error.hint or "")


def test_the_default_index_not_answering_says_how_to_choose_another(tmp_project: TmpProject) -> None:
    error = explain(tmp_project, UV_INDEX_DOWN)
    assert error.message == (
        "the package index https://pypi.org/simple (the default) did not answer: "
        "Connection refused (os error 111)"
    )
    assert "set [project].index_url" in (error.hint or "")


def test_pip_tools_missing_names_the_extra(tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "piptools" else real(name, *a)
    )
    config = tmp_project.load().with_resolver("pip-tools")
    resolver = FakeResolver()
    with pytest.raises(LockError) as caught:
        locking.lock(config, config.apps, runner=resolver)
    assert caught.value.message.startswith(
        "resolver pip-tools (--resolver or [project].resolver) needs pip-tools"
    )
    assert "raybuild[pip-tools]" in (caught.value.hint or "")
    assert resolver.commands == []


# -- inputs hash, header and staleness, with a fake resolver ----------------------------------------------


def locked(project: TmpProject, resolver: FakeResolver | None = None) -> LoadedConfig:
    config = project.load()
    locking.lock(config, config.apps, runner=resolver or FakeResolver())
    return config


def test_header_records_how_to_regenerate_the_target_and_the_inputs_hash(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    target = locking.app_target(config, config.apps[0])
    text = config.lockfile(config.apps[0]).read_text()
    body = text.split("\n", 5)[5]
    assert text.startswith(
        "# This file is generated by raybuild. Do not edit it.\n"
        "# Regenerate it with: raybuild lock demo\n"
        "# Target: Python 3.11, x86_64-manylinux_2_36, Ray 2.60.0, resolver uv\n"
        f"# raybuild-inputs-sha256: {target.inputs_hash(config)}\n"
        f"# raybuild-body-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n"
    )
    assert "orjson==1.0" in text and "ray==1.0" in text
    assert locking.stored_hash(config.lockfile(config.apps[0])) == target.inputs_hash(config)


def test_app_requirements_get_rays_pin_and_the_ray_lock_as_constraint(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    target = locking.app_target(config, config.apps[0])
    assert target.requirements == "orjson\nray[serve]==2.60.0\n"
    assert target.constraint == config.ray_lockfile()
    assert locking.ray_target(config).requirements == "ray[serve]==2.60.0\n"


def test_lockfile_text_does_not_depend_on_the_working_directory(
    tmp_project: TmpProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = locked(tmp_project)
    text = config.lockfile(config.apps[0]).read_text()
    assert "#   -c lockfiles/ray.txt" in text
    assert "# via -r demo.in" in text
    assert str(tmp_path) not in text
    assert "raybuild-lock-" not in text


def test_fresh_locks_are_not_stale(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    assert locking.stale(config, config.apps) == []
    locking.check(config, config.apps)


def test_missing_lockfiles_are_stale(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert locking.stale(config, config.apps) == ["lockfiles/ray.txt", "lockfiles/demo.txt"]
    with pytest.raises(StaleLockError) as caught:
        locking.check(config, config.apps)
    assert caught.value.stale == ["lockfiles/ray.txt", "lockfiles/demo.txt"]
    assert not config.lock_dir().exists(), "checking must write nothing"


def test_changed_requirements_make_only_that_app_stale(tmp_project: TmpProject) -> None:
    locked(tmp_project)
    tmp_project.requirements.write_text("orjson\nrich\n")
    config = tmp_project.load()
    assert locking.stale(config, config.apps) == ["lockfiles/demo.txt"]


def test_changed_ray_version_makes_every_lock_stale(tmp_project: TmpProject) -> None:
    locked(tmp_project)
    tmp_project.write_config(tmp_project.config_path.read_text().replace("2.60.0", "2.61.0"))
    config = tmp_project.load()
    assert locking.stale(config, config.apps) == ["lockfiles/ray.txt", "lockfiles/demo.txt"]


def test_a_changed_ray_lock_makes_the_apps_stale(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    ray = locking.ray_target(config)
    # As a relock of Ray alone leaves it: new pins under a matching header.
    ray.path.write_text(locking.lockfile_text(ray, config, "extra==1.0\n"))
    assert locking.stale(config, config.apps) == ["lockfiles/demo.txt"]


def test_changed_resolver_makes_every_lock_stale(tmp_project: TmpProject) -> None:
    config = locked(tmp_project).with_resolver("pip-tools")
    assert locking.stale(config, config.apps) == ["lockfiles/ray.txt", "lockfiles/demo.txt"]


def test_an_up_to_date_ray_lock_is_not_recompiled(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    resolver = FakeResolver()
    results = locking.lock(config, config.apps, runner=resolver)
    assert [r.name for r in results] == ["demo"]
    assert len(resolver.commands) == 1
    assert results[0].changed is False


def test_uv_command_targets_the_image_python_and_platform(tmp_project: TmpProject) -> None:
    resolver = FakeResolver()
    locked(tmp_project, resolver)
    command = resolver.commands[-1]
    assert command[1:3] == ["pip", "compile"]
    for flag, value in [("--python-version", "3.11"), ("--python-platform", "x86_64-manylinux_2_36"),
                        ("--torch-backend", "cpu")]:  # fmt: skip
        assert command[command.index(flag) + 1] == value
    assert "--generate-hashes" in command


def test_pip_tools_refuses_a_host_python_other_than_the_projects(tmp_project: TmpProject) -> None:
    other = "3.10" if sys.version_info[:2] != (3, 10) else "3.12"
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace('python = "3.11"', f'python = "{other}"')
    )
    config = tmp_project.load().with_resolver("pip-tools")
    with pytest.raises(LockError) as caught:
        locking.lock(config, config.apps, runner=FakeResolver())
    assert f"the images use {other}" in caught.value.message


def test_resolver_env_drops_pip_settings_that_change_the_resolution() -> None:
    host = {
        "PATH": "/usr/bin",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple",
        "PIP_INDEX_URL": "https://mirror.invalid/simple",
        "PIP_CONSTRAINT": "/etc/constraints.txt",
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
        "PIP_DEFAULT_TIMEOUT": "180",
    }
    env = locking.resolver_env(host)
    assert env == {
        "PATH": "/usr/bin",
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
        "PIP_DEFAULT_TIMEOUT": "180",
        "PIP_CONFIG_FILE": os.devnull,
    }


def test_a_failed_compile_keeps_the_previous_lockfile(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    lockfile = config.lockfile(config.apps[0])
    before = lockfile.read_text()
    tmp_project.requirements.write_text("numpy<2\n")
    config = tmp_project.load()
    with pytest.raises(LockError) as caught:
        locking.lock(config, config.apps, runner=FakeResolver(fail_with=UV_CONFLICT))
    assert caught.value.message.startswith("app 'demo': cannot resolve: Because you require numpy<2")
    assert lockfile.read_text() == before
    assert sorted(p.name for p in config.lock_dir().iterdir()) == ["demo.txt", "ray.txt"], (
        "no temp files left"
    )


def test_lock_writes_nothing_when_the_output_is_unchanged(tmp_project: TmpProject) -> None:
    config = locked(tmp_project)
    lockfile = config.lockfile(config.apps[0])
    stamp = lockfile.stat().st_mtime_ns
    os.utime(lockfile, ns=(stamp - 10**9, stamp - 10**9))
    result = locking.lock(config, config.apps, runner=FakeResolver())[-1]
    assert result.changed is False
    assert lockfile.stat().st_mtime_ns == stamp - 10**9


# -- real resolvers against PyPI ---------------------------------------------------------------------------


def _entries(text: str) -> list[str]:
    """Each requirement entry of a lockfile: its pin line and the lines that follow it."""
    return re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 5)[5].strip())


def _error_line(stderr: str) -> str:
    """The one error line, after checking that nothing but progress and a hint surrounds it."""
    lines = [line for line in stderr.splitlines() if not line.startswith("==> ")]
    assert "Traceback" not in stderr
    assert lines and lines[0].startswith("error: "), stderr
    assert all(line.startswith("hint: ") for line in lines[1:]), stderr
    return lines[0]


def _assert_consistent_with_ray(config: LoadedConfig, resolver: str) -> None:
    ray_text = config.ray_lockfile().read_text()
    app_text = config.lockfile(config.apps[0]).read_text()
    for text, regenerate in [(ray_text, "raybuild lock"), (app_text, "raybuild lock demo")]:
        lines = text.splitlines()
        assert lines[0] == "# This file is generated by raybuild. Do not edit it."
        assert lines[1] == f"# Regenerate it with: {regenerate}"
        assert lines[2] == f"# Target: Python 3.11, x86_64-manylinux_2_36, Ray 2.60.0, resolver {resolver}"
        assert re.fullmatch(r"# raybuild-inputs-sha256: [0-9a-f]{64}", lines[3])
        assert re.fullmatch(r"# raybuild-body-sha256: [0-9a-f]{64}", lines[4])
        for entry in _entries(text):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"
        # Nothing from the host may leak into a committed lockfile: no local indexes, no temporary paths.
        assert "--find-links" not in text and "--extra-index-url" not in text
        assert "/tmp" not in text and "raybuild-lock-" not in text
    ray_pins = locking.parse_pins(ray_text)
    app_pins = locking.parse_pins(app_text)
    assert ray_pins["ray"] == "2.60.0" == app_pins["ray"]
    assert "orjson" in app_pins and "orjson" not in ray_pins
    shared = set(ray_pins) & set(app_pins)
    assert shared == set(ray_pins), "an app lock must contain all of Ray's lock"
    assert {name: app_pins[name] for name in shared} == ray_pins


@pytest.mark.network
def test_uv_lock_for_real(tmp_project: TmpProject, run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", str(tmp_project.config_path), "lock")
    assert result.exit_code == 0, result.stderr
    config = tmp_project.load()
    _assert_consistent_with_ray(config, "uv")
    assert locking.stale(config, config.apps) == []

    assert run_main("--config", str(tmp_project.config_path), "lock", "--check").exit_code == 0

    tmp_project.requirements.write_text("orjson\nrich\n")
    result = run_main("--config", str(tmp_project.config_path), "lock", "--check")
    assert result.exit_code == 1
    assert _error_line(result.stderr) == (
        "error: lockfiles/demo.txt: out of date: its requirements, the Ray lock or [project] changed since "
        "it was locked"
    )


@pytest.mark.network
def test_uv_conflict_with_rays_pin_names_both(
    tmp_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    assert run_main("--config", str(tmp_project.config_path), "lock").exit_code == 0
    ray_numpy = locking.parse_pins(tmp_project.load().ray_lockfile().read_text())["numpy"]
    assert ray_numpy.startswith("2.")
    before = (tmp_project.root / "lockfiles" / "demo.txt").read_text()

    tmp_project.requirements.write_text("numpy<2\n")
    result = run_main("--config", str(tmp_project.config_path), "lock", "demo")
    assert result.exit_code == 1
    assert _error_line(result.stderr) == (
        "error: app 'demo' conflicts with the shared Ray lock: "
        f"numpy<2 (app) vs numpy=={ray_numpy} (Ray's lock)"
    )
    assert (tmp_project.root / "lockfiles" / "demo.txt").read_text() == before


@pytest.mark.network
def test_uv_missing_package_names_app_and_package(
    tmp_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    tmp_project.requirements.write_text("raybuild-no-such-package-3f9c1e\n")
    result = run_main("--config", str(tmp_project.config_path), "lock")
    assert result.exit_code == 1
    assert _error_line(result.stderr) == (
        "error: app 'demo': package 'raybuild-no-such-package-3f9c1e' does not exist on the index"
    )


@pytest.mark.network
@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="pip-tools resolves for the running Python, 3.11")
def test_pip_tools_lock_for_real(tmp_project: TmpProject, run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", str(tmp_project.config_path), "lock", "--resolver", "pip-tools")
    assert result.exit_code == 0, result.stderr
    config = tmp_project.load().with_resolver("pip-tools")
    _assert_consistent_with_ray(config, "pip-tools")
    assert locking.stale(config, config.apps) == []
    check = run_main("--config", str(tmp_project.config_path), "lock", "--check", "--resolver", "pip-tools")
    assert check.exit_code == 0
