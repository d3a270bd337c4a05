"""The absolute start budget: ``max_t_cold`` seconds, the team's scale-up budget for one new node.

Growth limits compare with a baseline; this one does not. A new or upscaled KubeRay pod pays the image
pull and the head's start before it serves, so the worst measured t_cold (pull plus start on the cold
node) must stay within the budget, from ``[apps.gate]`` or else ``[gate]``. The worst sample, not the
median: the budget is what a scale-up may take, every time.

KubeRay 1.1 and later ignore the RayService's ``deploymentUnhealthySecondThreshold`` and
``serviceUnhealthySecondThreshold`` (kuberay #1656, #1665), so raybuild never renders them and never reads
them as a budget: this is the one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raybuild.config_apps import Gate
from raybuild.verify.results import Measurement


@dataclass(frozen=True)
class Budget:
    seconds: float
    source: str  # "[apps.gate]" or "[gate]": what to edit

    def describe(self) -> str:
        return f"{self.seconds:g} s ({self.source}.max_t_cold)"


@dataclass(frozen=True)
class BudgetRow:
    app: str
    budget: Budget
    worst: float | None  # None: t_cold was not measured (--no-pull, no registry)

    @property
    def exceeded(self) -> bool:
        return self.worst is not None and self.worst > self.budget.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "max_t_cold": self.budget.seconds,
            "source": self.budget.source,
            "worst_t_cold": self.worst,
            "exceeded": self.exceeded,
        }


def budget_for(app: str, project: Gate, apps: Mapping[str, Gate]) -> Budget | None:
    own = apps.get(app)
    if own is not None and own.max_t_cold is not None:
        return Budget(own.max_t_cold, "[apps.gate]")
    if project.max_t_cold is not None:
        return Budget(project.max_t_cold, "[gate]")
    return None


def check_budgets(current: Measurement, project: Gate, apps: Mapping[str, Gate]) -> tuple[BudgetRow, ...]:
    """One row per current app that has a budget."""
    rows = []
    for name, app in current.apps.items():
        budget = budget_for(name, project, apps)
        if budget is not None:
            t_cold = app.startup.t_cold
            rows.append(BudgetRow(name, budget, None if t_cold is None else t_cold.max))
    return tuple(rows)


def markdown(rows: tuple[BudgetRow, ...]) -> list[str]:
    if not rows:
        return []
    lines = [
        "### Start budget (worst t_cold)",
        "",
        "| App | Worst t_cold | Budget | Verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        worst = "not measured" if row.worst is None else f"{row.worst:.2f} s"
        verdict = "**over budget**" if row.exceeded else ("n/a" if row.worst is None else "ok")
        app = row.app.replace("|", "\\|")
        lines.append(f"| {app} | {worst} | {row.budget.describe()} | {verdict} |")
    return lines


def failures(rows: tuple[BudgetRow, ...]) -> list[str]:
    """``hello: worst t_cold 14.20 s > 12 s ([apps.gate].max_t_cold)`` for each app over its budget."""
    return [
        f"{row.app}: worst t_cold {row.worst:.2f} s > {row.budget.describe()}" for row in rows if row.exceeded
    ]
