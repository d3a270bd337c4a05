"""`raybuild list`: the project's apps."""

from __future__ import annotations

import click

from raybuild.cli.common import State, emit_json, json_option, pass_state, table


@click.command("list")
@json_option
@pass_state
def list_apps(state: State, as_json: bool) -> None:
    """List the project's apps: name, device, lockfile and image name (--json: and their platforms)."""
    config = state.config()
    rows = [
        {
            "name": app.name,
            "device": app.device,
            "lockfile": str(config.lockfile(app).relative_to(config.root)),
            "image": config.image_name(app),
            "route_prefix": app.route_prefix,
            "platforms": list(config.platforms(app)),
        }
        for app in config.apps
    ]
    if as_json:
        emit_json(rows)
        return
    table(
        ["app", "device", "lockfile", "image", "route"],
        [[r["name"], r["device"], r["lockfile"], r["image"], r["route_prefix"]] for r in rows],
    )
