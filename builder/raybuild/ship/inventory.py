"""What is installed in a built image, read from the image itself rather than from the lockfile.

A throwaway container with no network runs the probe (``templates/probe/inventory.py``) with the image's
own Python: importlib.metadata lists every distribution the app can import (the Ray venv, the app's
site-packages, the code folder), and dpkg-query every Debian package of the base. What the lockfile says
was meant to be installed is only used afterwards, to find each wheel's hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raybuild.engine import Engine
from raybuild.errors import EngineError
from raybuild.labels import object_labels
from raybuild.lock.resolve import normalize
from raybuild.templating import BUNDLED_TEMPLATES

PROBE = BUNDLED_TEMPLATES / "probe" / "inventory.py"
MARK = "@@raybuild-inventory "
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PythonDist:
    name: str  # as the distribution's metadata spells it
    version: str
    location: str  # the site-packages folder it lies in
    license_expression: str | None = None
    license: str | None = None
    license_classifiers: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()  # the WHEEL file's tags: which wheel was installed

    @property
    def normalized(self) -> str:
        """PEP 503's normalized name, as lockfiles and package indexes key it."""
        return normalize(self.name)


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str  # dpkg's full version, epoch included
    arch: str  # amd64, arm64, or "all" for architecture-independent packages
    source: str  # the source package: Debian's security tracker (and trivy) match on it
    source_version: str


@dataclass(frozen=True)
class Inventory:
    python: tuple[PythonDist, ...]
    debian: tuple[DebPackage, ...]
    os_id: str | None  # "debian"
    os_version: str | None  # Debian's point release, "12.12"; else the os-release VERSION_ID
    python_version: str | None = None  # the interpreter's, "3.11.2"

    @property
    def distro(self) -> str | None:
        """The purl ``distro`` qualifier, "debian-12.12"."""
        return f"{self.os_id}-{self.os_version}" if self.os_id and self.os_version else None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_inventory(output: str, image: str) -> Inventory:
    """The probe's report; an EngineError naming the image when there is none."""
    line = next((x for x in reversed(output.splitlines()) if x.startswith(MARK)), None)
    if line is None:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise EngineError(
            f"listing the packages in {image} printed no report: {tail[:300]}",
            output_tail=output[-2000:],
            hint="the image needs a `python` on its PATH; rerun with --debug to see the container's output",
        )
    report = json.loads(line[len(MARK) :])
    python = tuple(
        sorted(
            (
                PythonDist(
                    name=str(dist["name"]),
                    version=str(dist["version"]),
                    location=str(dist["location"]).rstrip("/"),
                    license_expression=_text(dist.get("license_expression")),
                    license=_text(dist.get("license")),
                    license_classifiers=tuple(sorted(dist.get("classifiers") or ())),
                    tags=frozenset(dist.get("tags") or ()),
                )
                for dist in report["python"]
            ),
            key=lambda d: (d.normalized, d.version, d.location),
        )
    )
    # Only installed packages: dpkg also remembers removed ones whose config files are left ("config-files").
    debian = tuple(
        sorted(
            (
                DebPackage(
                    name=pkg["name"],
                    version=pkg["version"],
                    arch=pkg["arch"],
                    source=pkg.get("source") or pkg["name"],
                    source_version=pkg.get("source_version") or pkg["version"],
                )
                for pkg in report["debian"]
                if pkg.get("status") == "installed"
            ),
            key=lambda p: (p.name, p.arch, p.version),
        )
    )
    release = report.get("os") or {}
    os_id = _text(release.get("ID"))
    version = _text(release.get("DEBIAN_VERSION")) if os_id == "debian" else None
    os_version = version or _text(release.get("VERSION_ID"))
    return Inventory(python, debian, os_id, os_version, _text(report.get("python_version")))


def read_inventory(engine: Engine, image: str, project: str) -> Inventory:
    """Run the probe in ``image`` (a tag or an image ID) and return what it found.

    The throwaway container carries ``project``'s labels (see ``Engine.run_python``).
    """
    result = engine.run_python(
        image,
        PROBE.read_bytes(),
        [],
        labels=object_labels(project, "sbom"),
        timeout=TIMEOUT_S,
        what=f"listing the packages in {image}",
    )
    return parse_inventory(result.output, image)
