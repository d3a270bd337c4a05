"""An image built for several platforms, published as one OCI image index.

Each platform's image is pushed first, under its own tag (``publish.py``); the index of their manifests then
goes under the multi-platform tag through raybuild's registry client, so a node pulls the index and gets its
own architecture's image. An index tag is content-addressed like any other, so one that holds an image
rather than an index is never moved silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from raybuild import platforms
from raybuild.errors import PublishError
from raybuild.progress import Progress
from raybuild.records import PublishedImage
from raybuild.reference import ImageRef
from raybuild.registry import Descriptor, Manifest

IndexStatus = Literal["pushed", "skipped"]


def refuse_moved_indexes(held: Sequence[tuple[str, Manifest | None]], *, force: bool) -> None:
    """``held``: each index tag and what the registry holds there. One that holds an image (a manifest with a
    config) rather than an index is refused, unless ``force``."""
    moved = [
        f"{target} is image {remote.config_digest} in the registry, not an image index"
        for target, remote in held
        if remote is not None and remote.config_digest is not None
    ]
    if moved and not force:
        raise PublishError(
            "refusing to move a content-addressed tag: " + "; ".join(moved),
            hint="`raybuild publish --force` overwrites the registry's image",
        )


def publish_index(
    key: str,
    target: ImageRef,
    parts: Sequence[tuple[str, PublishedImage]],
    *,
    read: Callable[[str], Manifest | None],
    put: Callable[[list[Descriptor]], Manifest],
    progress: Progress,
) -> tuple[IndexStatus, PublishedImage]:
    """Put the index of ``parts`` (platform, its image, already pushed) at ``target``'s tag.

    ``read`` reads a manifest of ``target``'s repository by tag or digest; ``put`` puts the index there.
    """
    tag = target.tag_or_latest
    manifests = []
    for platform, published in parts:
        manifest = read(published.digest)
        if manifest is None:
            raise PublishError(
                f"{key}: the registry does not show {published.pinned}; no index was pushed",
                hint="rerun `raybuild publish`",
            )
        arch = platforms.get(platform).architecture
        manifests.append(
            Descriptor(
                manifest.media_type,
                manifest.digest,
                manifest.size,
                platform={"os": "linux", "architecture": arch},
            )
        )
    before = read(tag)
    index = put(manifests)
    status: IndexStatus = "skipped" if before and before.digest == index.digest else "pushed"
    arches = ", ".join(platforms.get(platform).architecture for platform, _ in parts)
    progress(f"{key}: image index {target} ({arches}) {status}")
    # Sizes are the default platform's image (the first): what an amd64 node pulls.
    first = parts[0][1]
    return status, PublishedImage(target, index.digest, first.size, first.compressed_size)
