"""`raybuild init`: scaffold a new project, or adopt the apps of an existing Serve config."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild import scaffold
from raybuild.adopt import read_serve_config
from raybuild.cli.common import emit_json, json_option


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default="hello", show_default=True, help="Name of the example app.")
@click.option(
    "--from-serve-config",
    "serve_config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A Serve config (what `serve deploy` takes) or a RayService manifest: one app per Serve "
    "application, its runtime_env pip list as the app's requirements.in. Replaces the example app.",
)
@click.option("--force", is_flag=True, help="Replace files that init would otherwise refuse to overwrite.")
@json_option
def init(directory: Path, name: str, serve_config: Path | None, force: bool, as_json: bool) -> None:
    """Scaffold a new project in DIRECTORY: one example app, or the apps of an existing Serve config.

    Every file is planned first; if any already exists, nothing is written and the collisions are listed
    (unless --force). An existing raybuild.toml is always refused. The project gets a GitHub workflow
    pinned to this raybuild.
    """
    if serve_config is not None:
        plan = scaffold.plan_adoption(directory, read_serve_config(serve_config))
    else:
        plan = scaffold.plan_example(directory, name)
    written = scaffold.write(plan, force=force)
    if as_json:
        emit_json({"created": [str(p) for p in written], "not_carried_over": list(plan.notes)})
        return
    for path in written:
        click.echo(f"created {path}")
    for note in plan.notes:
        click.echo(f"not carried over: {note}", err=True)
    click.echo(f"next: cd {directory} && raybuild lock && raybuild build")
