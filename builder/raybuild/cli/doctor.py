"""`raybuild doctor`: the prerequisites for building, and how to fix what is missing."""

from __future__ import annotations

import click

from raybuild import doctor as checks
from raybuild.cli.common import State, emit_json, engine_for, json_option, pass_state, table
from raybuild.errors import ReportedFailure


@click.command()
@json_option
@pass_state
def doctor(state: State, as_json: bool) -> None:
    """Check the prerequisites for building: daemon, BuildKit client, registry, proxy CA, tools."""
    results = checks.run_checks(engine_for(state))
    missing = [c for c in results if c.required and not c.ok]
    report = {"ok": not missing, "checks": [c.to_dict() for c in results]}
    if not as_json:
        table(
            ["check", "status", "detail"],
            [
                [
                    c.name,
                    "ok" if c.ok else ("MISSING" if c.required else "warn"),
                    c.detail if c.ok else f"{c.detail} -> {c.fix}",
                ]
                for c in results
            ],
        )
    if missing:
        # main() prints this after the table (with --json: one object holding the checks as well).
        raise ReportedFailure(
            f"{len(missing)} required check{'s' if len(missing) != 1 else ''} failed: "
            + ", ".join(c.name for c in missing),
            hint=missing[0].fix or "see the table above",
            report=report,
        )
    if as_json:
        emit_json(report)
