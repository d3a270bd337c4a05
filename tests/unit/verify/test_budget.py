"""max_t_cold: an absolute start budget per app, from [apps.gate] or [gate], checked on the worst t_cold."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from raybuild.config_apps import Gate
from raybuild.verify.budget import Budget, budget_for, check_budgets, failures
from raybuild.verify.gate import ThresholdPolicy, compare
from raybuild.verify.results import AppResult, stat
from tests.unit.verify.test_gate import app, measurement

if TYPE_CHECKING:
    from tests.conftest import MainResult


def with_cold(samples: list[float]) -> AppResult:
    base = app()
    return base.model_copy(update={"startup": base.startup.model_copy(update={"t_cold": stat(samples)})})


def test_the_apps_budget_wins_over_the_projects() -> None:
    project, apps = Gate(max_t_cold=20.0), {"hello": Gate(max_t_cold=10.0), "other": Gate()}
    assert budget_for("hello", project, apps) == Budget(10.0, "[apps.gate]")
    assert budget_for("other", project, apps) == Budget(20.0, "[gate]")
    assert budget_for("other", Gate(), apps) is None


def test_the_worst_sample_is_judged_not_the_median() -> None:
    current = measurement({"hello": with_cold([8.0, 9.0, 12.5])})
    (row,) = check_budgets(current, Gate(max_t_cold=12.0), {})
    assert row.worst == 12.5 and row.exceeded
    assert failures((row,)) == ["hello: worst t_cold 12.50 s > 12 s ([gate].max_t_cold)"]
    (fine,) = check_budgets(current, Gate(max_t_cold=12.5), {})
    assert not fine.exceeded  # exactly the budget passes


def test_an_unmeasured_t_cold_is_reported_not_failed() -> None:
    current = measurement({"hello": app(cold=None)})
    (row,) = check_budgets(current, Gate(max_t_cold=1.0), {})
    assert row.worst is None and not row.exceeded


def test_the_gate_fails_over_budget_even_without_growth() -> None:
    same = measurement({"hello": app(cold=12.0)})  # t_cold samples 6, 12, 36
    report = compare(same, same, None)
    assert not report.failed
    report = compare(same, same, ThresholdPolicy(project=Gate(max_t_cold=30.0)))
    assert report.failed and not report.regressions
    assert "over the start budget: hello: worst t_cold 36.00 s > 30 s ([gate].max_t_cold)" in report.summary()
    assert "| hello | 36.00 s | 30 s ([gate].max_t_cold) | **over budget** |" in report.to_markdown()
    assert report.to_dict()["t_cold_budget"][0]["exceeded"] is True


def test_check_fails_naming_the_app_and_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., MainResult]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYBUILD_CONFIG", raising=False)
    measurement({"hello": app(cold=12.0)}).write(tmp_path / ".raybuild" / "measure.json")
    measurement({"hello": app(cold=12.0)}).write(tmp_path / "baseline.json")
    (tmp_path / "raybuild.toml").write_text(
        '[[apps]]\nname = "hello"\npath = "apps/hello"\nrequirements = "apps/hello/requirements.in"\n'
        'import_path = "m:app"\nroute_prefix = "/hello"\ngate = { max_t_cold = 20 }\n\n'
        '[[apps.deployments]]\nname = "Hello"\n'
    )
    result = run_main("check", "--baseline", "baseline.json", "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["error"] == (
        "gate failed: over the start budget: hello: worst t_cold 36.00 s > 20 s ([apps.gate].max_t_cold)"
    )
    assert "scale-up budget" in payload["hint"]
    assert payload["pull_delta"][0]["status"] == "unchanged"
