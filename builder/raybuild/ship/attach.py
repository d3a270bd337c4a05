"""The SBOM travels with the image: `raybuild publish` attaches it in the registry, by the image's digest.

Each pushed image gets its SBOM (made with the registry digest in its root component) as an OCI 1.1
artifact whose ``subject`` is the image manifest (``registry.attach``), so `oras discover`, cosign and
other OCI 1.1 tools find it from the image digest alone: through the referrers API where the registry has
one, else through the fallback tag ``sha256-<hex>``. An SBOM whose content (all but its timestamp) is
already attached is not pushed again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from raybuild.config import LoadedConfig
from raybuild.errors import PublishError
from raybuild.fsutil import atomic_write
from raybuild.labels import SBOM_ANNOTATION
from raybuild.progress import Progress, silent
from raybuild.records import PublishedImage
from raybuild.registry import (
    Descriptor,
    Manifest,
    Registry,
    RegistryUnverifiable,
    attach,
    find_referrers,
)
from raybuild.ship.sbom import MEDIA_TYPE, SbomMaker, same_content, sbom_images
from raybuild.state import sbom_dir
from raybuild.tags import sbom_name

# Marks the artifacts raybuild attached, so that a newer SBOM of the same image replaces raybuild's own
# entry in the fallback index and leaves other tools' referrers (signatures, attestations) alone.
MARK = SBOM_ANNOTATION
TITLE = "org.opencontainers.image.title"


def _ours(descriptor: Descriptor) -> bool:
    return descriptor.artifact_type == MEDIA_TYPE and MARK in descriptor.annotations


def attached_sbom(registry: Registry, repository: str, artifact: Descriptor) -> bytes | None:
    """The SBOM bytes of an attached artifact (its one CycloneDX layer); None when it has none."""
    body = registry.manifest_body(repository, artifact.digest)
    if body is None:
        return None
    try:
        layers = [Descriptor.from_json(layer) for layer in json.loads(body).get("layers") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryUnverifiable(
            f"artifact {artifact.digest[:19]} is not a manifest: {exc}", address=registry.address
        ) from None
    layer = next((d for d in layers if d.media_type == MEDIA_TYPE), None)
    return None if layer is None else registry.blob(repository, layer.digest)


@dataclass
class SbomAttacher:
    """Called by the publisher for each image in the registry; returns the SBOM artifact's digest."""

    config: LoadedConfig
    maker: SbomMaker
    out_dir: Path | None = None  # where the attached SBOM is also written; default .raybuild/sbom/
    progress: Progress = silent

    def __call__(self, registry: Registry, key: str, image: PublishedImage, subject: Manifest) -> str:
        found = {i.key: i for i in sbom_images(self.config)}
        if key not in found:
            raise PublishError(f"{key}: not in the build record", hint="rerun `raybuild build`, then publish")
        sbom = self.maker.make(replace(found[key], published=image))
        repository = image.reference.path
        out = (self.out_dir or sbom_dir(self.config)) / sbom_name(key)
        for artifact in find_referrers(registry, repository, subject.digest, MEDIA_TYPE):
            existing = attached_sbom(registry, repository, artifact) if _ours(artifact) else None
            if existing is not None and same_content(existing, sbom.text):
                self.progress(f"{key}: the registry already holds this SBOM ({artifact.digest[:19]})")
                atomic_write(out, existing.decode("utf-8"))
                return artifact.digest
        data = sbom.text.encode()
        name = sbom_name(key)
        blob = Descriptor.of(MEDIA_TYPE, data, annotations={TITLE: name})
        target = Descriptor(subject.media_type, subject.digest, subject.size)
        manifest = attach(registry, repository, target, MEDIA_TYPE, blob, data, {MARK: name}, replaces=_ours)
        self.progress(f"{key}: attached its SBOM to {image.pinned} ({manifest.digest[:19]})")
        atomic_write(out, sbom.text)
        return manifest.digest
