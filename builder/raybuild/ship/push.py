"""Pushing one local image to one registry reference, in the layer compression the project publishes.

This is the single seam for "put this image there": publish and measure call it per image; retries,
deadlines and the record stay with the caller, which can follow a push's output with `PushStage`.

- gzip (the default): `docker push`, after tagging the image as the target. Every Docker and containerd
  can pull gzip layers, and `docker push` keeps the image's config, so the registry's config digest is the
  local image ID.
- zstd: skopeo copies the image from the daemon (`docker-daemon:`), recompressing every layer, as an OCI
  manifest. Only containerd >= 1.5 and Docker Engine >= 23 can pull it. Skopeo rewrites the config as an
  OCI config, so the registry's config digest is no longer the image ID: the image is recognised by its
  layers' uncompressed digests (``rootfs.diff_ids``) instead. Skopeo 1.9 reuses gzip blobs it has seen
  when it can, which would leave a mixed manifest; a daemon source always recompresses, and
  `check_layers` refuses any push that still holds a layer of another compression.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from raybuild.config import LoadedConfig
from raybuild.docker_verbs import ImagePush
from raybuild.errors import PublishError
from raybuild.progress import Progress
from raybuild.reference import ImageRef
from raybuild.registry import Manifest, Registry, RegistryUnverifiable

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


# What a push needs of the engine: the verbs are declared once, with the rest of Docker's.
PushEngine = ImagePush


@dataclass(frozen=True)
class Compression:
    format: Literal["gzip", "zstd"] = "gzip"
    level: int | None = None

    @classmethod
    def of(cls, config: LoadedConfig) -> Compression:
        publish = config.config.publish
        return cls(publish.compression, publish.level)

    def __str__(self) -> str:
        return self.format if self.level is None else f"{self.format} level {self.level}"


GZIP = Compression()


_LAYER = re.compile(
    r"^([0-9a-f]{12,64}): (Preparing|Waiting|Pushing|Pushed|Layer already exists|Mounted from)"
)
# skopeo (zstd) names each blob once, as it starts copying it, and the manifest last.
_SKOPEO_BLOB = re.compile(r"^Copying blob (?:sha256:)?([0-9a-f]{12})")
_DONE = ("Pushed", "Layer already exists", "Mounted from")


@dataclass
class PushStage:
    """How far a `docker push` got, from its output: for the one line that reports a stalled push."""

    layers: dict[str, str] = field(default_factory=dict)  # layer ID -> its last status
    manifest: bool = False

    def feed(self, line: str) -> None:
        match = _LAYER.match(line.strip())
        blob = _SKOPEO_BLOB.match(line.strip())
        if match:
            self.layers[match.group(1)] = match.group(2)
        elif blob:
            for layer, status in self.layers.items():  # one blob at a time: the one before is done
                if status == "Pushing":
                    self.layers[layer] = "Pushed"
            self.layers[blob.group(1)] = "Pushing"
        elif _PUSH_DIGEST.search(line) or line.startswith("Writing manifest"):
            self.manifest = True

    def __str__(self) -> str:
        if self.manifest:
            return "after the manifest was uploaded"
        if not self.layers:
            return "before any layer upload started (checking the registry)"
        waiting = [layer for layer, status in self.layers.items() if status not in _DONE]
        done = len(self.layers) - len(waiting)
        if not waiting:
            return f"uploading the manifest ({done} of {done} layers done)"
        return f"uploading layer {waiting[0]} ({done} of {len(self.layers)} layers done)"


def push_digest(output: str) -> str | None:
    """The repo digest that docker push prints last: ``<tag>: digest: sha256:... size: N``."""
    found = _PUSH_DIGEST.findall(output)
    return str(found[-1]) if found else None


def push_image(
    engine: PushEngine,
    local_ref: str,
    target: str,
    compression: Compression,
    *,
    made: list[str] | None = None,
    on_line: Progress | None = None,
    timeout: float | None = None,
) -> str | None:
    """Push the engine's ``local_ref`` to ``target``; the digest of the manifest written (None when docker
    printed none: the caller reads it from the image's RepoDigests).

    A gzip push tags the image as ``target`` first; a tag this call made is appended to ``made``, so that
    a failed publish can remove it again. A zstd push makes no local tag.
    """
    if compression.format == "zstd":
        return engine.copy_to_registry(
            local_ref,
            target,
            compression=compression.format,
            level=compression.level,
            plain_http=ImageRef.parse(target).is_loopback,
            on_line=on_line,
            timeout=timeout,
        )
    if target != local_ref:
        if not engine.image_exists(target) and made is not None:
            made.append(target)
        engine.tag(local_ref, target)
    return push_digest(engine.push(target, on_line=on_line, timeout=timeout).output)


def wrong_layers(manifest: Manifest, compression: Compression) -> list[str]:
    """The layers of ``manifest`` (digest and media type) that are not in ``compression``."""
    if compression.format == "gzip":
        return [
            f"{digest} ({kind})"
            for digest, kind in zip(manifest.layer_digests, manifest.layer_media_types, strict=False)
            if "zstd" in kind
        ]
    return [
        f"{digest} ({kind or 'no media type'})"
        for digest, kind in zip(manifest.layer_digests, manifest.layer_media_types, strict=False)
        if kind != ZSTD_LAYER
    ] + (["(the manifest lists no layer media types)"] if not manifest.layer_media_types else [])


def check_layers(target: str, manifest: Manifest, compression: Compression) -> None:
    """PublishError unless every layer of the pushed ``manifest`` is in ``compression``."""
    wrong = wrong_layers(manifest, compression)
    if wrong:
        raise PublishError(
            f"{target}@{manifest.digest}: {len(wrong)} layer(s) not {compression.format}: "
            + ", ".join(wrong[:3]),
            hint="skopeo reused blobs it had seen in another compression; rerun `raybuild publish --force`, "
            "which copies from the Docker daemon again",
        )


def diff_ids(inspected: dict[str, Any]) -> tuple[str, ...]:
    """A local image's uncompressed layer digests, from `docker image inspect`."""
    return tuple(str(layer) for layer in (inspected.get("RootFS") or {}).get("Layers") or [])


def config_diff_ids(registry: Registry, repository: str, manifest: Manifest) -> tuple[str, ...] | None:
    """The uncompressed layer digests that the registry's image config lists; None when unreadable.

    A registry that keeps failing (RegistryUnreachable, after ``registry``'s retries) is not "unreadable":
    that error is raised, so publish stops with one line instead of treating the image as another.
    """
    if manifest.config_digest is None:
        return None
    try:
        blob = registry.blob(repository, manifest.config_digest)
        data = json.loads(blob) if blob is not None else None
    except (RegistryUnverifiable, ValueError):
        return None
    layers = data.get("rootfs", {}).get("diff_ids") if isinstance(data, dict) else None
    return tuple(map(str, layers)) if isinstance(layers, list) else None


def is_image(
    registry: Registry,
    repository: str,
    manifest: Manifest,
    image_id: str,
    layers: Sequence[str],
    compression: Compression,
) -> bool:
    """Whether the registry's ``manifest`` is the local image ``image_id`` (whose diff IDs are ``layers``)."""
    if compression.format == "gzip":
        return manifest.config_digest == image_id
    return bool(layers) and config_diff_ids(registry, repository, manifest) == tuple(layers)
