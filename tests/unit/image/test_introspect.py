"""The build-time import check: the probe's report, turned into deployments or one error naming the cause."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raybuild.engine import Engine
from raybuild.errors import BuildError
from raybuild.image.introspect import MARK, PROBE, AppException, introspect, parse_report
from raybuild.interrupts import Interrupted
from raybuild.labels import object_labels
from tests.unit.fakes import DOCKER, FakeEngine, FakeRunner, container_id, make_app
from tests.unit.serve_failures import CONSTRUCTOR_TRACEBACK, IMPORT_TRACEBACK


def _report(**fields: object) -> str:
    return "some import noise\n" + MARK + json.dumps(fields) + "\n"


def test_a_good_report_lists_the_deployments_serve_built() -> None:
    deployments = [{"name": "Hello", "num_replicas": 2}, {"name": "Ingress"}]
    app = parse_report(make_app(), _report(ok=True, deployments=deployments))
    assert app.names == ("Hello", "Ingress")
    assert app.deployments[0] == {"name": "Hello", "num_replicas": 2}


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (
            {
                "ok": False,
                "type": "SyntaxError",
                "message": "invalid syntax",
                "file": "/home/ray/app/pkg/m.py",
                "line": 3,
            },
            "demo_app:app does not import as a Serve app: SyntaxError: invalid syntax (pkg/m.py, line 3)",
        ),
        (
            {
                "ok": False,
                "type": "ModuleNotFoundError",
                "message": "No module named 'numpyy'",
                "file": None,
                "line": None,
            },
            "does not import as a Serve app: ModuleNotFoundError: No module named 'numpyy'",
        ),
        (
            {
                "ok": False,
                "type": "AttributeError",
                "message": "module has no attribute 'ap'\nmore",
                "file": "/x.py",
                "line": 9,
            },
            "AttributeError: module has no attribute 'ap' (/x.py, line 9)",
        ),
    ],
)
def test_a_failed_import_is_one_line_with_type_message_and_place(
    report: dict[str, object], message: str
) -> None:
    with pytest.raises(BuildError) as raised:
        parse_report(make_app(), _report(**report))
    assert raised.value.message.startswith("app 'demo': ")
    assert raised.value.message.endswith(message)
    assert "\n" not in raised.value.message
    assert "raybuild build demo" in (raised.value.hint or "")


def test_no_report_at_all_says_so_with_the_output_tail() -> None:
    with pytest.raises(BuildError, match="printed no report: exec format error"):
        parse_report(make_app(), "exec format error\n")


PROJECT = "0123456789abcdef"


def test_introspect_runs_the_probe_offline_in_a_throwaway_container() -> None:
    engine = FakeEngine()
    engine.script("run_python", output=_report(ok=True, deployments=[{"name": "Demo"}]))
    assert introspect(engine, "img:1", make_app(), PROJECT).names == ("Demo",)
    (call,) = engine.calls("run_python")  # run_python runs it with no network (see test_engine)
    assert call.args[0] == "img:1" and call.args[2] == ["demo_app:app", "/home/ray/app"]
    assert call["labels"] == object_labels(PROJECT, "introspect")


def test_a_container_left_running_by_a_timeout_or_an_interruption_is_removed() -> None:
    # The real engine over a fake runner: the client dies, and the container it made keeps running.
    engine = Engine(client=DOCKER)
    engine.runner = runner = FakeRunner()  # type: ignore[assignment]
    runner.expect(DOCKER.path, "run", "--rm", raises=Interrupted(15))
    runner.expect(DOCKER.path, "ps", output=container_id("left-running"))
    runner.expect(DOCKER.path, "rm", "--force", "--volumes")
    with pytest.raises(Interrupted):
        introspect(engine, "img:1", make_app(), PROJECT)
    (run,) = runner.calls(DOCKER.path, "run")
    name = run[run.index("--name") + 1]
    (listed,) = runner.calls(DOCKER.path, "ps")
    assert f"name=^/?{re.escape(name)}$" in listed and f"label=io.raybuild.project={PROJECT}" in listed
    assert runner.calls(DOCKER.path, "rm") == [
        [DOCKER.path, "rm", "--force", "--volumes", container_id("left-running")]
    ]


def _run_probe(tmp_path: Path, code: str, import_path: str) -> str:
    (tmp_path / "mod.py").write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-", import_path, str(tmp_path)],
        input=PROBE.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout


def test_the_probe_reports_the_apps_own_syntax_error_with_its_line(tmp_path: Path) -> None:
    report = json.loads(_run_probe(tmp_path, "x = 1\ndef broken(:\n", "mod:app").split(MARK, 1)[1])
    assert (report["ok"], report["type"], report["file"], report["line"]) == (
        False,
        "SyntaxError",
        str(tmp_path / "mod.py"),
        2,
    )


def test_the_probe_reports_an_error_raised_at_import_in_the_apps_code(tmp_path: Path) -> None:
    report = json.loads(_run_probe(tmp_path, "import json\n\nvalue = 1 / 0\n", "mod:app").split(MARK, 1)[1])
    assert (report["type"], report["message"], report["line"]) == ("ZeroDivisionError", "division by zero", 3)


# -- the same exception, read from a traceback in Serve's status --------------------------------------------


@pytest.mark.parametrize(
    ("text", "described"),
    [
        (
            CONSTRUCTOR_TRACEBACK,
            "FileNotFoundError: model file /models/m.bin is missing (broken_app.py, line 5, in load_model)",
        ),
        (
            IMPORT_TRACEBACK,
            "ModuleNotFoundError: No module named 'not_a_module_anywhere' (importfail_app.py, line 1)",
        ),
        (
            'Traceback (most recent call last):\n  File "/home/ray/app/pkg/m.py", line 4\n    def f(:\n'
            "          ^\nSyntaxError: invalid syntax\n",
            "SyntaxError: invalid syntax (pkg/m.py, line 4)",
        ),
        (
            'Traceback (most recent call last):\n  File "/usr/lib/x.py", line 9, in f\nValueError: bad\n',
            "ValueError: bad",
        ),
    ],
    ids=["constructor", "import", "syntax", "no frame of the app"],
)
def test_a_traceback_from_serve_names_the_exception_and_the_apps_own_frame(text: str, described: str) -> None:
    exception = AppException.from_traceback(text)
    assert exception is not None
    assert exception.describe() == described


@pytest.mark.parametrize("text", ["", "The deployments ['Demo'] are UNHEALTHY.", 'File "x", line 1\n'])
def test_text_without_a_traceback_gives_no_exception(text: str) -> None:
    assert AppException.from_traceback(text) is None


def test_the_probe_and_a_serve_traceback_describe_an_exception_alike() -> None:
    report = {"ok": False, "type": "ZeroDivisionError", "message": "division by zero",
              "file": "/home/ray/app/hello_app.py", "line": 2}  # fmt: skip
    text = (
        'Traceback (most recent call last):\n  File "/home/ray/app/hello_app.py", line 2, in <module>\n'
        "    value = x / 0\nZeroDivisionError: division by zero\n"
    )
    from_serve = AppException.from_traceback(text)
    assert from_serve is not None
    assert AppException.from_report(report).describe() == from_serve.describe()
    assert from_serve.describe() == "ZeroDivisionError: division by zero (hello_app.py, line 2)"
