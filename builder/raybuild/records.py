"""What raybuild's commands record for each other, as pydantic models, and the one way to read and write them.

Four records: the build record (``build.json``: each image's content-addressed tag), the publish record
(``publish.json``: the registry digest each was pushed as), the cluster record (``up.json``, whose model is
`raybuild.local.cluster.LocalCluster`) and the measure document (`raybuild.verify.results.Measurement`).
Each has a `RecordFormat`: its schema version and what to tell a user whose file is from another version or
is corrupt. `load_record` and `save_record` are the only readers and writers: a missing file is no record,
an unknown version is one error, a corrupt file (unreadable, not JSON, the wrong shape) another, each naming
the file and, where pydantic says, the key inside it. Writes are atomic, and the JSON layout is what every
raybuild version has written (only ``version`` is new, in ``up.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as model

from raybuild.config import LoadedConfig
from raybuild.errors import RaybuildError, StateError, unreadable
from raybuild.fsutil import atomic_write
from raybuild.platforms import DEFAULT as DEFAULT_PLATFORM
from raybuild.platforms import KNOWN as KNOWN_PLATFORMS
from raybuild.reference import ImageRef, ReferenceError, is_digest
from raybuild.state import build_record_path, publish_record_path

RECORD_VERSION = 1

RecordT = TypeVar("RecordT")


# -- the one reader and writer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordFormat(Generic[RecordT]):
    """One kind of record: its model, its schema version, and what a user does about a bad file."""

    what: str  # "build record", for messages
    model: type[RecordT]
    corrupt_hint: str | None
    version_hint: str | None = None  # the corrupt hint, unless a version needs other advice
    version_key: str = "version"
    version: object = RECORD_VERSION
    # Whether a file without the version key is one of this version (written before the key existed).
    unversioned_is_current: bool = False
    error: type[RaybuildError] = StateError
    # The text of a record; None: sorted, indented JSON of the model, keys that are None left out.
    to_text: Callable[[RecordT], str] | None = None
    omit_none: bool = True
    adapter: TypeAdapter[RecordT] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", TypeAdapter(self.model))

    def corrupt(self, source: object, problem: str) -> RaybuildError:
        return self.error(f"{source}: malformed {self.what}: {problem}", hint=self.corrupt_hint)

    def unreadable(self, path: Path, exc: OSError | UnicodeError) -> RaybuildError:
        return self.error(f"{path}: cannot read the {self.what}: {unreadable(exc)}", hint=self.corrupt_hint)

    def unknown_version(self, source: object, data: Mapping[str, Any]) -> RaybuildError:
        key = self.version_key
        found = f"no {key!r} key" if key not in data else f"{key} {data[key]!r}"
        return self.error(
            f"{source}: {self.what} with {found}, expected {self.version!r}",
            hint=self.version_hint or self.corrupt_hint,
        )


def parse_record(text: str, source: object, record_format: RecordFormat[RecordT]) -> RecordT:
    """The record in ``text`` (read from ``source``, which messages name); one error when it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise record_format.corrupt(source, problem) from exc
    if not isinstance(data, dict):
        raise record_format.corrupt(source, f"expected a JSON object, got {type(data).__name__}")
    # Checked before the shape: a file of another version would otherwise surface as a confusing first key.
    key = record_format.version_key
    current = key not in data and record_format.unversioned_is_current
    if not current and data.get(key, None) != record_format.version:
        raise record_format.unknown_version(source, data)
    try:
        return record_format.adapter.validate_json(text)
    except ValidationError as exc:
        raise record_format.corrupt(source, describe(exc)) from exc


def load_record(path: Path, record_format: RecordFormat[RecordT]) -> RecordT | None:
    """The record at ``path``; None when there is none yet."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise record_format.unreadable(path, exc) from exc
    return parse_record(text, path, record_format)


def record_text(record: RecordT, record_format: RecordFormat[RecordT]) -> str:
    if record_format.to_text is not None:
        return record_format.to_text(record)
    data = record_format.adapter.dump_python(record, mode="json", exclude_none=record_format.omit_none)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def save_record(
    path: Path, record: RecordT, record_format: RecordFormat[RecordT], *, mode: int | None = None
) -> None:
    """Replace the record at ``path`` atomically (``mode``: see `fsutil.atomic_write`)."""
    atomic_write(path, record_text(record, record_format), mode=mode)


def describe(exc: ValidationError) -> str:
    """The first validation error as ``key 'apps.hello.size.compressed': problem``."""
    error = exc.errors()[0]
    key = ""
    for part in error["loc"]:
        if part == "[key]":  # pydantic's marker for a dict's key (a platform) rather than its value
            continue
        key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + str(part)
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        message = "missing required key"
    elif kind == "extra_forbidden":
        message = "unknown key"
    elif kind.endswith("_type") or kind in ("literal_error", "finite_number"):
        shown = repr(error.get("input"))
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return f"key '{key}': {message}" if key else message


# -- field types --------------------------------------------------------------------------------------------


def _image_ref(value: object) -> ImageRef:
    if isinstance(value, ImageRef):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an image reference (got {value!r})")
    try:
        return ImageRef.parse(value)
    except ReferenceError as exc:  # pydantic reports ValueErrors with the key they were found at
        raise ValueError(exc.message) from exc


def _without_digest(ref: ImageRef) -> ImageRef:
    if ref.digest is not None:
        raise ValueError(f"expected 'registry/name:tag' without a digest (got {str(ref)!r})")
    return ref


def _digest(value: str) -> str:
    if not is_digest(value):
        raise ValueError(f"expected 'sha256:' and 64 hex digits (got {value!r})")
    return value


def _platform(value: str) -> str:
    if value not in KNOWN_PLATFORMS:
        raise ValueError(f"{value!r} is not a platform raybuild builds for ({', '.join(KNOWN_PLATFORMS)})")
    return value


# Written as str(ref), the familiar form, which is what raybuild has always written for its own tags.
Ref = Annotated[ImageRef, PlainValidator(_image_ref), PlainSerializer(str, return_type=str)]
TagRef = Annotated[Ref, AfterValidator(_without_digest)]
Digest = Annotated[str, Strict(), AfterValidator(_digest)]
ByteCount = Annotated[int, Strict(), Field(ge=0)]
Platform = Annotated[str, Strict(), AfterValidator(_platform)]
Text = Annotated[str, Strict()]


# -- the build record ---------------------------------------------------------------------------------------


@model(frozen=True)
class BuiltImage:
    """An image a build made or found: the build record's entry, plus what this run did about it."""

    app: str  # app name, or HEAD_KEY
    ref: Ref
    image_id: str
    device: str
    cached: bool  # made by an earlier build: every image read back from the record is
    # The app's deployments as found in its code at build time, in raybuild.toml's form (not for the head).
    deployments: tuple[dict[str, Any], ...] = ()
    pulled: bool = False  # taken from the registry, which had its tag, rather than built here
    # (platform, that platform's tag) for an image built for other platforms than the default alone; then
    # ``ref`` is the multi-platform tag (several platforms) or the one platform's tag.
    platform_refs: tuple[tuple[str, Ref], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The image as `raybuild build --json` prints it, references as text."""
        shown: dict[str, Any] = TypeAdapter(BuiltImage).dump_python(self, mode="json")
        return shown

    @property
    def refs(self) -> tuple[ImageRef, ...]:
        """Every tag this entry names: its own and each platform's."""
        return (self.ref, *(ref for _, ref in self.platform_refs))

    def platform_ref(self, platform: str) -> ImageRef | None:
        """The tag of ``platform``'s image; None when it was not built for it."""
        if not self.platform_refs:
            return self.ref if platform == DEFAULT_PLATFORM else None
        return dict(self.platform_refs).get(platform)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.platform_refs) or (DEFAULT_PLATFORM,)


@model(frozen=True)
class BuildEntry:
    """One image in ``build.json``: ``deployments`` and ``platforms`` are there only when not empty."""

    ref: Ref
    image_id: Text
    device: Text
    deployments: list[dict[str, Any]] | None = None
    platforms: dict[Platform, Ref] | None = None


@model(frozen=True)
class BuildRecord:
    """``build.json``: the last build of each image, by app name (and HEAD_KEY)."""

    images: dict[str, BuildEntry]
    version: int = RECORD_VERSION

    @classmethod
    def of(cls, built: Iterable[BuiltImage]) -> BuildRecord:
        return cls(
            {
                image.app: BuildEntry(
                    image.ref,
                    image.image_id,
                    image.device,
                    list(image.deployments) or None,
                    dict(image.platform_refs) or None,
                )
                for image in sorted(built, key=lambda image: image.app)
            }
        )

    def built(self) -> dict[str, BuiltImage]:
        """Each image as a build finds it in the record: made by an earlier build."""
        return {
            key: BuiltImage(
                key,
                entry.ref,
                entry.image_id,
                entry.device,
                cached=True,
                deployments=tuple(entry.deployments or ()),
                platform_refs=tuple(sorted((entry.platforms or {}).items())),
            )
            for key, entry in sorted(self.images.items())
        }


BUILD = RecordFormat("build record", BuildRecord, corrupt_hint="rerun `raybuild build`")


# -- the publish record -------------------------------------------------------------------------------------


@model(frozen=True)
class PublishedImage:
    reference: TagRef  # registry/namespace/name:tag, without a digest
    digest: Digest
    size: ByteCount
    compressed_size: ByteCount
    # The digest of the SBOM artifact attached to the image in the registry; records written without SBOMs
    # keep their old shape (no key).
    sbom: Digest | None = None

    @property
    def pinned(self) -> str:
        return str(self.reference.with_digest(self.digest))

    def to_json(self) -> dict[str, Any]:
        """The entry as publish.json (and `raybuild publish --json`) has it: no ``sbom`` key when None."""
        shown: dict[str, Any] = TypeAdapter(PublishedImage).dump_python(self, mode="json", exclude_none=True)
        return shown


@model(frozen=True)
class PublishRecord:
    """``publish.json``: which registry digest each image was pushed as.

    `raybuild render` pins images by these digests, so a manifest names exactly the bytes that were
    measured and published, not whatever a tag points at later.
    """

    images: Mapping[str, PublishedImage]
    version: int = RECORD_VERSION

    def get(self, key: str) -> PublishedImage | None:
        return self.images.get(key)

    @classmethod
    def load(cls, path: Path) -> PublishRecord | None:
        """The record at ``path``; None when nothing has been published yet."""
        return load_record(path, PUBLISH)

    def save(self, path: Path) -> None:
        save_record(path, self, PUBLISH)

    def to_json(self) -> str:
        return record_text(self, PUBLISH)


PUBLISH = RecordFormat(
    "publish record", PublishRecord, corrupt_hint="fix or delete the file, then run `raybuild publish` again"
)


# -- the records of a project -------------------------------------------------------------------------------


def load_build_record(config: LoadedConfig) -> dict[str, BuiltImage]:
    """The last build of each image, by app name (and HEAD_KEY); empty when nothing was built yet."""
    record = load_record(build_record_path(config), BUILD)
    return record.built() if record is not None else {}


def save_build_record(config: LoadedConfig, built: Iterable[BuiltImage]) -> None:
    """Merge this build's images into the record (atomically): images not built this time keep their entry."""
    images = load_build_record(config)
    images.update((image.app, image) for image in built)
    save_record(build_record_path(config), BuildRecord.of(images.values()), BUILD)


def load_publish_record(config: LoadedConfig) -> PublishRecord | None:
    return PublishRecord.load(publish_record_path(config))
