"""`raybuild generate`: the apps' Dockerfiles."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild import platforms
from raybuild.cli.common import State, apps_argument, emit_json, json_option, pass_state
from raybuild.image.plan import plan_builds
from raybuild.image.spec import generate_all
from raybuild.state import DOCKERFILES_DIR


@click.command()
@apps_argument
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the Dockerfiles instead of writing them.")
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Where to write Dockerfiles [default: {DOCKERFILES_DIR}].",
)
@json_option
@pass_state
def generate(
    state: State, apps: tuple[str, ...], to_stdout: bool, out_dir: Path | None, as_json: bool
) -> None:
    """Render each app's multi-stage Dockerfile from the templates under images/."""
    config = state.config()
    selected = config.select(apps)
    if to_stdout:  # the default platform's Dockerfile of each app
        for plan in plan_builds(config, selected, (platforms.DEFAULT,), locked=False):
            click.echo(plan.dockerfile, nl=False)
        return
    written = generate_all(config, plan_builds(config, selected, locked=False).dockerfiles(), out_dir)
    if as_json:
        emit_json({name: str(path) for name, path in written.items()})
        return
    for name, path in written.items():
        click.echo(f"{name}: {path}")
