"""`raybuild up`: the RayService's topology, run locally in Docker."""

from __future__ import annotations

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


@click.command()
@apps_argument
@seconds_option("--timeout", default=300.0, help="Seconds to wait for nodes and routes.")
@json_option
@pass_state
def up(state: State, apps: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Run the rendered RayService locally: Redis GCS store, head, one worker per app image.

    Uses the publish record's digests when there is one (else the last build), deploys serveConfigV2
    through the dashboard as KubeRay does, and waits until every app answers on every worker's Serve port.
    """
    config = state.config()
    cluster = local.up(config, engine_for(state), config.select(apps), timeout=timeout, progress=progress)
    urls = cluster.urls()
    if as_json:
        emit_json(
            {
                "cluster": cluster.name,
                "dashboard": cluster.dashboard,
                "urls": urls,
                "nodes": [
                    {"name": n.name, "role": n.role, "image": n.image, "app": n.app} for n in cluster.nodes
                ],
            }
        )
        return
    table(["node", "role", "app", "image"], [[n.name, n.role, n.app or "", n.image] for n in cluster.nodes])
    click.echo(f"\ndashboard: {cluster.dashboard}")
    for app, app_urls in urls.items():
        click.echo(f"{app}: {'  '.join(app_urls)}")
