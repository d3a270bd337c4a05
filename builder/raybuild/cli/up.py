"""`raybuild up`: the RayService's topology, run locally in Docker."""

from __future__ import annotations

from typing import cast

import click

from raybuild.cli.common import (
    State,
    apps_argument,
    emit_json,
    engine_for,
    json_option,
    pass_state,
    progress,
    seconds_option,
    table,
)
from raybuild.local import cluster as local
from raybuild.local.front import FRONT_MODES, FrontMode


@click.command()
@apps_argument
@seconds_option("--timeout", default=300.0, help="Seconds to wait for nodes and routes.")
@click.option(
    "--front",
    type=click.Choice(FRONT_MODES),
    default="service",
    show_default=True,
    help="What clients reach the workers through (HAProxy on 127.0.0.1): service = plain TCP like the "
    "serve Service, no retry; ingress = HTTP with retries of idempotent requests, like an Ingress.",
)
@json_option
@pass_state
def up(state: State, apps: tuple[str, ...], timeout: float, front: str, as_json: bool) -> None:
    """Run the rendered RayService locally: Redis GCS store, head, workers per app image, and a front.

    Uses the publish record's digests when there is one (else the last build), deploys serveConfigV2
    through the dashboard as KubeRay does, and waits until every app answers on every worker's Serve port
    and through the front. An app with `ha = true` gets two workers, its replicas spread over them.
    """
    config = state.config()
    mode = cast(FrontMode, front)  # click.Choice above allows exactly these values
    cluster = local.up(
        config, engine_for(state), config.select(apps), timeout=timeout, progress=progress, front=mode
    )
    urls = cluster.urls()
    if as_json:
        emit_json(
            {
                "cluster": cluster.name,
                "dashboard": cluster.dashboard,
                "front": {"mode": cluster.front, "url": cluster.front_url, "urls": cluster.front_urls()},
                "urls": urls,
                "nodes": [
                    {"name": n.name, "role": n.role, "image": n.image, "app": n.app} for n in cluster.nodes
                ],
            }
        )
        return
    table(["node", "role", "app", "image"], [[n.name, n.role, n.app or "", n.image] for n in cluster.nodes])
    click.echo(f"\ndashboard: {cluster.dashboard}")
    click.echo(f"front ({cluster.front}): {cluster.front_url}")
    for app, app_urls in cluster.front_urls().items():
        click.echo(f"{app}: {'  '.join(app_urls)}  (workers: {'  '.join(urls[app])})")
