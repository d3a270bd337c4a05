"""The publish record, ``.raybuild/publish.json``: which registry digest each image was pushed as.

`raybuild render` pins images by these digests, so a manifest names exactly the bytes that were measured
and published, not whatever a tag points at later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from raybuild.config import App, LoadedConfig
from raybuild.errors import ConfigError
from raybuild.fsutil import atomic_write

RECORD_VERSION = 1
# The head runs the Ray-only base image; a leading underscore cannot collide with an app name.
HEAD_KEY = "_head"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class PublishedImage:
    reference: str  # registry/namespace/name:tag, without a digest
    digest: str
    size: int
    compressed_size: int

    @property
    def pinned(self) -> str:
        return f"{self.reference}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "size": self.size,
            "compressed_size": self.compressed_size,
        }


@dataclass(frozen=True)
class PublishRecord:
    images: Mapping[str, PublishedImage] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str) -> PublishedImage | None:
        return self.images.get(key)

    @classmethod
    def load(cls, path: Path) -> PublishRecord | None:
        """The record at ``path``; None when nothing has been published yet."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON publish record: {exc}", hint=_REPUBLISH) from exc
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, path: Path) -> PublishRecord:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level", hint=_REPUBLISH)
        if data.get("version") != RECORD_VERSION:
            raise ConfigError(
                f"{path}: key 'version': expected {RECORD_VERSION} (got {data.get('version')!r})",
                hint=_REPUBLISH,
            )
        raw_images = data.get("images")
        if not isinstance(raw_images, dict):
            raise ConfigError(f"{path}: key 'images': expected an object of image entries", hint=_REPUBLISH)
        images = {key: _image(raw_images[key], f"images.{key}", path) for key in sorted(raw_images)}
        return cls(MappingProxyType(images))

    def to_json(self) -> str:
        payload = {
            "version": RECORD_VERSION,
            "images": {key: self.images[key].to_json() for key in sorted(self.images)},
        }
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_json())


_REPUBLISH = "fix or delete the file, then run `raybuild publish` again"


def _image(raw: Any, key: str, path: Path) -> PublishedImage:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: key '{key}': expected an object", hint=_REPUBLISH)
    reference = raw.get("reference")
    if not isinstance(reference, str) or not reference or "@" in reference:
        raise ConfigError(
            f"{path}: key '{key}.reference': expected 'registry/name:tag' without a digest "
            f"(got {reference!r})",
            hint=_REPUBLISH,
        )
    digest = raw.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ConfigError(
            f"{path}: key '{key}.digest': expected 'sha256:' and 64 hex digits (got {digest!r})",
            hint=_REPUBLISH,
        )
    sizes = {}
    for name in ("size", "compressed_size"):
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                f"{path}: key '{key}.{name}': expected a byte count (got {value!r})", hint=_REPUBLISH
            )
        sizes[name] = value
    return PublishedImage(reference, digest, sizes["size"], sizes["compressed_size"])


def record_path(config: LoadedConfig) -> Path:
    return config.root / ".raybuild" / "publish.json"


def local_reference(config: LoadedConfig, app: App | None) -> str:
    """The tag a local build leaves behind for ``app`` (None: the head's Ray-only base).

    The content-addressed tag of the last `raybuild build` when there is one, else the `:latest` alias
    that every build also sets.
    """
    from raybuild.image.build import load_build_record

    built = load_build_record(config).get(HEAD_KEY if app is None else app.name)
    if built is not None:
        return str(built["ref"])
    if app is None:
        return f"{config.project.registry}/ray-head:latest"
    return f"{config.image_name(app)}:latest"
