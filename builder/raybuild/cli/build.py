"""`raybuild build`: the app images, with BuildKit."""

from __future__ import annotations

from pathlib import Path

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
from raybuild.image.build import Builder, default_ca_bundle


@click.command()
@apps_argument
@click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA bundle for HTTPS inside builds (a BuildKit secret, never a layer). "
    "[default: $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE or $PIP_CERT]",
)
@click.option(
    "--netrc",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A .netrc with package index credentials, passed as a BuildKit secret.",
)
@json_option
@pass_state
def build(
    state: State, apps: tuple[str, ...], ca_bundle: Path | None, netrc: Path | None, as_json: bool
) -> None:
    """Build app images with BuildKit: one shared Ray layer, content-addressed tags.

    An app whose inputs did not change is not rebuilt. A code-only change rebuilds only the code layer.
    """
    config = state.config()
    selected = config.select(apps)
    builder = Builder(config, engine_for(state), ca_bundle or default_ca_bundle(), netrc, progress)
    built = builder.build(selected)
    if as_json:
        emit_json([image.to_dict() for image in built])
        return
    table(
        ["app", "status", "image", "id"],
        [[b.app, "cached" if b.cached else "built", b.ref, b.image_id[:19]] for b in built],
    )
