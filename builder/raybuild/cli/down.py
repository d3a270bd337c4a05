"""`raybuild down`: remove what `raybuild up` started."""

from __future__ import annotations

import click

from raybuild.cli.common import State, emit_json, engine_for, json_option, pass_state, progress
from raybuild.local import cluster as local


@click.command()
@json_option
@pass_state
def down(state: State, as_json: bool) -> None:
    """Remove everything `raybuild up` started (by label), even after a failed `up`."""
    removed = local.down(state.config(), engine_for(state), progress=progress)
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"removed {removed} containers and networks")
