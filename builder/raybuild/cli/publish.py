"""`raybuild publish`: push built images to the registry and pin their digests in .raybuild/publish.json."""

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
    table,
)
from raybuild.ship.publish import Publisher

MB = 1_000_000


@click.command()
@apps_argument
@click.option(
    "--registry",
    metavar="HOST/NAMESPACE",
    default=None,
    help="Push to this registry and namespace instead of [project].registry "
    "(images are retagged locally), e.g. 127.0.0.1:5000/staging.",
)
@json_option
@pass_state
def publish(state: State, apps: tuple[str, ...], registry: str | None, as_json: bool) -> None:
    """Push built images (the head image and each APP, default all built apps) and record their digests.

    Images the registry already holds (same image ID) are skipped. Transient registry errors are retried
    with backoff. Log in with `docker login` first where the registry needs it: raybuild leaves credentials
    to docker. `raybuild render` pins images by the digests recorded in .raybuild/publish.json, which is
    written only when every push succeeded.
    """
    engine = engine_for(state)
    engine.ping()  # else a daemon that is down reads as "the image is gone"
    publisher = Publisher(
        state.config(),
        engine,
        registry=registry,
        progress=progress,
        output=lambda line: click.echo(line, err=True),
    )
    published = publisher.publish(apps)
    if as_json:
        emit_json([result.to_dict() for result in published])
        return
    table(
        ["app", "status", "image", "compressed"],
        [[p.key, p.status, p.image.pinned, f"{p.image.compressed_size / MB:.1f} MB"] for p in published],
    )
