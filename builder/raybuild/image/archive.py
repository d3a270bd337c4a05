"""A root filesystem tarball as an image archive that `docker load` reads, for any platform.

`docker import` would be simpler, but Docker 20.10 ignores its ``--platform`` (outside experimental mode)
and records the daemon's own architecture: an arm64 rootfs imported on an amd64 host is labelled amd64, and
BuildKit's ``--platform linux/arm64`` then refuses it and tries to pull it instead. The archive written here
is the one-layer image `docker import` would make, with the image config's architecture set right.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path

from raybuild.platforms import Platform

# Every image raybuild imports has the same "created" time: nothing about the host or the clock.
CREATED = "1970-01-01T00:00:00Z"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def image_config(layer_digest: str, platform: Platform, labels: Mapping[str, str]) -> bytes:
    """The image config (the JSON `docker inspect` shows): one layer, the labels, the architecture."""
    config = {
        "architecture": platform.architecture,
        "os": "linux",
        "created": CREATED,
        "config": {"Labels": dict(sorted(labels.items()))},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": CREATED, "created_by": "raybuild: root filesystem from mmdebstrap"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_archive(rootfs: Path, out: Path, ref: str, platform: Platform, labels: Mapping[str, str]) -> str:
    """Write `docker load`'s archive format (manifest.json, config, layer) for ``rootfs``; the config digest.

    The config's digest is the image ID `docker load` gives the image.
    """
    layer_digest = _sha256(rootfs)
    config = image_config(layer_digest, platform, labels)
    config_digest = hashlib.sha256(config).hexdigest()
    manifest = [
        {"Config": f"{config_digest}.json", "RepoTags": [ref], "Layers": [f"{layer_digest}/layer.tar"]}
    ]
    with tarfile.open(out, "w") as tar:
        _add_bytes(tar, f"{config_digest}.json", config)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        tar.add(rootfs, arcname=f"{layer_digest}/layer.tar")
    return f"sha256:{config_digest}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
