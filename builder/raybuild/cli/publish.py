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
from raybuild.cli.sbom import offline_option, report_index_failures
from raybuild.ship.attach import SbomAttacher
from raybuild.ship.publish import Publisher
from raybuild.ship.sbom import SbomMaker, sbom_timestamp, wheel_hashes
from raybuild.state import project_id

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
@click.option(
    "--sbom/--no-sbom",
    "with_sbom",
    default=True,
    show_default=True,
    help="Attach each image's SBOM in the registry (an OCI artifact whose subject is the image).",
)
@offline_option
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite a tag that the registry holds as another image (a warning names both).",
)
@json_option
@pass_state
def publish(
    state: State,
    apps: tuple[str, ...],
    registry: str | None,
    with_sbom: bool,
    offline: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Push built images (the head image and each APP, default all built apps) and record their digests.

    Images the registry already holds (same image ID) are skipped. A tag the registry holds as another
    image is never moved: publish refuses, naming both, and pushes nothing (--force overwrites it).
    Transient registry errors are retried with backoff. Log in with `docker login` first where the
    registry needs it: raybuild leaves credentials to docker. `raybuild render` pins images by the digests
    recorded in .raybuild/publish.json, which is written only when every push succeeded, and only when it
    changes.

    Layers are gzip, which every Docker and containerd pulls, unless [publish].compression is "zstd":
    then skopeo copies each image from the daemon with zstd layers (containerd >= 1.5 and Docker >= 23 pull
    them), under a tag of its own, and every layer's media type is checked after the push.

    Each image's SBOM (see `raybuild sbom`) is attached to it in the registry, where OCI 1.1 tools find it
    by the image's digest (the referrers API, or the fallback tag sha256-<hex>). An SBOM already attached
    with the same content is not pushed again. The record lists each SBOM artifact's digest.
    """
    config, engine = state.config(), engine_for(state)
    engine.ping()  # else a daemon that is down reads as "the image is gone"
    attacher, hashes = None, wheel_hashes(config, offline=offline)
    if with_sbom:
        maker = SbomMaker(engine, hashes, progress, sbom_timestamp(), project=project_id(config))
        attacher = SbomAttacher(config, maker, progress=progress)
    publisher = Publisher(
        config,
        engine,
        registry=registry,
        progress=progress,
        output=lambda line: click.echo(line, err=True),
        attach_sbom=attacher,
        force=force,
    )
    published = publisher.publish(apps)
    report_index_failures(hashes)
    if as_json:
        emit_json([result.to_dict() for result in published])
        return
    zstd = publisher.compression.format != "gzip"
    compressed = f"compressed ({publisher.compression})" if zstd else "compressed"
    table(
        ["app", "status", "image", compressed, "sbom"],
        [
            [p.key, p.status, p.image.pinned, f"{p.image.compressed_size / MB:.1f} MB", p.image.sbom or "-"]
            for p in published
        ],
    )
