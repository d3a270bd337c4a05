"""The regression gate: arithmetic, verdicts, threshold precedence, the report and ``raybuild check``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from raybuild.cli import cli, main
from raybuild.config import parse_config
from raybuild.config_apps import Gate
from raybuild.verify.gate import (
    DEFAULT_MAX_SIZE_GROWTH,
    DEFAULT_MAX_STARTUP_GROWTH,
    ThresholdPolicy,
    compare,
    judge,
)
from raybuild.verify.results import AppResult, Measurement, Size, Startup, stat
from tests.conftest import MainResult

MB = 1_000_000


def app(
    uncompressed: int = 300 * MB,
    compressed: int = 100 * MB,
    *,
    head: float | None = 4.0,
    serve: float | None = 8.0,
    cold: float | None = 12.0,
) -> AppResult:
    def timing(median: float | None) -> Any:
        # The extreme samples differ from the median, so a test would notice a gate that compared max/min.
        return None if median is None else stat([median * 0.5, median, median * 3])

    return AppResult(
        image="127.0.0.1:5000/raybuild/x:abc",
        device="cpu",
        size=Size(
            uncompressed=uncompressed,
            compressed=compressed,
            layers=[],
            largest_packages=[],
            shared_bytes=0,
            dive=None,
            prune_saved={},
        ),
        startup=Startup(
            t_head=timing(head), t_worker=None, t_serve=timing(serve), t_pull=None, t_cold=timing(cold)
        ),
    )


def measurement(apps: dict[str, AppResult], ray: str = "2.60.0") -> Measurement:
    return Measurement.now(ray_version=ray, python="3.11", runs=3, apps=apps)


def rows(report: Any) -> dict[tuple[str, str], Any]:
    return {(row.app, row.metric): row for row in report.rows}


# --- arithmetic and verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "current", "limit", "delta", "verdict"),
    [
        (100.0, 100.0, 0.05, 0.0, "ok"),
        (100.0, 105.0, 0.05, 0.05, "ok"),  # exactly the limit passes, despite float rounding
        (100.0, 105.1, 0.05, 0.051, "regression"),
        (100.0, 96.0, 0.05, -0.04, "ok"),
        (100.0, 90.0, 0.05, -0.10, "improved"),
        (4.0, 4.8, 0.20, 0.20, "ok"),
        (4.0, 4.81, 0.20, 0.2025, "regression"),
        (100.0, 100.1, 0.0, 0.001, "regression"),  # a zero limit allows no growth at all
        (0.0, 0.0, 0.05, 0.0, "ok"),
    ],
)
def test_judge(base: float, current: float, limit: float, delta: float, verdict: str) -> None:
    got_delta, got_verdict = judge(base, current, limit)
    assert got_verdict == verdict
    assert got_delta == pytest.approx(delta)


def test_zero_baseline_growth_is_infinite_regression() -> None:
    assert judge(0.0, 1.0, 10.0) == (math.inf, "regression")


@pytest.mark.parametrize(("base", "current"), [(None, 1.0), (1.0, None), (None, None)])
def test_missing_value_is_not_applicable(base: float | None, current: float | None) -> None:
    assert judge(base, current, 0.05) == (None, "n/a")


def test_compare_uses_sizes_and_startup_medians() -> None:
    base = measurement({"hello": app()})
    current = measurement({"hello": app(uncompressed=330 * MB, compressed=101 * MB, serve=10.0, cold=12.5)})
    by_key = rows(compare(base, current))
    assert [metric for (_, metric) in by_key] == [
        "size.uncompressed",
        "size.compressed",
        "startup.t_head",
        "startup.t_serve",
        "startup.t_cold",
    ]
    assert by_key["hello", "size.uncompressed"].verdict == "regression"
    assert by_key["hello", "size.uncompressed"].delta == pytest.approx(0.10)
    assert by_key["hello", "size.compressed"].verdict == "ok"
    assert by_key["hello", "startup.t_head"].verdict == "ok"
    assert by_key["hello", "startup.t_serve"].verdict == "regression"  # median 8 -> 10 is +25% > 20%
    assert by_key["hello", "startup.t_serve"].base == 8.0
    assert by_key["hello", "startup.t_cold"].verdict == "ok"


def test_gate_fails_only_on_regression() -> None:
    base = measurement({"hello": app()})
    assert not compare(base, measurement({"hello": app(uncompressed=200 * MB)})).failed
    assert compare(base, measurement({"hello": app(uncompressed=400 * MB)})).failed


def test_zero_baseline_in_report() -> None:
    base = measurement({"hello": app(compressed=0)})
    report = compare(base, measurement({"hello": app(compressed=5 * MB)}))
    row = rows(report)["hello", "size.compressed"]
    assert (row.delta, row.verdict) == (math.inf, "regression")
    assert "| hello | size.compressed | 0.0 MB | 5.0 MB | +inf | **regression** |" in report.to_markdown()
    assert report.to_dict()["rows"][1]["delta"] == "+inf"
    json.dumps(report.to_dict(), allow_nan=False)  # valid JSON: no Infinity
    assert not compare(base, base).failed


def test_new_app_is_reported_never_failed() -> None:
    report = compare(measurement({"hello": app()}), measurement({"hello": app(), "fresh": app()}))
    fresh = [row for row in report.rows if row.app == "fresh"]
    assert {row.verdict for row in fresh} == {"new"}
    assert fresh[0].current == 300 * MB and fresh[0].base is None
    assert not report.failed
    assert "new: fresh" in report.summary()


def test_removed_app_is_reported_never_failed() -> None:
    report = compare(measurement({"hello": app(), "old": app()}), measurement({"hello": app()}))
    old = [row for row in report.rows if row.app == "old"]
    assert {row.verdict for row in old} == {"removed"}
    assert old[0].base == 300 * MB and old[0].current is None
    assert not report.failed
    assert "removed: old" in report.summary()
    assert "| old | size.uncompressed | 300.0 MB | — | — | removed |" in report.to_markdown()


def test_unmeasured_startup_is_not_applicable() -> None:
    report = compare(measurement({"hello": app(cold=None)}), measurement({"hello": app(head=None)}))
    by_key = rows(report)
    assert by_key["hello", "startup.t_cold"].verdict == "n/a"
    assert by_key["hello", "startup.t_head"].verdict == "n/a"
    assert not report.failed


def test_ray_upgrade_is_noted() -> None:
    report = compare(measurement({"hello": app()}, ray="2.59.0"), measurement({"hello": app()}))
    assert "Note: Ray changed from 2.59.0 to 2.60.0" in report.to_markdown()


# --- thresholds ----------------------------------------------------------------------------------------


def config(gate: dict[str, float] | None = None, app_gate: dict[str, float] | None = None) -> Any:
    def one(name: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "path": f"apps/{name}",
            "requirements": f"apps/{name}/requirements.in",
            "import_path": "m:app",
            "route_prefix": f"/{name}",
            "deployments": [{"name": "D"}],
            **extra,
        }

    data: dict[str, Any] = {"apps": [one("hello", {"gate": app_gate} if app_gate else {}), one("other", {})]}
    if gate:
        data["gate"] = gate
    return parse_config(data, Path("raybuild.toml"))


def test_defaults_without_config() -> None:
    limits = ThresholdPolicy.from_config(None).for_app("hello")
    assert (limits.size.value, limits.size.source) == (DEFAULT_MAX_SIZE_GROWTH, "default")
    assert (limits.startup.value, limits.startup.source) == (DEFAULT_MAX_STARTUP_GROWTH, "default")
    assert (DEFAULT_MAX_SIZE_GROWTH, DEFAULT_MAX_STARTUP_GROWTH) == (0.05, 0.20)


def test_precedence_flag_over_app_over_project_over_default() -> None:
    cfg = config(
        gate={"max_size_growth": 0.10}, app_gate={"max_size_growth": 0.30, "max_startup_growth": 0.5}
    )
    policy = ThresholdPolicy.from_config(cfg)
    hello, other = policy.for_app("hello"), policy.for_app("other")
    assert (hello.size.value, hello.size.source) == (0.30, "[apps.gate]")
    assert (hello.startup.value, hello.startup.source) == (0.5, "[apps.gate]")
    assert (other.size.value, other.size.source) == (0.10, "[gate]")
    assert (other.startup.value, other.startup.source) == (0.20, "default")
    assert policy.for_app("not-in-config") == other

    flagged = ThresholdPolicy.from_config(cfg, max_size_growth=0.01).for_app("hello")
    assert (flagged.size.value, flagged.size.source) == (0.01, "--max-size-growth")
    assert flagged.startup.source == "[apps.gate]"  # only the flag given overrides


def test_zero_flag_is_a_real_limit_not_unset() -> None:
    policy = ThresholdPolicy(project=Gate(max_size_growth=0.5), max_size_growth=0.0)
    assert policy.for_app("hello").size.value == 0.0


def test_per_app_limit_changes_the_verdict_and_is_shown() -> None:
    policy = ThresholdPolicy.from_config(config(app_gate={"max_size_growth": 0.15}))
    base = measurement({"hello": app(), "other": app()})
    grown = measurement({"hello": app(uncompressed=330 * MB), "other": app(uncompressed=330 * MB)})
    report = compare(base, grown, policy)
    assert [(r.app, r.metric) for r in report.regressions] == [("other", "size.uncompressed")]
    markdown = report.to_markdown()
    assert "Max growth: size +5.0% (default), startup +20.0% (default)." in markdown
    assert "Per-app max growth: hello: size +15.0% ([apps.gate]), startup +20.0% (default)." in markdown


# --- the Markdown report ---------------------------------------------------------------------------------


def test_markdown_report() -> None:
    current = measurement({"hello": app()})
    smaller = measurement({"hello": app(uncompressed=270 * MB)})  # a baseline 10% smaller
    markdown = compare(smaller, current, baseline_label="base.json", current_label="new.json").to_markdown()
    assert markdown.startswith(
        "## raybuild image gate\n\n**Gate failed:** 1 regression (hello size.uncompressed)."
    )
    assert "| App | Metric | Baseline | Current | Change | Verdict |" in markdown
    assert "| hello | size.uncompressed | 270.0 MB | 300.0 MB | +11.1% | **regression** |" in markdown
    assert "| hello | size.compressed | 100.0 MB | 100.0 MB | +0.0% | ok |" in markdown
    assert "| hello | startup.t_serve | 8.00 s | 8.00 s | +0.0% | ok |" in markdown
    assert "Baseline `base.json`, current `new.json`." in markdown
    passed = compare(current, current).to_markdown()
    assert "**Gate passed:** no regressions across 1 app (5 metrics compared)." in passed


def test_tiny_drop_does_not_print_negative_zero() -> None:
    report = compare(
        measurement({"a": app(uncompressed=1_000_000_000)}), measurement({"a": app(uncompressed=999_999_000)})
    )
    assert "-0.0%" not in report.to_markdown()


# --- raybuild check --------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """current.json and a baseline 10% smaller, in a folder with no raybuild.toml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYBUILD_CONFIG", raising=False)
    current = tmp_path / ".raybuild" / "measure.json"
    measurement({"hello": app()}).write(current)
    smaller = tmp_path / "baseline.json"
    measurement({"hello": app(uncompressed=270 * MB)}).write(smaller)
    return {"current": current, "smaller": smaller}


def test_check_fails_on_a_smaller_baseline(
    files: dict[str, Path], tmp_path: Path, run_main: Callable[..., MainResult]
) -> None:
    report = tmp_path / "out" / "report.md"
    result = run_main("check", "--baseline", str(files["smaller"]), "--markdown", str(report))
    assert result.exit_code == 1, result.stderr
    assert "| hello | size.uncompressed | 270.0 MB | 300.0 MB | +11.1% | **regression** |" in result.stdout
    assert report.read_text() == result.stdout  # written even though the gate failed
    assert "error: gate failed: 1 metric grew past the limit" in result.stderr.splitlines()
    assert "no raybuild.toml here; using the default limits" in result.stderr


def test_check_passes_against_its_own_baseline(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["check", "--baseline", str(files["current"])])
    assert result.exit_code == 0, result.output
    assert "**Gate passed:**" in result.stdout


def test_check_flag_loosens_the_limit(files: dict[str, Path]) -> None:
    args = ["check", "--baseline", str(files["smaller"]), "--max-size-growth", "0.2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "size +20.0% (--max-size-growth)" in result.stdout


def test_check_json(files: dict[str, Path], run_main: Callable[..., MainResult]) -> None:
    result = run_main("check", "--baseline", str(files["smaller"]), "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)  # one object: the report, and the error with its hint
    assert (payload["ok"], payload["failed"]) == (False, True)
    assert payload["error"] == "gate failed: 1 metric grew past the limit"
    assert "max_size_growth" in payload["hint"]
    assert payload["rows"][0]["verdict"] == "regression"
    assert payload["thresholds"]["apps"]["hello"]["size"] == {"value": 0.05, "source": "default"}


def test_check_uses_raybuild_toml_limits(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "raybuild.toml").write_text(
        '[gate]\nmax_size_growth = 0.15\n\n[[apps]]\nname = "hello"\npath = "apps/hello"\n'
        'requirements = "apps/hello/requirements.in"\nimport_path = "m:app"\nroute_prefix = "/hello"\n\n'
        '[[apps.deployments]]\nname = "Hello"\n'
    )
    # The app folder does not exist: check reads raybuild.toml for its limits only.
    result = CliRunner().invoke(cli, ["check", "--baseline", str(files["smaller"])])
    assert result.exit_code == 0, result.output
    assert "size +15.0% ([gate])" in result.stdout
    tight = CliRunner().invoke(cli, ["check", "--baseline", str(files["smaller"]), "--max-size-growth", ".1"])
    assert tight.exit_code == 1
    assert str(tight.exception) == "gate failed: 1 metric grew past the limit"


def _run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["raybuild", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


def test_main_exit_codes(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Through the real entry point: the exit code check returns must reach the process.
    assert _run_main(monkeypatch, "check", "--baseline", str(files["smaller"])) == 1
    assert _run_main(monkeypatch, "check", "--baseline", str(files["current"])) == 0
    capsys.readouterr()


def test_malformed_baseline_is_one_line(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "raybuild.measure/v0"}')
    assert _run_main(monkeypatch, "check", "--baseline", str(bad)) == 1
    err = capsys.readouterr().err
    expected = "measure document with schema 'raybuild.measure/v0', expected 'raybuild.measure/v1'"
    assert f"error: {bad}: {expected}" in err
    assert "Traceback" not in err


def test_missing_current_names_it(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files["current"].unlink()
    assert _run_main(monkeypatch, "check", "--baseline", str(files["smaller"])) == 1
    err = capsys.readouterr().err
    assert "measure.json: no such file" in err and "raybuild measure" in err


def test_invalid_raybuild_toml_is_an_error_not_defaults(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "raybuild.toml").write_text("[gate]\nmax_size_grwth = 0.5\n")
    assert _run_main(monkeypatch, "check", "--baseline", str(files["current"])) == 1
    assert "unknown key 'gate.max_size_grwth'" in capsys.readouterr().err


def test_explicit_missing_config_is_an_error(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run_main(
        monkeypatch, "--config", "elsewhere/raybuild.toml", "check", "--baseline", str(files["current"])
    )
    assert code == 1
    assert "elsewhere/raybuild.toml: no such file" in capsys.readouterr().err
