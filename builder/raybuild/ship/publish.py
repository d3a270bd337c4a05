"""Publishing built images: skip what the registry already holds, push the rest, record pinned digests.

The registry is asked first (``GET /v2/<name>/manifests/<tag>``): when its manifest's config digest is the
local image ID, the bytes are already there and nothing is pushed. A content-addressed tag is never moved:
when the registry holds the tag as another image, publish refuses before pushing anything, naming both
(``force`` overwrites, with a warning). Moving it would give the same inputs two digests, and a RayService
pinned to the new one would roll out a whole new cluster for nothing. Pushes go through ``Engine.push``, so
docker's own credential store does any login; raybuild never reads credentials, and drops output lines
that could carry them. The record is written once, after every image is in the registry, so a failed
publish leaves the previous record exactly as it was, and removes the local tags it made for the target
registry.

An image built for several platforms is pushed as one image per platform (each under its own tag), then an
image index of them under the multi-platform tag (`ship/index.py`). The record names the index.

Layers are gzip (`docker push`) or zstd ([publish].compression; skopeo from the daemon): `ship/push.py`
pushes one image, and every zstd push is checked layer by layer. A zstd image is published under its own
tag (`tags.published_tag`), so switching compression never moves a tag.

Registry work is bounded: each image's push has a deadline ([limits].registry_deadline_s), every attempt
included, and the retries are raybuild's alone ([limits].registry_attempts, one line each): `Engine.push`
cuts Docker's own layer retries short. Every registry call (manifest and config reads, the index, the SBOM)
goes through the same policy (`raybuild.registry_retry`); what still fails after it is one line. A
stalled upload fails at the deadline with one line naming the registry and the stage the push had reached.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.errors import DockerRetry, EngineError, PublishError, UsageError
from raybuild.progress import Progress, silent
from raybuild.records import PublishedImage, PublishRecord, load_build_record
from raybuild.reference import ImageRef
from raybuild.registry import (
    Descriptor,
    HttpRegistry,
    Manifest,
    Registry,
    RegistryUnreachable,
    RegistryUnverifiable,
    api_url,
    put_index,
)
from raybuild.registry_retry import Backoff, RetryPolicy, retrying
from raybuild.ship.index import publish_index, refuse_moved_indexes
from raybuild.ship.push import (
    Compression,
    PushEngine,
    PushStage,
    check_layers,
    diff_ids,
    is_image,
    push_image,
    wrong_layers,
)
from raybuild.ship.push_failures import (
    classify_push_failure,
    push_hint,
    redact,
    secret_values,
    unreachable,
)
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.tags import published_tag, repository_name

T = TypeVar("T")

_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_PUSH_NOISE = re.compile(r": (Preparing|Waiting|Pushing)\b")


# Attaches an image's SBOM in the registry (ship/attach.py): (registry, key, image, its manifest) -> the
# SBOM artifact's digest. Called for skipped images too, so a missing or changed SBOM is still attached.
AttachSbom = Callable[[Registry, str, PublishedImage, Manifest], str]


class DockerEngine(PushEngine, Protocol):
    """What publishing needs of the engine: the one image push (ship/push.py), and reading the local image."""

    def inspect(self, ref: str) -> dict[str, Any]: ...
    def remove_image(self, ref: str) -> None: ...


@dataclass(frozen=True)
class Published:
    key: str  # app name, or HEAD_KEY
    status: Literal["pushed", "skipped"]
    image: PublishedImage

    def to_dict(self) -> dict[str, object]:
        return {"app": self.key, "status": self.status, "pinned": self.image.pinned, **self.image.to_json()}


@dataclass(frozen=True)
class Planned:
    key: str
    local_ref: str
    image_id: str
    target: ImageRef  # parsed once, here: every step of this image's publish reads its parts
    platform: str = platforms.DEFAULT
    # An image built for several platforms: one image per platform, pushed before the index at ``target``.
    parts: tuple[Planned, ...] = ()
    # `raybuild sbom` inventories the local image, which is this machine's platform's: another platform's
    # image of the set gets no SBOM rather than one that describes different binaries.
    sbom: bool = True

    @property
    def images(self) -> tuple[Planned, ...]:
        """The images `docker push` sends for this entry."""
        return self.parts or (self,)

    diff_ids: tuple[str, ...] = ()  # the local image's layers: a zstd push's identity in the registry


@dataclass
class Publisher:
    config: LoadedConfig
    engine: DockerEngine
    registry: str | None = None  # HOST[:PORT]/NAMESPACE; default [project].registry
    connect: Callable[[str], Registry] = HttpRegistry  # HOST[:PORT] -> its client
    progress: Progress = silent
    output: Progress | None = None  # docker push lines; default: progress
    sleep: Callable[[float], None] = time.sleep
    backoff: Backoff | None = None  # default: [limits].registry_attempts attempts, 1 s then doubled
    deadline: float | None = None  # seconds per image push; default [limits].registry_deadline_s
    clock: Callable[[], float] = time.monotonic
    secrets: tuple[str, ...] = field(default_factory=lambda: secret_values(os.environ))
    attach_sbom: AttachSbom | None = None
    force: bool = False  # overwrite a tag the registry holds as another image
    compression: Compression = field(init=False)  # [publish].compression

    def __post_init__(self) -> None:
        limits = self.config.config.limits
        if self.backoff is None:
            self.backoff = Backoff(attempts=limits.registry_attempts)
        if self.deadline is None:
            self.deadline = float(limits.registry_deadline_s)
        self.compression = Compression.of(self.config)

    def plan(self, names: tuple[str, ...] = ()) -> list[Planned]:
        """The head, then each selected app that has been built, in config order."""
        registry = (self.registry or self.config.project.registry).rstrip("/")
        if not _REGISTRY.match(registry) or "/" not in registry:
            raise UsageError(f"registry {registry!r} is not HOST[:PORT]/NAMESPACE",
                             hint="for example 127.0.0.1:5000/raybuild (lowercase, no scheme)")  # fmt: skip
        selected, built = self.config.select(names), load_build_record(self.config)
        missing = [app.name for app in selected if app.name not in built]
        if names and missing:
            raise PublishError(
                f"not built yet: {', '.join(missing)}", hint=f"run `raybuild build {' '.join(missing)}`"
            )
        if missing:
            self.progress(f"not built yet, not published: {', '.join(missing)}")
        if HEAD_KEY not in built:
            self.progress("no head image in the build record: `raybuild build` a CPU app to make one")
        namespace = ImageRef.parse_name(registry)
        items = []
        for key in [HEAD_KEY, *(app.name for app in selected)]:
            if key in built:
                ref, image_id = str(built[key].ref), built[key].image_id
                target = self._target(namespace, key, ref)
                refs = built[key].platform_refs
                parts = tuple(self._part(key, namespace, p, str(r)) for p, r in refs) if len(refs) > 1 else ()
                platform = refs[0][0] if len(refs) == 1 else platforms.DEFAULT
                items.append(Planned(key, ref, image_id, target, platform, parts))
        if not items:
            raise PublishError(
                "nothing to publish: the build record has no images", hint="run `raybuild build`"
            )
        return items

    def publish(self, names: tuple[str, ...] = ()) -> list[Published]:
        """Publish, then merge the results into the record.

        On any failure or interruption the record is left as it was, and the local tags this run made for
        the target registry are removed again. A record that would not change is not rewritten, so a publish
        that pushed nothing leaves it as it was.
        """
        path = publish_record_path(self.config)
        previous = PublishRecord.load(path)  # a malformed record fails here, before anything is pushed
        made: list[str] = []
        try:
            try:
                results = self._publish_plan(self.plan(names), made)
            except RegistryUnreachable as exc:  # retried already (RetryPolicy): one line, and why
                raise unreachable(exc) from None
            images = {**(previous.images if previous else {}), **{r.key: r.image for r in results}}
            record = PublishRecord(MappingProxyType(images))
            if previous is None or record.to_json() != previous.to_json():
                record.save(path)
        except BaseException:
            for tag in made:
                self.engine.remove_image(tag)  # only the tag: the built image keeps its own
            raise
        return results

    def _publish_plan(self, plan: list[Planned], made: list[str]) -> list[Published]:
        planned = [self._check(image) for item in plan for image in item.images]
        self._refuse_moved_tags(planned)
        indexes = [(str(item.target), self._remote(item.target)) for item in plan if item.parts]
        refuse_moved_indexes(indexes, force=self.force)
        pushed = {
            image.target: self._publish_one(image, size, remote, made) for image, size, remote in planned
        }
        return [
            self._publish_index(item, [pushed[p.target] for p in item.parts])
            if item.parts
            else pushed[item.target]
            for item in plan
        ]

    @property
    def retry(self) -> RetryPolicy:
        """The one policy for every registry call and push attempt: this publisher's backoff and clock."""
        assert self.backoff is not None
        return RetryPolicy(self.backoff, self.sleep, self.clock, self.progress)

    def _target(self, namespace: ImageRef, key: str, built_ref: str) -> ImageRef:
        """Where ``key``'s image built as ``built_ref`` goes: its repository under the namespace, and the
        built tag as published in this project's compression."""
        tag = published_tag(self.config, ImageRef.parse(built_ref).tag_or_latest)
        return namespace.child(repository_name(key)).with_tag(tag)

    def _registry(self, target: ImageRef, until: float | None = None) -> Registry:
        """The client for ``target``'s registry, every call through the one retry policy."""
        return retrying(self.connect(target.host), self.retry, until)

    def _check(self, item: Planned) -> tuple[Planned, int, Manifest | None]:
        """The item with its layers, the local image's size (it must still be the one built), and what the
        registry holds at its tag."""
        try:
            local = self.engine.inspect(item.local_ref)
        except EngineError:
            local = {}
        if local.get("Id") != item.image_id:
            raise PublishError(f"{item.key}: {item.local_ref} is gone or no longer the image that was built",
                               hint="rerun `raybuild build`, then publish")  # fmt: skip
        item = replace(item, diff_ids=diff_ids(local))
        return item, int(local.get("Size") or 0), self._remote(item.target)

    def _is_image(self, item: Planned, manifest: Manifest) -> bool:
        registry, repository = self._registry(item.target), item.target.path
        return is_image(registry, repository, manifest, item.image_id, item.diff_ids, self.compression)

    def _refuse_moved_tags(self, planned: list[tuple[Planned, int, Manifest | None]]) -> None:
        moved = [
            f"{item.target} is {remote.digest} (image {remote.config_digest}) in the registry, "
            f"but image {item.image_id} here"
            for item, _, remote in planned
            if remote is not None and remote.config_digest is not None and not self._is_image(item, remote)
        ]
        if moved and not self.force:
            raise PublishError(
                "refusing to move a content-addressed tag: " + "; ".join(moved),
                hint="`raybuild build` takes the registry's image for a tag it holds; run it and publish "
                "again, or `raybuild publish --force` to overwrite the registry's image",
            )
        for line in moved:
            self.progress(f"warning: --force: overwriting {line}")

    def _publish_one(self, item: Planned, size: int, remote: Manifest | None, made: list[str]) -> Published:
        target = item.target
        # A tag whose layers are in another compression (pushed by another tool) is pushed again.
        if remote is not None and self._is_image(item, remote) and not wrong_layers(remote, self.compression):
            self.progress(f"{item.key}: {item.target} is already in the registry")
            image = PublishedImage(target, remote.digest, size, remote.compressed_size)
            return Published(item.key, "skipped", self._with_sbom(item, image, remote))
        self.progress(f"pushing {item.key} -> {item.target}" + (
            f" ({self.compression} layers)" if self.compression.format != "gzip" else ""))  # fmt: skip
        assert self.deadline is not None
        until = self.clock() + self.deadline
        digest = self.retry.run(target.host, lambda: self._push_once(item, until, made), until)
        digest = digest or self._repo_digest(target)
        pushed = self._remote(target.with_digest(digest))
        if pushed is not None and pushed.config_digest is not None and not self._is_image(item, pushed):
            raise PublishError(f"{item.target}@{digest} is image {pushed.config_digest}, not {item.image_id}",
                               hint="was the tag pushed concurrently? rerun `raybuild publish`")  # fmt: skip
        if pushed is not None and self.compression.format != "gzip":
            check_layers(str(target), pushed, self.compression)
        compressed = pushed.compressed_size if pushed is not None else 0
        image = PublishedImage(target, digest, size, compressed)
        return Published(item.key, "pushed", self._with_sbom(item, image, pushed))

    def _part(self, key: str, namespace: ImageRef, platform: str, ref: str) -> Planned:
        """One platform's image of a multi-platform entry, under its own tag in the target registry."""
        try:
            image_id = str(self.engine.inspect(ref).get("Id") or "")
        except EngineError:
            image_id = ""
        target = self._target(namespace, key, ref)
        return Planned(key, ref, image_id, target, platform, sbom=platforms.native(platform))

    def _publish_index(self, item: Planned, images: list[Published]) -> Published:
        """PUT the image index of ``images`` (each platform's, already pushed) under ``item.target``."""
        target = item.target

        def put(manifests: list[Descriptor]) -> Manifest:
            return put_index(self._registry(target), target.path, target.tag_or_latest, manifests)

        parts = [(part.platform, published.image) for part, published in zip(item.parts, images, strict=True)]
        status, image = publish_index(
            item.key,
            target,
            parts,
            read=lambda reference: self._remote(target, reference),
            put=put,
            progress=self.progress,
        )
        return Published(item.key, status, image)

    def _with_sbom(self, item: Planned, image: PublishedImage, manifest: Manifest | None) -> PublishedImage:
        if self.attach_sbom is None:
            return image
        if not item.sbom:
            self.progress(f"{item.key}: no SBOM attached to {item.target} ({item.platform}: `raybuild sbom` "
                          "inventories this machine's platform's image)")  # fmt: skip
            return image
        if manifest is None:
            self.progress(
                f"{item.key}: the registry does not show {item.target}'s manifest: no SBOM attached"
            )
            return image
        try:
            sbom = self.attach_sbom(self._registry(item.target), item.key, image, manifest)
        except RegistryUnverifiable as exc:
            raise PublishError(
                f"{item.key}: could not attach the SBOM to {image.pinned} ({exc.reason}); "
                "nothing was recorded",
                hint="raybuild's own registry client is anonymous: a registry that wants a login for it "
                "needs `raybuild publish --no-sbom` (the images are pushed by docker, with its login)",
            ) from None
        return replace(image, sbom=sbom)

    def _remote(self, ref: ImageRef, reference: str | None = None) -> Manifest | None:
        """What the registry holds at ``ref`` (its digest, else its tag), or at ``reference`` in its
        repository; None where it holds nothing, or will not say."""
        reference = reference or ref.api_reference
        try:
            return self._registry(ref).manifest(ref.path, reference)
        except RegistryUnverifiable as exc:
            # Docker may still push (its credential store, insecure-registries): let the push decide.
            self.progress(f"could not read {ref.host}/{ref.path}:{reference} anonymously ({exc.reason})")
            return None

    def _push_once(self, item: Planned, until: float, made: list[str]) -> str | None:
        ref, host = str(item.target), item.target.host
        show, seen, stage = self.output or self.progress, set[str](), PushStage()

        def on_line(line: str) -> None:
            stage.feed(line)
            kept = redact(line, self.secrets)
            if kept and kept not in seen and not _PUSH_NOISE.search(kept):
                seen.add(kept)
                show("  " + kept)

        try:
            return push_image(
                self.engine,
                item.local_ref,
                ref,
                self.compression,
                made=made,
                on_line=on_line,
                timeout=max(until - self.clock(), 1.0),
            )
        except DockerRetry:
            raise RegistryUnreachable(
                "a layer upload failed and Docker began to retry it", down=False
            ) from None
        except EngineError as exc:
            if exc.timed_out:
                raise PublishError(
                    f"registry {host}: push of {ref} stalled {stage}; stopped at the {self.deadline:g}s "
                    "deadline, nothing was recorded",
                    hint="check the registry (`curl "
                    f"{api_url(host)}`); for a large image on a slow link raise [limits].registry_deadline_s",
                ) from None
            # An engine hint means the daemon is down or the disk is full: not the registry's fault.
            retry = None if exc.hint else classify_push_failure(exc.output_tail)
            if retry is not None:
                raise retry from None
            last = next((ln.strip() for ln in reversed(exc.output_tail.splitlines()) if ln.strip()), "")
            shown = redact(last, self.secrets) or (
                f"exit {exc.returncode}" + (" (output withheld)" if last else "")
            )
            raise PublishError(
                f"docker push {ref} failed: {shown}", hint=push_hint(last) or exc.hint
            ) from None

    def _repo_digest(self, target: ImageRef) -> str:
        found = target.digest_among(map(str, self.engine.inspect(str(target)).get("RepoDigests") or []))
        if found is None:
            raise PublishError(
                f"docker push {target} printed no digest, and the image has none for {target.name}"
            )
        return found
