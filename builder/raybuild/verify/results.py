"""The measure document, ``raybuild.measure/v1``: what ``raybuild measure`` writes, ``raybuild check`` reads.

The models are frozen and strict, and mirror ``schemas/measure.schema.json`` key for key (a unit test keeps
the two in step). The JSON Schema is for readers outside raybuild; raybuild itself validates with these
models, so one file yields one error message that names the file, the key and the problem.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from raybuild.errors import GateError
from raybuild.records import RecordFormat, load_record, parse_record, save_record

SCHEMA_ID = "raybuild.measure/v1"
SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "measure.schema.json"


class _Model(BaseModel):
    # Strict: a size written as 1.5e9 or a median written as "2.1" is a bug in the writer, not something to
    # coerce silently. Extra keys are refused so that a typo cannot hide a missing metric.
    # NaN and infinity are valid JSON to Python, but no size or duration: refuse them by name, not as a
    # confusing "should be greater than or equal to 0".
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Stat(_Model):
    """A timing measured over several runs, in seconds. The gate compares medians: one slow run is noise."""

    median: float = Field(ge=0)
    min: float = Field(ge=0)
    max: float = Field(ge=0)
    samples: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Stat:
        if not self.min <= self.median <= self.max:
            raise ValueError(f"need min <= median <= max (got {self.min}, {self.median}, {self.max})")
        return self


def stat(samples: Sequence[float]) -> Stat:
    """Summarise one timing's samples (seconds, in the order they were taken)."""
    if not samples:
        raise ValueError("stat() needs at least one sample")
    values = [float(s) for s in samples]
    return Stat(median=statistics.median(values), min=min(values), max=max(values), samples=values)


class Layer(_Model):
    digest: str
    size: int = Field(ge=0, description="uncompressed bytes")
    # None when the layer was never pushed or pulled compressed (a local-only build has no blob sizes).
    compressed: int | None = Field(ge=0)
    created_by: str


class Package(_Model):
    name: str
    size: int = Field(ge=0)


class Dive(_Model):
    efficiency: float = Field(ge=0, le=1)
    wasted_bytes: int = Field(ge=0)


class Size(_Model):
    uncompressed: int = Field(ge=0)
    compressed: int = Field(ge=0)
    layers: list[Layer]
    largest_packages: list[Package]
    # Bytes in layers this image shares with the other apps' images (the base and the Ray layer): a node
    # that already runs one app pulls only the rest.
    shared_bytes: int = Field(ge=0)
    dive: Dive | None
    prune_saved: dict[str, int]
    # "gzip" or "zstd level 19": the compression behind ``compressed``. Optional: older documents lack it.
    compression: str | None = None

    @model_validator(mode="after")
    def _non_negative_savings(self) -> Size:
        negative = [rule for rule, saved in self.prune_saved.items() if saved < 0]
        if negative:
            raise ValueError(f"prune_saved must not be negative (rule {negative[0]!r})")
        return self


class Startup(_Model):
    """Cold-start timings. Each is null when that phase was not measured (for example no GPU on the host)."""

    t_head: Stat | None
    t_worker: Stat | None
    t_serve: Stat | None
    t_pull: Stat | None
    t_cold: Stat | None
    # The cold node's runtime and version ("containerd 1.6.20"); optional, as for older documents.
    runtime: str | None = None


Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITIES: tuple[Severity, ...] = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
# What the gate compares, and what the document lists one by one (the rest are only counted).
GATED: tuple[Severity, ...] = ("HIGH", "CRITICAL")


class Finding(_Model):
    """One vulnerability in one installed package, as trivy reported it."""

    id: str = Field(min_length=1, description="CVE-..., GHSA-..., DSA-...")
    package: str
    installed: str
    fixed: str | None = Field(description="the first version with a fix; null when there is none yet")
    severity: Severity

    @property
    def key(self) -> tuple[str, str]:
        """What makes two findings the same one across measurements: the advisory and the package."""
        return self.id, self.package


class Vulnerabilities(_Model):
    """``raybuild measure --scan``: what trivy found in the app's image (``.trivyignore`` honoured)."""

    scanner: str = Field(description="the scanner and its version, e.g. 'trivy 0.58.1'")
    counts: dict[Severity, Annotated[int, Field(ge=0)]]
    findings: list[Finding] = Field(description="the HIGH and CRITICAL findings")


class AppResult(_Model):
    image: str
    device: Literal["cpu", "gpu"]
    size: Size
    startup: Startup
    # Optional, so that documents written before scans existed (or without --scan) still validate.
    vulnerabilities: Vulnerabilities | None = None
    # An app built for several platforms: ``image``, ``size`` and ``startup`` are this machine's own
    # platform's image; the other platforms' images have their sizes here (by platform, linux/arm64).
    # Never timings: an image that runs under emulation starts as fast as qemu, not as a node would.
    platform_sizes: dict[str, Size] | None = None


class Measurement(_Model):
    """One ``raybuild measure`` run over a project's apps."""

    # Not named ``schema``: that would shadow pydantic's deprecated ``BaseModel.schema()``.
    schema_: Literal["raybuild.measure/v1"] = Field(default="raybuild.measure/v1", alias="schema")
    created: AwareDatetime
    ray_version: str
    python: str
    runs: int = Field(ge=0, description="cold starts per app; 0 when only sizes were measured")
    apps: dict[str, AppResult]

    model_config = ConfigDict(populate_by_name=True)

    @classmethod
    def now(cls, **fields: Any) -> Measurement:
        """A document stamped with the current UTC time (for writers)."""
        return cls(created=datetime.now(UTC), **fields)

    def to_json(self) -> str:
        # An app measured without --scan has no "vulnerabilities" key at all (not null): the document stays
        # exactly what readers of the first version of raybuild.measure/v1 expect.
        # Keys added to v1 later (compression, runtime, platform_sizes) are likewise left out when unknown.
        absent: dict[str, Any] = {}
        for name, app in self.apps.items():
            keys: dict[str, Any] = {}
            if app.vulnerabilities is None:
                keys["vulnerabilities"] = True
            if app.size.compression is None:
                keys["size"] = {"compression"}
            if app.startup.runtime is None:
                keys["startup"] = {"runtime"}
            if app.platform_sizes is None:  # a single-platform app: no key, as before platforms existed
                keys["platform_sizes"] = True
            if keys:
                absent[name] = keys
        exclude = {"apps": absent} if absent else None
        return self.model_dump_json(by_alias=True, indent=2, exclude=exclude) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<measure json>") -> Measurement:
        """Parse and validate a document; any problem is one ``GateError`` line naming ``source``."""
        return parse_record(text, source, MEASURE)

    @classmethod
    def load(cls, path: Path) -> Measurement:
        measurement = load_record(path, MEASURE)
        if measurement is None:
            raise GateError(f"{path}: no such file", hint="run `raybuild measure` first")
        return measurement

    def write(self, path: Path) -> None:
        save_record(path, self, MEASURE)


# A GateError, not a StateError: `check` reads documents a user names (a baseline from CI), not only the one
# under .raybuild/, and gate failures are its errors.
MEASURE = RecordFormat(
    "measure document",
    Measurement,
    corrupt_hint="is it the file `raybuild measure` wrote?",
    version_hint="re-measure with this raybuild version, or check the right file was passed",
    version_key="schema",
    version=SCHEMA_ID,
    error=GateError,
    to_text=Measurement.to_json,
)


def schema() -> dict[str, Any]:
    """The published JSON Schema for ``raybuild.measure/v1``."""
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded
