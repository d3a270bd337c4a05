"""`raybuild base`: the base images."""

from __future__ import annotations

import click

from raybuild.cli.common import State, emit_json, engine_for, json_option, pass_state, progress, table
from raybuild.image import bases


@click.command()
@click.argument("devices", nargs=-1, type=click.Choice(["cpu", "gpu"]))
@json_option
@pass_state
def base(state: State, devices: tuple[str, ...], as_json: bool) -> None:
    """Make the base images (bootstrapped with mmdebstrap, or from a registry image) if missing."""
    refs = bases.ensure_bases(state.config(), engine_for(state), devices or ("cpu", "gpu"), progress)
    if as_json:
        emit_json(refs)
        return
    table(["image", "reference"], [[k, v] for k, v in refs.items()])
