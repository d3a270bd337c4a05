"""What raybuild's commands leave for each other under ``.raybuild/``, and the image references made from it.

`build` records the content-addressed tag of each image it made (``build.json``), `publish` the registry
digest each was pushed as (``publish.json``). `render`, `up` and `measure` turn both records into image
references through one function, `image_references`: pinned by digest where published, else the last
build's tag, else the ``:latest`` alias every build also sets. This module is the only one that knows the
folder's layout, the head image's key and name, and the tag scheme.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from raybuild.config import LoadedConfig
from raybuild.config_apps import App, Deployment
from raybuild.errors import StateError, unreadable
from raybuild.fsutil import atomic_write
from raybuild.platforms import DEFAULT as DEFAULT_PLATFORM
from raybuild.platforms import KNOWN as KNOWN_PLATFORMS

# Relative to the project root (the folder holding raybuild.toml).
STATE_DIR = Path(".raybuild")
BUILD_RECORD = STATE_DIR / "build.json"
PUBLISH_RECORD = STATE_DIR / "publish.json"
CLUSTER_RECORD = STATE_DIR / "up.json"
DOCKERFILES_DIR = STATE_DIR / "dockerfiles"
DEFAULT_MEASURE_PATH = STATE_DIR / "measure.json"  # what `measure` always writes and `check` reads
# What a failed Serve deploy leaves behind (its whole traceback, the replica's log): its containers are gone.
LOGS_DIR = STATE_DIR / "logs"
SBOM_DIR = STATE_DIR / "sbom"  # `raybuild sbom` writes <image>.cdx.json here; `scan` and CI read them
WHEEL_HASHES = STATE_DIR / "wheel-hashes.json"  # which wheel file each lockfile hash is (see ship/wheels.py)

RECORD_VERSION = 1
# The head runs the Ray-only base image; a leading underscore cannot collide with an app name.
HEAD_KEY = "_head"
HEAD_IMAGE = "ray-head"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REBUILD = "rerun `raybuild build`"
_REPUBLISH = "fix or delete the file, then run `raybuild publish` again"


def project_id(config: LoadedConfig) -> str:
    """This checkout's id, for the Docker objects it makes (engine.PROJECT_LABEL).

    A hash of the config file's absolute path: stable across runs, and different for a second checkout or
    a second config in the same folder, even when both name the same cluster.
    """
    return hashlib.sha256(str(config.path).encode()).hexdigest()[:16]


def state_dir(config: LoadedConfig) -> Path:
    return config.root / STATE_DIR


def build_record_path(config: LoadedConfig) -> Path:
    return config.root / BUILD_RECORD


def publish_record_path(config: LoadedConfig) -> Path:
    return config.root / PUBLISH_RECORD


def cluster_record_path(config: LoadedConfig) -> Path:
    """What `raybuild up` started, for `down` and the drills."""
    return config.root / CLUSTER_RECORD


def dockerfiles_dir(config: LoadedConfig) -> Path:
    return config.root / DOCKERFILES_DIR


def failure_log_path(config: LoadedConfig, command: str, app: str) -> Path:
    """Where ``command`` (test, up, measure) keeps what Serve said when ``app`` failed to deploy."""
    return config.root / LOGS_DIR / f"{command}-{app}.log"


def sbom_dir(config: LoadedConfig) -> Path:
    return config.root / SBOM_DIR


def sbom_name(key: str) -> str:
    """An image's SBOM file name: ``hello.cdx.json``, and the head image's under its image name."""
    return f"{repository_name(key)}.cdx.json"


def wheel_hashes_path(config: LoadedConfig) -> Path:
    return config.root / WHEEL_HASHES


# -- names and tags -----------------------------------------------------------------------------------------


def repository_name(key: str) -> str:
    """The image's name under a registry namespace: the app's name, or the head image's."""
    return HEAD_IMAGE if key == HEAD_KEY else key


def _repository(config: LoadedConfig, key: str) -> str:
    return f"{config.project.registry}/{repository_name(key)}"


def image_ref(config: LoadedConfig, app: App, content_hash: str) -> str:
    """An app image's tag: the hash of its staged build context, so an unchanged app is a no-op."""
    project = config.project
    tag = f"ray{project.ray_version}-py{project.python}-{app.device}-{content_hash}"
    return f"{_repository(config, app.name)}:{tag}"


def head_ref(config: LoadedConfig, head_hash: str) -> str:
    project = config.project
    return f"{_repository(config, HEAD_KEY)}:ray{project.ray_version}-py{project.python}-{head_hash}"


def multi_platform_ref(config: LoadedConfig, key: str, refs: Mapping[str, str]) -> str:
    """The one tag of an image built for several platforms (``refs``: platform -> that platform's tag).

    A hash of the platform set and of each platform's content-addressed tag, so adding a platform gives a
    new tag and leaves every single-platform tag where it was. `publish` puts the image index here.
    """
    digest = hashlib.sha256()
    for platform, ref in sorted(refs.items()):
        digest.update(f"{platform}\0{ref}\0".encode())
    suffix = digest.hexdigest()[:12]
    project = config.project
    if key == HEAD_KEY:
        return head_ref(config, suffix)
    device = next(iter(refs.values())).rsplit(":", 1)[1].split("-")[2]  # ray2.60.0-py3.11-cpu-<hash>
    tag = f"ray{project.ray_version}-py{project.python}-{device}-{suffix}"
    return f"{_repository(config, key)}:{tag}"


def published_tag(config: LoadedConfig, tag: str) -> str:
    """The tag an image is published under: the build's tag, its content hash rehashed with the layer
    compression when that is not the default gzip. Switching compression so never moves a published tag
    (the same image ID would sit behind other layer digests), and gzip tags stay what they always were."""
    publish = config.config.publish
    if publish.compression == "gzip":
        return tag
    prefix, _, content_hash = tag.rpartition("-")
    salted = f"{content_hash}\0compression={publish.compression}\0level={publish.level}".encode()
    return f"{prefix}{'-' if prefix else ''}{hashlib.sha256(salted).hexdigest()[:12]}"


def latest_ref(config: LoadedConfig, key: str) -> str:
    """The alias every successful build moves to its newest image."""
    return f"{_repository(config, key)}:latest"


# -- the build record ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    app: str  # app name, or HEAD_KEY
    ref: str
    image_id: str
    device: str
    cached: bool  # made by an earlier build: every image read back from the record is
    # The app's deployments as found in its code at build time, in raybuild.toml's form (not for the head).
    deployments: tuple[dict[str, Any], ...] = ()
    pulled: bool = False  # taken from the registry, which had its tag, rather than built here
    # (platform, that platform's tag) for an image built for other platforms than the default alone; then
    # ``ref`` is the multi-platform tag (several platforms) or the one platform's tag.
    platform_refs: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def refs(self) -> tuple[str, ...]:
        """Every tag this entry names: its own and each platform's."""
        return (self.ref, *(ref for _, ref in self.platform_refs))

    def platform_ref(self, platform: str) -> str | None:
        """The tag of ``platform``'s image; None when it was not built for it."""
        if not self.platform_refs:
            return self.ref if platform == DEFAULT_PLATFORM else None
        return dict(self.platform_refs).get(platform)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.platform_refs) or (DEFAULT_PLATFORM,)


def load_build_record(config: LoadedConfig) -> dict[str, BuiltImage]:
    """The last build of each image, by app name (and HEAD_KEY); empty when nothing was built yet."""
    path = build_record_path(config)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: unreadable build record ({unreadable(exc)})", hint=_REBUILD) from exc
    except ValueError as exc:
        raise StateError(f"{path}: malformed build record ({exc})", hint=_REBUILD) from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict) or data.get("version") != RECORD_VERSION:
        raise StateError(
            f"{path}: malformed build record (expected version {RECORD_VERSION} and an 'images' object)",
            hint=_REBUILD,
        )
    built = {}
    for key, entry in sorted(images.items()):
        fields = entry if isinstance(entry, dict) else {}
        ref, image_id, device = (fields.get(name) for name in ("ref", "image_id", "device"))
        if not (isinstance(ref, str) and isinstance(image_id, str) and isinstance(device, str) and ref):
            raise StateError(
                f"{path}: malformed build record (key 'images.{key}' needs ref, image_id and device)",
                hint=_REBUILD,
            )
        deployments = fields.get("deployments", [])
        if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
            raise StateError(
                f"{path}: malformed build record (key 'images.{key}.deployments' must be a list of tables)",
                hint=_REBUILD,
            )
        by_platform = fields.get("platforms", {})
        if not isinstance(by_platform, dict) or not all(
            p in KNOWN_PLATFORMS and isinstance(r, str) and r for p, r in by_platform.items()
        ):
            raise StateError(
                f"{path}: malformed build record (key 'images.{key}.platforms' must map platforms to tags)",
                hint=_REBUILD,
            )
        built[key] = BuiltImage(
            key,
            ref,
            image_id,
            device,
            cached=True,
            deployments=tuple(deployments),
            platform_refs=tuple(sorted(by_platform.items())),
        )
    return built


def save_build_record(config: LoadedConfig, built: Iterable[BuiltImage]) -> None:
    """Merge this build's images into the record (atomically): images not built this time keep their entry."""
    images = load_build_record(config)
    images.update((image.app, image) for image in built)
    payload = {
        "version": RECORD_VERSION,
        "images": {
            key: {"ref": image.ref, "image_id": image.image_id, "device": image.device}
            | ({"deployments": list(image.deployments)} if image.deployments else {})
            | ({"platforms": dict(image.platform_refs)} if image.platform_refs else {})
            for key, image in sorted(images.items())
        },
    }
    atomic_write(build_record_path(config), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def with_found_deployments(config: LoadedConfig) -> LoadedConfig:
    """The config, with the deployments the last build found in the code for apps that list none."""
    found = {
        key: [Deployment.model_validate(table) for table in image.deployments]
        for key, image in load_build_record(config).items()
        if image.deployments
    }
    return config.with_deployments(found) if found else config


def _not_built(key: str) -> StateError:
    return StateError(f"app {key!r} has not been built", hint=f"run `raybuild build {key}`")


def built_image(config: LoadedConfig, key: str) -> BuiltImage:
    """The last build of ``key``; StateError when it was never built."""
    image = load_build_record(config).get(key)
    if image is None:
        raise _not_built(key)
    return image


def built_ref(config: LoadedConfig, key: str) -> str:
    """The tag of the last build of ``key``; StateError when it was never built."""
    return built_image(config, key).ref


# -- the publish record -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedImage:
    reference: str  # registry/namespace/name:tag, without a digest
    digest: str
    size: int
    compressed_size: int
    sbom: str | None = None  # the digest of the SBOM artifact attached to the image in the registry

    @property
    def pinned(self) -> str:
        return f"{self.reference}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.sbom is None:
            del data["sbom"]  # records written without SBOMs keep their old shape
        return data


@dataclass(frozen=True)
class PublishRecord:
    """Which registry digest each image was pushed as.

    `raybuild render` pins images by these digests, so a manifest names exactly the bytes that were
    measured and published, not whatever a tag points at later.
    """

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
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(
                f"{path}: unreadable publish record ({unreadable(exc)})", hint=_REPUBLISH
            ) from exc
        except json.JSONDecodeError as exc:
            raise StateError(f"{path}: not a readable JSON publish record: {exc}", hint=_REPUBLISH) from exc
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, path: Path) -> PublishRecord:
        if not isinstance(data, dict):
            raise StateError(f"{path}: expected a JSON object at the top level", hint=_REPUBLISH)
        if data.get("version") != RECORD_VERSION:
            raise StateError(
                f"{path}: key 'version': expected {RECORD_VERSION} (got {data.get('version')!r})",
                hint=_REPUBLISH,
            )
        raw_images = data.get("images")
        if not isinstance(raw_images, dict):
            raise StateError(f"{path}: key 'images': expected an object of image entries", hint=_REPUBLISH)
        images = {key: _published(raw_images[key], f"images.{key}", path) for key in sorted(raw_images)}
        return cls(MappingProxyType(images))

    def to_json(self) -> str:
        payload = {
            "version": RECORD_VERSION,
            "images": {key: self.images[key].to_json() for key in sorted(self.images)},
        }
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_json())


def _published(raw: Any, key: str, path: Path) -> PublishedImage:
    if not isinstance(raw, dict):
        raise StateError(f"{path}: key '{key}': expected an object", hint=_REPUBLISH)
    reference = raw.get("reference")
    if not isinstance(reference, str) or not reference or "@" in reference:
        raise StateError(
            f"{path}: key '{key}.reference': expected 'registry/name:tag' without a digest "
            f"(got {reference!r})",
            hint=_REPUBLISH,
        )
    digest = raw.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise StateError(
            f"{path}: key '{key}.digest': expected 'sha256:' and 64 hex digits (got {digest!r})",
            hint=_REPUBLISH,
        )
    sizes = {}
    for name in ("size", "compressed_size"):
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StateError(
                f"{path}: key '{key}.{name}': expected a byte count (got {value!r})", hint=_REPUBLISH
            )
        sizes[name] = value
    sbom = raw.get("sbom")
    if sbom is not None and not (isinstance(sbom, str) and _DIGEST.match(sbom)):
        raise StateError(
            f"{path}: key '{key}.sbom': expected 'sha256:' and 64 hex digits (got {sbom!r})", hint=_REPUBLISH
        )
    return PublishedImage(reference, digest, sizes["size"], sizes["compressed_size"], sbom)


def load_publish_record(config: LoadedConfig) -> PublishRecord | None:
    return PublishRecord.load(publish_record_path(config))


# -- from records to image references -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReference:
    key: str  # app name, or HEAD_KEY
    built: str | None  # the last build's tag
    latest: str  # the alias every build also sets
    published: PublishedImage | None

    @property
    def local(self) -> str:
        """The tag in this host's engine: the last build's, else the ``:latest`` alias."""
        return self.built or self.latest

    @property
    def ref(self) -> str:
        """What a cluster should run: pinned by digest where published, else the local tag."""
        return self.published.pinned if self.published is not None else self.local

    @property
    def recorded(self) -> bool:
        """Whether either record has the image: else ``ref`` is only the ``:latest`` guess."""
        return self.published is not None or self.built is not None


@dataclass(frozen=True)
class ImageReferences:
    """The head's image and each app's, with what a user should know about where they came from."""

    images: Mapping[str, ImageReference]  # HEAD_KEY first, then the apps in config order
    publish_record: bool  # whether there is one at all
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> ImageReference:
        return self.images[key]

    def refs(self) -> dict[str, str]:
        return {key: image.ref for key, image in self.images.items()}

    def built(self, key: str) -> str:
        """The last build's tag of ``key``; StateError when it was never built."""
        built = self.images[key].built
        if built is None:
            raise _not_built(key)
        return built

    @property
    def note(self) -> str:
        """Where the references come from, for the manifest's header comment."""
        if not self.publish_record:
            return "local tags, not published"
        if all(image.published is not None for image in self.images.values()):
            return f"pinned by digest from {PUBLISH_RECORD}"
        return f"pinned by digest from {PUBLISH_RECORD} where published, else local tags"


def _tag(ref: str) -> str:
    """The tag of ``name:tag`` (a publish keeps the build's tag, whatever registry it pushes to)."""
    name = ref.split("@", 1)[0]
    return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"


def image_references(
    config: LoadedConfig, record: PublishRecord | None, apps: Sequence[App] | None = None
) -> ImageReferences:
    """The head's and each app's image (all of the project's apps when ``apps`` is None)."""
    built = load_build_record(config)
    keys = [HEAD_KEY, *(app.name for app in (config.apps if apps is None else apps))]

    def label(key: str) -> str:
        return "head (Ray base)" if key == HEAD_KEY else repr(key)

    def published(key: str) -> PublishedImage | None:
        # A build after the last publish has another content-addressed tag: the published image is not it.
        image = record.get(key) if record is not None else None
        if image is None or key not in built:
            return image
        if _tag(image.reference) == published_tag(config, _tag(built[key].ref)):
            return image
        stale.append(label(key))
        return None

    stale: list[str] = []
    images = {
        key: ImageReference(
            key, built[key].ref if key in built else None, latest_ref(config, key), published(key)
        )
        for key in keys
    }
    warnings = []
    missing = [label(key) for key in keys if images[key].published is None and label(key) not in stale]
    if record is None:
        warnings.append(
            f"no publish record ({PUBLISH_RECORD}): images use local tags, which a cluster may not be "
            "able to pull and which can change under a running cluster; run `raybuild publish` to pin digests"
        )
    elif missing:
        warnings.append(
            f"the publish record has no image for {', '.join(missing)}: using local tags; "
            "run `raybuild publish` to pin them by digest"
        )
    if stale:
        warnings.append(
            f"built since the last publish: {', '.join(stale)}: using the new local tags; "
            "run `raybuild publish` to pin them by digest"
        )
    return ImageReferences(MappingProxyType(images), record is not None, tuple(warnings))
