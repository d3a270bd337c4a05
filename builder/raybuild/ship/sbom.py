"""An exact SBOM for every image: CycloneDX 1.6 JSON, made with CycloneDX's own library.

The components come from the built image (``inventory``): every Python distribution its Python can import
and every Debian package dpkg has installed. The lockfile adds what the image cannot tell: the SHA-256 of
the wheel that was installed (``wheels``). The root component is the image itself: its name and
content-addressed tag, image ID, registry digest once published, and Ray and Python versions.

The output is deterministic: components are sorted by the library, bom-refs are derived from purls, and
the serial number is derived from the content, so the same image gives the same bytes. The one exception
is ``metadata.timestamp``, the time the SBOM was made; ``SOURCE_DATE_EPOCH`` pins it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from raybuild import __version__
from raybuild.config import LoadedConfig
from raybuild.engine import Engine
from raybuild.errors import UsageError
from raybuild.fsutil import atomic_write
from raybuild.image.spec import VENV
from raybuild.lock.cuda import cuda_need
from raybuild.lock.resolve import normalize
from raybuild.progress import Progress, silent
from raybuild.records import PublishedImage, load_build_record, load_publish_record
from raybuild.reference import ImageRef
from raybuild.ship.inventory import DebPackage, Inventory, PythonDist, read_inventory
from raybuild.ship.wheels import (
    PYPI_SIMPLE,
    HashFinder,
    SimpleIndex,
    WheelHashes,
    lock_hashes,
    pick_lock,
)
from raybuild.state import HEAD_KEY, wheel_hashes_path
from raybuild.tags import sbom_name

MEDIA_TYPE = "application/vnd.cyclonedx+json"  # the artifact's (and its one layer's) media type
# Properties are namespaced (CycloneDX's property taxonomy): raybuild's own, and the one trivy reads to
# match a Debian binary package with its source package's advisories (libc6 -> glibc).
PROP = "raybuild:"
TRIVY_SOURCE = "aquasecurity:trivy:SrcName"
_LICENSES = LicenseFactory()


@dataclass(frozen=True)
class SbomImage:
    """One built image, and what the SBOM says about it besides its contents."""

    key: str  # app name, or HEAD_KEY
    ref: str  # the build's content-addressed tag
    image_id: str
    device: str
    # Lockfiles as (path in the project, text). The app's lock pins Ray's packages too, with the same hashes.
    app_lock: tuple[str, str] | None
    ray_lock: tuple[str, str] | None
    published: PublishedImage | None = None  # only when it is this very image (same tag) in the registry

    @property
    def name(self) -> str:
        return ImageRef.parse(self.ref).name

    @property
    def tag(self) -> str:
        return ImageRef.parse(self.ref).tag_or_latest


@dataclass(frozen=True)
class Sbom:
    """One image's SBOM document, and counts for the command's report."""

    image: SbomImage
    text: str
    python: int
    debian: int
    hashed: int  # Python components with the installed wheel's SHA-256
    unhashed: tuple[str, ...]  # name==version of locked ones whose wheel could not be told apart
    unlocked: tuple[str, ...]  # name==version of distributions no lockfile pins
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.image.key,
            "image": self.image.ref,
            "image_id": self.image.image_id,
            "path": str(self.path) if self.path else None,
            "components": {"python": self.python, "debian": self.debian},
            "wheel_sha256": {"found": self.hashed, "not_found": list(self.unhashed)},
            "not_in_lockfile": list(self.unlocked),
        }


def sbom_timestamp(environ: Mapping[str, str] | None = None) -> datetime:
    """``SOURCE_DATE_EPOCH`` when set (the reproducible-builds convention), else now."""
    value = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return datetime.now(UTC).replace(microsecond=0)
    if not value.isdigit():
        raise UsageError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since 1970",
            hint="set it to an integer, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    return datetime.fromtimestamp(int(value), UTC)


def _props(**values: str | None) -> list[Property]:
    return [Property(name=PROP + key.replace("_", "-"), value=v) for key, v in values.items() if v]


def _licenses(dist: PythonDist) -> list[Any]:
    """License-Expression (an SPDX expression) first, then a one-line License field, then the classifiers."""
    if dist.license_expression:
        return [_LICENSES.make_from_string(dist.license_expression)]
    if dist.license and "\n" not in dist.license and len(dist.license) <= 100:
        return [_LICENSES.make_from_string(dist.license)]
    named: list[License] = [
        _LICENSES.make_from_string(c.split("::")[-1].strip()) for c in dist.license_classifiers
    ]
    return named


def pypi_purl(dist: PythonDist) -> PackageURL:
    # The purl spec for pypi: lowercase, "_" as "-" (dots are kept).
    return PackageURL("pypi", name=dist.name.lower().replace("_", "-"), version=dist.version)


def deb_purl(pkg: DebPackage, distro: str | None) -> PackageURL:
    qualifiers = {"arch": pkg.arch} | ({"distro": distro} if distro else {})
    return PackageURL("deb", "debian", pkg.name, pkg.version, qualifiers)


@dataclass
class _Tally:
    hashed: int = 0
    unhashed: list[str] = field(default_factory=list)
    unlocked: list[str] = field(default_factory=list)


def _python_components(
    image: SbomImage, inventory: Inventory, find: HashFinder, tally: _Tally
) -> list[Component]:
    app = {image.app_lock[0]: lock_hashes(image.app_lock[1])} if image.app_lock else {}
    ray = {image.ray_lock[0]: lock_hashes(image.ray_lock[1])} if image.ray_lock else {}
    purls = Counter(pypi_purl(d).to_string() for d in inventory.python)
    components = []
    for dist in inventory.python:
        purl = pypi_purl(dist)
        ref = purl.to_string()
        if purls[ref] > 1:  # the same distribution in two folders: bom-refs must stay unique
            ref += f"#{dist.location}"
        # The Ray venv was installed from Ray's lock, the app's site-packages from the app's.
        pinned = pick_lock(
            dist.name, dist.version, ray | app if dist.location.startswith(VENV) else app | ray
        )
        sha = find(dist.name, dist.version, dist.tags, pinned[1]) if pinned else None
        if sha:
            tally.hashed += 1
        elif pinned:
            tally.unhashed.append(f"{dist.name}=={dist.version}")
        else:
            tally.unlocked.append(f"{dist.name}=={dist.version}")
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=dist.name,
                version=dist.version,
                purl=purl,
                bom_ref=ref,
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)] if sha else [],
                licenses=_licenses(dist),
                properties=_props(site_packages=dist.location, lockfile=pinned[0] if pinned else None),
            )
        )
    return components


def _root(image: SbomImage, inventory: Inventory) -> Component:
    versions = {normalize(d.name): d.version for d in inventory.python}
    cuda = None
    if image.device == "gpu":
        need = cuda_need(versions, image.key)
        cuda = need.version if need else "none"
    published = image.published
    purl = None
    if published is not None:
        # The purl spec for OCI images: the name, the manifest digest as version, where it can be pulled.
        repository = published.reference
        qualifiers = {"repository_url": repository.name, "tag": image.tag}
        purl = PackageURL(
            "oci", name=repository.path.rsplit("/", 1)[-1], version=published.digest, qualifiers=qualifiers
        )
    return Component(
        type=ComponentType.CONTAINER,
        name=image.name,
        version=image.tag,
        bom_ref="image",
        purl=purl,
        properties=_props(
            image_id=image.image_id,
            registry_digest=published.digest if published else None,
            registry_reference=published.pinned if published else None,
            ray_version=versions.get("ray"),
            python_version=inventory.python_version,
            device=image.device,
            cuda=cuda,
        ),
    )


def build_sbom(image: SbomImage, inventory: Inventory, find: HashFinder, when: datetime) -> Sbom:
    """The SBOM of ``image`` (whose contents are ``inventory``), stamped ``when``."""
    tally = _Tally()
    root = _root(image, inventory)
    python = _python_components(image, inventory, find, tally)
    bom = Bom()
    bom.metadata.component = root
    bom.metadata.timestamp = when
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="raybuild", version=__version__, bom_ref="raybuild")
    )
    bom.components.update(python)
    direct: list[Component] = list(python)
    if inventory.os_id:
        os_component = Component(
            type=ComponentType.OPERATING_SYSTEM,
            name=inventory.os_id,
            version=inventory.os_version,
            bom_ref=f"os:{inventory.os_id}",
        )
        debian = [
            Component(
                type=ComponentType.LIBRARY,
                name=pkg.name,
                version=pkg.version,
                purl=deb_purl(pkg, inventory.distro),
                bom_ref=deb_purl(pkg, inventory.distro).to_string(),
                properties=[Property(name=TRIVY_SOURCE, value=pkg.source)],
            )
            for pkg in inventory.debian
        ]
        bom.components.add(os_component)
        bom.components.update(debian)
        # trivy (and other readers) take the OS's packages to be those the OS component depends on.
        bom.register_dependency(os_component, debian)
        direct.append(os_component)
    bom.register_dependency(root, direct)
    text = _serialize(bom)
    return Sbom(
        image,
        text,
        python=len(python),
        debian=len(inventory.debian),
        hashed=tally.hashed,
        unhashed=tuple(tally.unhashed),
        unlocked=tuple(tally.unlocked),
    )


def _serialize(bom: Bom) -> str:
    # The serial number is a name-based UUID of everything else, so it is the same for the same content.
    stamped = bom.metadata.timestamp
    bom.serial_number = uuid.UUID(int=0)
    bom.metadata.timestamp = datetime(1970, 1, 1, tzinfo=UTC)
    content = JsonV1Dot6(bom).output_as_string(indent=2)
    bom.serial_number = uuid.uuid5(
        uuid.NAMESPACE_URL, "raybuild-sbom:" + hashlib.sha256(content.encode()).hexdigest()
    )
    bom.metadata.timestamp = stamped
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def sbom_image_id(text: str) -> str | None:
    """The image ID an SBOM file describes (its root component's property); None when unreadable."""
    try:
        properties = json.loads(text)["metadata"]["component"].get("properties") or []
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    found = (p.get("value") for p in properties if isinstance(p, dict) and p.get("name") == PROP + "image-id")
    return next((str(value) for value in found), None)


def same_content(a: str | bytes, b: str | bytes) -> bool:
    """Whether two SBOMs differ at most in when they were made (``metadata.timestamp``)."""

    def stripped(text: str | bytes) -> Any:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            data["metadata"].pop("timestamp", None)
        return data

    left = stripped(a)
    return left is not None and left == stripped(b)


# -- the project's images -----------------------------------------------------------------------------------


def _lock(config: LoadedConfig, path: Path) -> tuple[str, str] | None:
    if not path.is_file():
        return None
    return path.relative_to(config.root).as_posix(), path.read_text(encoding="utf-8")


def sbom_images(config: LoadedConfig, names: Sequence[str] = ()) -> list[SbomImage]:
    """The images to describe: each selected app that was built, and the head image when none is named."""
    built = load_build_record(config)
    selected = config.select(tuple(names))
    missing = [app.name for app in selected if app.name not in built]
    if names and missing:
        raise UsageError(
            f"not built yet: {', '.join(missing)}", hint=f"run `raybuild build {' '.join(missing)}`"
        )
    record = load_publish_record(config)
    ray_lock = _lock(config, config.ray_lockfile())
    wanted: list[tuple[str, tuple[str, str] | None]] = [] if names else [(HEAD_KEY, None)]
    wanted += [(app.name, _lock(config, config.lockfile(app))) for app in selected]
    images = []
    for key, app_lock in wanted:
        if key not in built:
            continue
        image = built[key]
        published = record.get(key) if record is not None else None
        # The record may name an older build: only the same tag is the same image (tags are content hashes).
        if published is not None and published.reference.tag_or_latest != image.ref.tag_or_latest:
            published = None
        images.append(
            SbomImage(key, str(image.ref), image.image_id, image.device, app_lock, ray_lock, published)
        )
    if not images:
        raise UsageError("nothing to describe: no image has been built", hint="run `raybuild build`")
    return images


def wheel_hashes(config: LoadedConfig, *, offline: bool = False) -> WheelHashes:
    """Wheel hashes from the lockfiles, told apart by the project's index (none when ``offline``)."""
    index = None if offline else SimpleIndex(config.project.index_url or PYPI_SIMPLE)
    return WheelHashes(index, wheel_hashes_path(config))


@dataclass
class SbomMaker:
    """Reads each image's contents through the engine and makes its SBOM."""

    engine: Engine
    hashes: WheelHashes
    progress: Progress = silent
    when: datetime = field(default_factory=sbom_timestamp)
    _inventories: dict[str, Inventory] = field(default_factory=dict)
    project: str = field(kw_only=True)  # state.project_id: labels the probe's container

    def make(self, image: SbomImage) -> Sbom:
        inventory = self._inventories.get(image.image_id)
        if inventory is None:
            self.progress(f"{image.key}: listing the packages installed in {image.ref}")
            inventory = self._inventories[image.image_id] = read_inventory(
                self.engine, image.image_id, self.project
            )
        sbom = build_sbom(image, inventory, self.hashes.find, self.when)
        self.hashes.save()
        return sbom

    def write(self, image: SbomImage, out_dir: Path) -> Sbom:
        sbom = self.make(image)
        path = out_dir / sbom_name(image.key)
        atomic_write(path, sbom.text)
        return replace(sbom, path=path)
