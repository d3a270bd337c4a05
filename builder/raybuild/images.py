"""From the build and publish records to the image each of the head and the apps runs.

`render`, `up` and `measure` turn both records into image references through one function,
`image_references`: pinned by digest where published, else the last build's tag, else the ``:latest``
alias every build also sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from raybuild.config import LoadedConfig
from raybuild.config_apps import App, Deployment
from raybuild.errors import StateError
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, load_build_record
from raybuild.state import HEAD_KEY, PUBLISH_RECORD
from raybuild.tags import latest_ref, published_tag


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
    return str(built_image(config, key).ref)


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
        # (A publish keeps the build's tag, whatever registry it pushes to.)
        image = record.get(key) if record is not None else None
        if image is None or key not in built:
            return image
        if image.reference.tag_or_latest == published_tag(config, built[key].ref.tag_or_latest):
            return image
        stale.append(label(key))
        return None

    stale: list[str] = []
    images = {
        key: ImageReference(
            key, str(built[key].ref) if key in built else None, latest_ref(config, key), published(key)
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
