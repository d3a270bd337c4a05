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
from raybuild.records import BuiltImage


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
@click.option(
    "--rebuild",
    is_flag=True,
    help="Build every image here, even when this engine or the registry already has its tag.",
)
@json_option
@pass_state
def build(
    state: State,
    apps: tuple[str, ...],
    ca_bundle: Path | None,
    netrc: Path | None,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Build app images with BuildKit: one shared Ray layer, content-addressed tags.

    An app whose inputs did not change is not rebuilt. A code-only change rebuilds only the code layer.
    An image whose tag the registry ([project].registry) already holds is pulled, not rebuilt: the
    registry's image is the one that tag names, on every machine. New app images build on the head image
    (base and Ray layers) that the registry holds.
    """
    config = state.config()
    selected = config.select(apps)
    engine = engine_for(state)
    builder = Builder(config, engine, ca_bundle or default_ca_bundle(), netrc, progress, rebuild=rebuild)
    built = builder.build(selected)
    if as_json:
        emit_json([image.to_dict() for image in built])
        return
    table(
        ["app", "status", "image", "id"],
        [[b.app, _status(b), str(b.ref), b.image_id[:19]] for b in built],
    )


def _status(image: BuiltImage) -> str:
    return "pulled" if image.pulled else "cached" if image.cached else "built"
