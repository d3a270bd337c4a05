"""The regression gate: compare a baseline measurement with the current one, metric by metric.

Sizes are gated by ``max_size_growth`` and cold-start phases by ``max_startup_growth``, both fractions
(0.05 is 5%). Each limit comes from, first to last: the command line, the app's ``[apps.gate]``, the
project's ``[gate]``, then the defaults below. Only a ``regression`` row fails the gate: an app that is new
or removed is reported, never failed, so adding or retiring an app does not need a baseline reset.
Measurements made with ``--scan`` are also compared finding by finding (``vulns``): a HIGH or CRITICAL
finding the baseline did not have fails the gate, and fixed ones are reported as good news.

Two more sections: the start budget (`budget`: an app's worst t_cold past ``max_t_cold`` seconds fails the
gate, whatever the baseline), and the upgrade pull delta (`pulldelta`: the bytes a node that ran the
baseline's image downloads for the current one; reported, never failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raybuild.config import RaybuildConfig
from raybuild.config_apps import Gate
from raybuild.errors import GateError
from raybuild.verify import budget, pulldelta, vulns
from raybuild.verify.results import AppResult, Measurement

DEFAULT_MAX_SIZE_GROWTH = 0.05
# Wider than the size limit: cold starts on shared CI runners vary by 10% or more between identical runs.
DEFAULT_MAX_STARTUP_GROWTH = 0.20
# Absorbs float rounding, so that growth of exactly the limit (100 -> 105 at 5%) passes as documented.
_EPSILON = 1e-9
_MB = 1_000_000  # decimal megabytes, as `docker images` and registries report them

Kind = Literal["size", "startup"]
Verdict = Literal["ok", "regression", "improved", "new", "removed", "n/a"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    read: Callable[[AppResult], float | None]


def _median(pick: Callable[[AppResult], Any]) -> Callable[[AppResult], float | None]:
    def read(app: AppResult) -> float | None:
        timing = pick(app)
        return None if timing is None else float(timing.median)

    return read


METRICS: tuple[Metric, ...] = (
    Metric("size.uncompressed", "size", lambda a: float(a.size.uncompressed)),
    Metric("size.compressed", "size", lambda a: float(a.size.compressed)),
    Metric("startup.t_head", "startup", _median(lambda a: a.startup.t_head)),
    Metric("startup.t_serve", "startup", _median(lambda a: a.startup.t_serve)),
    Metric("startup.t_cold", "startup", _median(lambda a: a.startup.t_cold)),
)


@dataclass(frozen=True)
class Limit:
    value: float
    source: str  # where the value came from, shown next to it so that a reviewer knows what to edit

    def describe(self) -> str:
        return f"+{self.value * 100:.1f}% ({self.source})"


@dataclass(frozen=True)
class Thresholds:
    size: Limit
    startup: Limit

    def for_kind(self, kind: Kind) -> Limit:
        return self.size if kind == "size" else self.startup


@dataclass(frozen=True)
class ThresholdPolicy:
    """Resolves each app's limits: flag > ``[apps.gate]`` > ``[gate]`` > default."""

    project: Gate = field(default_factory=Gate)
    apps: Mapping[str, Gate] = field(default_factory=dict)
    max_size_growth: float | None = None
    max_startup_growth: float | None = None

    @classmethod
    def from_config(
        cls,
        config: RaybuildConfig | None,
        *,
        max_size_growth: float | None = None,
        max_startup_growth: float | None = None,
    ) -> ThresholdPolicy:
        if config is None:
            return cls(max_size_growth=max_size_growth, max_startup_growth=max_startup_growth)
        return cls(
            project=config.gate,
            apps={app.name: app.gate for app in config.apps},
            max_size_growth=max_size_growth,
            max_startup_growth=max_startup_growth,
        )

    def for_app(self, app: str | None) -> Thresholds:
        """The limits for ``app``; ``None`` gives the project-wide limits."""
        gate = (self.apps.get(app) if app is not None else None) or Gate()
        return Thresholds(
            size=self._pick(
                self.max_size_growth,
                "--max-size-growth",
                gate.max_size_growth,
                self.project.max_size_growth,
                DEFAULT_MAX_SIZE_GROWTH,
            ),
            startup=self._pick(
                self.max_startup_growth,
                "--max-startup-growth",
                gate.max_startup_growth,
                self.project.max_startup_growth,
                DEFAULT_MAX_STARTUP_GROWTH,
            ),
        )

    @staticmethod
    def _pick(
        flag: float | None, flag_name: str, app: float | None, project: float | None, default: float
    ) -> Limit:
        if flag is not None:
            return Limit(flag, flag_name)
        if app is not None:
            return Limit(app, "[apps.gate]")
        if project is not None:
            return Limit(project, "[gate]")
        return Limit(default, "default")


@dataclass(frozen=True)
class Row:
    app: str
    metric: str
    kind: Kind
    base: float | None
    current: float | None
    delta: float | None  # (current - base) / base; +inf when the baseline was 0; None when not comparable
    limit: float | None
    verdict: Verdict


def judge(base: float | None, current: float | None, limit: float) -> tuple[float | None, Verdict]:
    """The relative change and its verdict. Growth of exactly ``limit`` passes."""
    if base is None or current is None:
        return None, "n/a"
    if base == 0:
        # No ratio exists: 0 -> 0 is unchanged, and anything appearing from nothing is growth past any limit.
        return (0.0, "ok") if current == 0 else (math.inf, "regression")
    delta = (current - base) / base
    if delta > limit + _EPSILON:
        return delta, "regression"
    # Symmetric with the limit, so that run-to-run jitter in cold starts is not reported as a win.
    if delta < -limit - _EPSILON:
        return delta, "improved"
    return delta, "ok"


def compare(
    baseline: Measurement,
    current: Measurement,
    policy: ThresholdPolicy | None = None,
    *,
    baseline_label: str = "baseline",
    current_label: str = "current",
) -> GateReport:
    if not current.apps:
        # Nothing measured is not "no regressions": a gate that compared nothing must not pass.
        raise GateError(
            f"{current_label}: the measurement has no apps, so there is nothing to compare",
            hint="run `raybuild measure` on the project's apps, and check that --current names its file",
        )
    policy = policy or ThresholdPolicy()
    rows: list[Row] = []
    thresholds: dict[str, Thresholds] = {}
    for name, now in current.apps.items():
        limits = thresholds[name] = policy.for_app(name)
        before = baseline.apps.get(name)
        for metric in METRICS:
            value = metric.read(now)
            if before is None:
                rows.append(Row(name, metric.name, metric.kind, None, value, None, None, "new"))
                continue
            base, limit = metric.read(before), limits.for_kind(metric.kind).value
            delta, verdict = judge(base, value, limit)
            rows.append(Row(name, metric.name, metric.kind, base, value, delta, limit, verdict))
    for name, before in baseline.apps.items():
        if name not in current.apps:
            rows.extend(
                Row(name, m.name, m.kind, m.read(before), None, None, None, "removed") for m in METRICS
            )
    notes = []
    for label, old, new in (
        ("Ray", baseline.ray_version, current.ray_version),
        ("Python", baseline.python, current.python),
    ):
        if old != new:
            notes.append(f"{label} changed from {old} to {new}: every delta includes that upgrade.")
    return GateReport(
        budgets=budget.check_budgets(current, policy.project, policy.apps),
        pulls=pulldelta.pull_deltas(baseline, current),
        rows=tuple(rows),
        thresholds=thresholds,
        project_thresholds=policy.for_app(None),
        baseline=baseline_label,
        current=current_label,
        notes=tuple(notes),
        vulnerabilities=vulns.compare_vulnerabilities(baseline, current),
    )


def check_files(baseline: Path, current: Path, policy: ThresholdPolicy | None = None) -> GateReport:
    """Load both documents (``GateError`` naming the file if either is malformed) and compare them."""
    return compare(
        Measurement.load(baseline),
        Measurement.load(current),
        policy,
        baseline_label=str(baseline),
        current_label=str(current),
    )


@dataclass(frozen=True)
class GateReport:
    rows: tuple[Row, ...]
    thresholds: Mapping[str, Thresholds]
    project_thresholds: Thresholds
    baseline: str
    current: str
    notes: tuple[str, ...] = ()
    vulnerabilities: tuple[vulns.VulnDiff, ...] = ()
    budgets: tuple[budget.BudgetRow, ...] = ()
    pulls: tuple[pulldelta.PullDelta, ...] = ()

    @property
    def over_budget(self) -> list[str]:
        """One line per app whose worst t_cold is past its ``max_t_cold``, naming the app and the budget."""
        return budget.failures(self.budgets)

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if row.verdict == "regression")

    @property
    def new_findings(self) -> int:
        """HIGH and CRITICAL findings the baseline did not have, over every app."""
        return sum(len(diff.new) for diff in self.vulnerabilities)

    @property
    def failed(self) -> bool:
        return bool(self.regressions) or self.new_findings > 0 or bool(self.over_budget)

    def summary(self) -> str:
        apps = {row.app for row in self.rows}
        if self.failed:
            parts = []
            if self.regressions:
                listed = ", ".join(f"{row.app} {row.metric}" for row in self.regressions)
                count = len(self.regressions)
                parts.append(f"{count} regression{'s' if count != 1 else ''} ({listed})")
            if self.new_findings:
                listed = ", ".join(d.app for d in self.vulnerabilities if d.new)
                count = self.new_findings
                parts.append(
                    f"{count} new HIGH/CRITICAL vulnerabilit{'y' if count == 1 else 'ies'} ({listed})"
                )
            if self.over_budget:
                parts.append("over the start budget: " + "; ".join(self.over_budget))
            return f"**Gate failed:** {'; '.join(parts)}."
        compared = sum(row.verdict in ("ok", "improved") for row in self.rows)
        text = f"**Gate passed:** no regressions across {len(apps)} app{'s' if len(apps) != 1 else ''}"
        text += f" ({compared} metric{'s' if compared != 1 else ''} compared)"
        for verdict in ("new", "removed"):
            names = sorted({row.app for row in self.rows if row.verdict == verdict})
            if names:
                text += f"; {verdict}: {', '.join(names)}"
        return text + "."

    def to_markdown(self, sections: list[str] | None = None) -> str:
        """The PR comment; ``sections`` (Markdown, such as the RayService upgrade) follow the summary."""
        lines = ["## raybuild image gate", "", self.summary(), ""]
        for extra in sections or []:
            lines += [extra.rstrip("\n"), ""]
        lines += [
            "| App | Metric | Baseline | Current | Change | Verdict |",
            "| --- | --- | ---: | ---: | ---: | --- |",
        ]
        for row in self.rows:
            verdict = f"**{row.verdict}**" if row.verdict == "regression" else row.verdict
            lines.append(
                f"| {_cell(row.app)} | {row.metric} | {_value(row.base, row.kind)} | "
                f"{_value(row.current, row.kind)} | {_delta(row.delta)} | {verdict} |"
            )
        project = self.project_thresholds
        lines += ["", f"Max growth: size {project.size.describe()}, startup {project.startup.describe()}."]
        overrides = [
            f"{name}: size {limits.size.describe()}, startup {limits.startup.describe()}"
            for name, limits in self.thresholds.items()
            if limits != project
        ]
        if overrides:
            lines.append("Per-app max growth: " + "; ".join(overrides) + ".")
        lines.append("Sizes in MB (10^6 bytes); startup times are medians in seconds.")
        lines += [f"Note: {note}" for note in self.notes]
        for section in (
            budget.markdown(self.budgets),
            pulldelta.markdown(self.pulls),
            vulns.markdown(self.vulnerabilities),
        ):
            if section:
                lines += ["", *section]
        lines += ["", f"Baseline `{self.baseline}`, current `{self.current}`.", ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """For ``--json``. A delta from a zero baseline is the string ``"+inf"`` (JSON has no infinity)."""

        def limits(t: Thresholds) -> dict[str, Any]:
            return {
                kind: {"value": t.for_kind(kind).value, "source": t.for_kind(kind).source}
                for kind in ("size", "startup")
            }

        return {
            "failed": self.failed,
            "baseline": self.baseline,
            "current": self.current,
            "thresholds": {
                "project": limits(self.project_thresholds),
                "apps": {name: limits(t) for name, t in self.thresholds.items()},
            },
            "notes": list(self.notes),
            "vulnerabilities": vulns.to_dict(self.vulnerabilities),
            "t_cold_budget": [row.to_dict() for row in self.budgets],
            "pull_delta": [delta.to_dict() for delta in self.pulls],
            "rows": [
                {
                    "app": r.app,
                    "metric": r.metric,
                    "base": r.base,
                    "current": r.current,
                    "delta": "+inf" if r.delta == math.inf else r.delta,
                    "limit": r.limit,
                    "verdict": r.verdict,
                }
                for r in self.rows
            ],
        }


def _value(value: float | None, kind: Kind) -> str:
    if value is None:
        return "—"
    return f"{value / _MB:.1f} MB" if kind == "size" else f"{value:.2f} s"


def _delta(delta: float | None) -> str:
    if delta is None:
        return "—"
    if math.isinf(delta):
        return "+inf"
    percent = round(delta * 100, 1)
    return f"{percent + 0.0:+.1f}%"  # + 0.0 turns -0.0 into 0.0, so a tiny drop does not print "-0.0%"


def _cell(text: str) -> str:
    # App names come from a JSON file, not only from validated config: keep a stray '|' from splitting a row.
    return text.replace("|", "\\|")
