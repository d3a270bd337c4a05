"""Project commands: init, list, lock, generate."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild import scaffold
from raybuild.cli.common import State, apps_argument, emit_json, json_option, pass_state, progress, table
from raybuild.image.spec import generate_all, image_spec_for
from raybuild.lock import resolve as locking
from raybuild.state import DOCKERFILES_DIR


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default="hello", show_default=True, help="Name of the example app.")
def init(directory: Path, name: str) -> None:
    """Scaffold a new project in DIRECTORY with one example app."""
    written = scaffold.init_project(directory, name)
    for path in written:
        click.echo(f"created {path}")
    click.echo(f"next: cd {directory} && raybuild lock && raybuild build")


@click.command("list")
@json_option
@pass_state
def list_apps(state: State, as_json: bool) -> None:
    """List the project's apps: name, device, lockfile and image name."""
    config = state.config()
    rows = [
        {
            "name": app.name,
            "device": app.device,
            "lockfile": str(config.lockfile(app).relative_to(config.root)),
            "image": config.image_name(app),
            "route_prefix": app.route_prefix,
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


@click.command()
@apps_argument
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every stale or missing lockfile.")
@click.option(
    "--resolver",
    type=click.Choice(["uv", "pip-tools"]),
    default=None,
    help="Override [project].resolver for this run.",
)
@json_option
@pass_state
def lock(state: State, apps: tuple[str, ...], check: bool, resolver: str | None, as_json: bool) -> None:
    """Compile per-app lockfiles with hashes, every app pinned to the shared Ray lock.

    The shared lock (ray[serve]==VERSION alone) is compiled first; each app is then resolved with it as a
    constraint, for the image's Python and Linux platform. A GPU app's lockfile records the CUDA version its
    wheels need (`# CUDA: 12.9`); wheels that mix CUDA majors are refused and the old lockfile is kept.
    torch comes as the CPU-only build for CPU apps and the CUDA build for GPU apps ([project].torch_backend
    and gpu_torch_backend, uv's --torch-backend).
    """
    config = state.config()
    if resolver is not None:
        config = config.with_resolver(resolver)
    selected = config.select(apps)
    if check:
        found = locking.stale(config, selected)
        if as_json:
            emit_json({"stale": found, "ok": not found})
        if found:
            locking.check(config, selected)
        if not as_json:
            click.echo(f"{len(selected) + 1} lockfiles are up to date")
        return
    results = locking.lock(config, selected, progress=lambda name: progress(f"locking {name}"))
    if as_json:
        emit_json(
            [
                {
                    "name": r.name,
                    "path": str(r.path),
                    "changed": r.changed,
                    "packages": r.packages,
                    "cuda": r.cuda,
                }
                for r in results
            ]
        )
        return
    table(
        ["lock", "packages", "cuda", "status", "path"],
        [
            [
                r.name,
                r.packages,
                r.cuda or "-",
                "updated" if r.changed else "unchanged",
                r.path.relative_to(config.root),
            ]
            for r in results
        ],
    )


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
    if to_stdout:
        for app in selected:
            from raybuild.image.dockerfile import render_dockerfile, template_dir

            click.echo(render_dockerfile(image_spec_for(config, app), template_dir(config.root)), nl=False)
        return
    written = generate_all(config, selected, out_dir)
    if as_json:
        emit_json({name: str(path) for name, path in written.items()})
        return
    for name, path in written.items():
        click.echo(f"{name}: {path}")


COMMANDS = [init, list_apps, lock, generate]
