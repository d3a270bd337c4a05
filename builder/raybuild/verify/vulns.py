"""The gate's vulnerability check: HIGH and CRITICAL findings the baseline did not have fail it.

A finding is an advisory in a package (``Finding.key``); versions may move without it being new. An app
in both measurements is compared with its own baseline findings. An app new since the baseline is compared
with the findings of every baseline app, since it shares their base and Ray layers: only what it brings
itself is new. Findings gone since the baseline are reported as fixed. Nothing fails while either side was
measured without ``--scan``: turning scans on must not fail the first pull request that has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from raybuild.verify.results import GATED, Finding, Measurement

Status = Literal["compared", "no baseline scan", "not scanned"]
_SHOWN = 10  # findings listed per app and kind in the PR comment; the JSON has them all


@dataclass(frozen=True)
class VulnDiff:
    app: str
    status: Status
    new: tuple[Finding, ...] = ()
    fixed: tuple[Finding, ...] = ()
    unchanged: int = 0


def compare_vulnerabilities(baseline: Measurement, current: Measurement) -> tuple[VulnDiff, ...]:
    everywhere = {
        f.key: f
        for app in baseline.apps.values()
        if app.vulnerabilities is not None
        for f in app.vulnerabilities.findings
    }
    scanned_before = any(app.vulnerabilities is not None for app in baseline.apps.values())
    diffs = []
    for name, app in current.apps.items():
        if app.vulnerabilities is None:
            if scanned_before:
                diffs.append(VulnDiff(name, "not scanned"))
            continue
        if not scanned_before:
            diffs.append(VulnDiff(name, "no baseline scan"))
            continue
        now = {f.key: f for f in app.vulnerabilities.findings if f.severity in GATED}
        before_app = baseline.apps.get(name)
        if before_app is not None and before_app.vulnerabilities is None:
            diffs.append(VulnDiff(name, "no baseline scan"))
            continue
        if before_app is not None and before_app.vulnerabilities is not None:
            before = {f.key: f for f in before_app.vulnerabilities.findings if f.severity in GATED}
        else:
            before = everywhere
        new = tuple(now[key] for key in sorted(now.keys() - before.keys()))
        # A new app fixes nothing: the other apps' findings were never its own.
        fixed = tuple(before[key] for key in sorted(before.keys() - now.keys())) if before_app else ()
        diffs.append(VulnDiff(name, "compared", new, fixed, len(now.keys() & before.keys())))
    return tuple(diffs)


def _line(app: str, finding: Finding) -> str:
    fix = f", fixed in {finding.fixed}" if finding.fixed else ", no fix yet"
    return f"- {app}: {finding.id} in {finding.package} {finding.installed} ({finding.severity}{fix})"


def _listed(app: str, findings: tuple[Finding, ...]) -> list[str]:
    lines = [_line(app, f) for f in findings[:_SHOWN]]
    if len(findings) > _SHOWN:
        lines.append(f"- {app}: and {len(findings) - _SHOWN} more (see the JSON report)")
    return lines


def markdown(diffs: tuple[VulnDiff, ...]) -> list[str]:
    """The PR comment's short vulnerability section; no lines when neither side was scanned."""
    if not diffs:
        return []
    lines = ["### Vulnerabilities (HIGH and CRITICAL)", ""]
    compared = [d for d in diffs if d.status == "compared"]
    if compared:
        lines += ["| App | New | Fixed | Unchanged |", "| --- | ---: | ---: | ---: |"]
        for d in compared:
            count = f"**{len(d.new)}**" if d.new else "0"
            lines.append(f"| {d.app.replace('|', '/')} | {count} | {len(d.fixed)} | {d.unchanged} |")
        lines.append("")
    added = [line for d in compared for line in _listed(d.app, d.new)]
    fixed = [line for d in compared for line in _listed(d.app, d.fixed)]
    if added:
        lines += ["New since the baseline (these fail the gate):", *added, ""]
    if fixed:
        lines += ["Fixed since the baseline:", *fixed, ""]
    for status, text in (
        ("no baseline scan", "the baseline has no scan: nothing compared"),
        ("not scanned", "measured without `--scan`: nothing compared"),
    ):
        apps = [d.app for d in diffs if d.status == status]
        if apps:
            lines += [f"{', '.join(apps)}: {text}.", ""]
    return lines[:-1] if lines[-1] == "" else lines


def to_dict(diffs: tuple[VulnDiff, ...]) -> list[dict[str, Any]]:
    return [
        {
            "app": d.app,
            "status": d.status,
            "new": [f.model_dump() for f in d.new],
            "fixed": [f.model_dump() for f in d.fixed],
            "unchanged": d.unchanged,
        }
        for d in diffs
    ]
