"""`raybuild sbom`: a CycloneDX 1.6 SBOM of each built image, read from the image itself."""

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
from raybuild.ship.sbom import SbomMaker, sbom_images, sbom_timestamp, wheel_hashes
from raybuild.ship.wheels import SimpleIndex, WheelHashes, shown_index
from raybuild.state import SBOM_DIR, WHEEL_HASHES, project_id, sbom_dir

offline_option = click.option(
    "--offline",
    is_flag=True,
    help="Ask no package index which file each lockfile hash is: only single-hash pins and the cache "
    f"({WHEEL_HASHES}) give components their wheel's SHA-256.",
)


def report_index_failures(hashes: WheelHashes) -> None:
    """One line when the package index could not be asked: some components then lack their hash."""
    index = hashes.index
    if isinstance(index, SimpleIndex) and index.failures:
        progress(
            f"could not list {len(index.failures)} project(s) on {shown_index(index.url)} "
            f"(first: {index.failures[0]}): those wheels have no SHA-256 in the SBOM"
        )


@click.command()
@apps_argument
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"Write the SBOMs to DIR [default: {SBOM_DIR} next to raybuild.toml].",
)
@offline_option
@json_option
@pass_state
def sbom(state: State, apps: tuple[str, ...], out: Path | None, offline: bool, as_json: bool) -> None:
    """Write a CycloneDX 1.6 JSON SBOM of each built image, as DIR/APP.cdx.json.

    \b
    Without APP, every built app image and the head image (ray-head.cdx.json). The components are read
    from the image: every Python distribution importlib.metadata sees in it (the Ray venv and the app's
    site-packages), with its purl, license and the lockfile's SHA-256 of the wheel that was installed,
    and every Debian package dpkg has installed. The root component is the image: its name and tag,
    image ID, registry digest once published, Ray and Python versions (and CUDA on GPU images).

    The same image gives the same bytes, except metadata.timestamp: set SOURCE_DATE_EPOCH to pin it.
    `raybuild publish` attaches the SBOM to the image in the registry.
    """
    config = state.config()
    images = sbom_images(config, apps)
    hashes = wheel_hashes(config, offline=offline)
    maker = SbomMaker(engine_for(state), hashes, progress, sbom_timestamp(), project=project_id(config))
    written = [maker.write(image, out or sbom_dir(config)) for image in images]
    report_index_failures(hashes)
    for result in written:
        if result.unhashed:
            progress(
                f"{result.image.key}: no wheel SHA-256 for {len(result.unhashed)} locked distribution(s) "
                f"({', '.join(result.unhashed[:5])}{', ...' if len(result.unhashed) > 5 else ''})"
            )
    if as_json:
        emit_json([result.to_dict() for result in written])
        return
    table(
        ["app", "sbom", "python", "debian", "wheel sha256"],
        [
            [r.image.key, str(r.path), r.python, r.debian, f"{r.hashed}/{r.hashed + len(r.unhashed)}"]
            for r in written
        ],
    )
