"""`raybuild lock`: per-app lockfiles pinned to the shared Ray lock."""

from __future__ import annotations

import click

from raybuild.cli.common import State, apps_argument, emit_json, json_option, pass_state, progress, table
from raybuild.lock import resolve as locking
from raybuild.platforms import DEFAULT


@click.command()
@apps_argument
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 naming every lockfile that is missing, out of date, or edited since "
    "raybuild wrote it.",
)
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
    constraint, for the image's Python and Linux platform: one lockfile per platform the app is built for
    ([project].platforms; `hello.txt` for linux/amd64, `hello.linux-arm64.txt` for linux/arm64, wheels
    only). A GPU app's lockfile records the CUDA version its
    wheels need (`# CUDA: 12.9`); wheels that mix CUDA majors are refused and the old lockfile is kept.
    torch comes as the CPU-only build for CPU apps and the CUDA build for GPU apps ([project].torch_backend
    and gpu_torch_backend, uv's --torch-backend).
    """
    config = state.config()
    if resolver is not None:
        config = config.with_resolver(resolver)
    selected = config.select(apps)
    if check:
        # A failure is StaleLockError: main() prints its line (and, with --json, {"ok": false, "stale": ...}).
        locking.check(config, selected)
        if as_json:
            emit_json({"stale": [], "ok": True})
        else:
            rays, app_locks = locking.targets(config, selected)
            click.echo(f"{len(rays) + len(app_locks)} lockfiles are up to date")
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
                    "platform": r.platform,
                }
                for r in results
            ]
        )
        return
    # The platform column only where a lock is for another platform than the default: else it says nothing.
    several = any(r.platform != DEFAULT for r in results)
    table(
        ["lock", *(["platform"] if several else []), "packages", "cuda", "status", "path"],
        [
            [
                r.name,
                *([r.platform] if several else []),
                r.packages,
                r.cuda or "-",
                "updated" if r.changed else "unchanged",
                r.path.relative_to(config.root),
            ]
            for r in results
        ],
    )
