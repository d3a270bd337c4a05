"""The tag scheme: what every image raybuild makes is called, in the project's registry namespace.

An app image's tag is ``ray<version>-py<python>-<device>-<hash>``, the head image's ``ray<version>-py<python>
-<hash>``; the hash is that of the staged build context, so an unchanged app is a no-op and a changed one
gets a tag of its own. This module is the only one that puts a tag together; everything else reads tags
through `raybuild.reference.ImageRef`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.errors import StateError
from raybuild.reference import ImageRef
from raybuild.state import HEAD_KEY

# The head runs the Ray-only base image; a leading underscore in HEAD_KEY cannot collide with an app name.
HEAD_IMAGE = "ray-head"


def repository_name(key: str) -> str:
    """The image's name under a registry namespace: the app's name, or the head image's."""
    return HEAD_IMAGE if key == HEAD_KEY else key


def sbom_name(key: str) -> str:
    """An image's SBOM file name: ``hello.cdx.json``, and the head image's under its image name."""
    return f"{repository_name(key)}.cdx.json"


def _repository(config: LoadedConfig, key: str) -> str:
    # Joined as written, not through ImageRef's familiar form: a registry written as docker.io/team keeps
    # the tags it always had.
    return f"{config.project.registry}/{repository_name(key)}"


def _runtime(config: LoadedConfig) -> str:
    """The part of every tag that names the Ray and Python an image runs."""
    return f"ray{config.project.ray_version}-py{config.project.python}"


def _app_tag(config: LoadedConfig, device: str, content_hash: str) -> str:
    return f"{_runtime(config)}-{device}-{content_hash}"


def image_ref(config: LoadedConfig, app: App, content_hash: str) -> str:
    """An app image's tag: the hash of its staged build context, so an unchanged app is a no-op."""
    return f"{_repository(config, app.name)}:{_app_tag(config, app.device, content_hash)}"


def head_ref(config: LoadedConfig, head_hash: str) -> str:
    return f"{_repository(config, HEAD_KEY)}:{_runtime(config)}-{head_hash}"


def _device(config: LoadedConfig, key: str) -> str:
    for app in config.apps:
        if app.name == key:
            return app.device
    raise StateError(f"app {key!r} is not in {config.path}", hint="check the app's name in raybuild.toml")


def multi_platform_ref(config: LoadedConfig, key: str, refs: Mapping[str, ImageRef | str]) -> str:
    """The one tag of an image built for several platforms (``refs``: platform -> that platform's tag).

    A hash of the platform set and of each platform's content-addressed tag, so adding a platform gives a
    new tag and leaves every single-platform tag where it was. `publish` puts the image index here. The
    device in an app's tag is the app's own, as in each platform's tag.
    """
    digest = hashlib.sha256()
    for platform, ref in sorted(refs.items()):
        digest.update(f"{platform}\0{ref}\0".encode())
    suffix = digest.hexdigest()[:12]
    if key == HEAD_KEY:
        return head_ref(config, suffix)
    return f"{_repository(config, key)}:{_app_tag(config, _device(config, key), suffix)}"


def published_tag(config: LoadedConfig, tag: str) -> str:
    """The tag an image is published under: the build's tag, its content hash rehashed with the layer
    compression when that is not the default gzip. Switching compression so never moves a published tag
    (the same image ID would sit behind other layer digests), and gzip tags stay what they always were."""
    publish = config.config.publish
    if publish.compression == "gzip":
        return tag
    # The content hash is the tag's last dash-separated part in every tag this module makes.
    prefix, _, content_hash = tag.rpartition("-")
    salted = f"{content_hash}\0compression={publish.compression}\0level={publish.level}".encode()
    return f"{prefix}{'-' if prefix else ''}{hashlib.sha256(salted).hexdigest()[:12]}"


def latest_ref(config: LoadedConfig, key: str) -> str:
    """The alias every successful build moves to its newest image."""
    return f"{_repository(config, key)}:latest"
