"""`raybuild init`: scaffold a new project."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild import scaffold


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default="hello", show_default=True, help="Name of the example app.")
def init(directory: Path, name: str) -> None:
    """Scaffold a new project in DIRECTORY with one example app."""
    written = scaffold.init_project(directory, name)
    for path in written:
        click.echo(f"created {path}")
    click.echo(f"next: cd {directory} && raybuild lock && raybuild build")
