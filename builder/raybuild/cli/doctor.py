"""`raybuild doctor`: the prerequisites for building, and how to fix what is missing."""

from __future__ import annotations

import click

from raybuild import doctor as checks
from raybuild.cli.common import State, emit_json, engine_for, json_option, pass_state, table


@click.command()
@json_option
@pass_state
def doctor(state: State, as_json: bool) -> int:
    """Check the prerequisites for building: daemon, BuildKit client, registry, proxy CA, tools."""
    results = checks.run_checks(engine_for(state))
    ok = all(c.ok for c in results if c.required)
    if as_json:
        emit_json({"ok": ok, "checks": [c.to_dict() for c in results]})
    else:
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
    # The table already says what is missing: the exit code is all that is left to say.
    return 0 if ok else 1
