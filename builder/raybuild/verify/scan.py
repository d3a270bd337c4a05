"""Vulnerability scans with trivy: of each image's SBOM (`trivy sbom`), or of the image itself.

trivy is optional: raybuild looks for it, and for its vulnerability database, before doing anything else,
and says in one line what is missing and how to get it (``ScannerUnavailable``, its own exit code). The
report is trivy's JSON (``--format json``, schema version 2); this module reads only the fields trivy
documents for each vulnerability: VulnerabilityID, PkgName, InstalledVersion, FixedVersion and Severity.
The project's ``.trivyignore`` is passed explicitly, since raybuild need not run from the project folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raybuild.config import LoadedConfig
from raybuild.engine import Engine, which
from raybuild.errors import EngineError, ScanError, ScannerUnavailable, UsageError
from raybuild.progress import Progress, silent
from raybuild.ship.sbom import SbomMaker, sbom_image_id, sbom_images, wheel_hashes
from raybuild.state import HEAD_KEY, project_id, sbom_dir
from raybuild.tags import sbom_name
from raybuild.verify.results import GATED, SEVERITIES, Finding, Measurement, Severity, Vulnerabilities

IGNORE_FILES = (".trivyignore.yaml", ".trivyignore")  # trivy's names; the YAML form first, as trivy does
DB_HINT = (
    "let trivy download it (it needs ghcr.io or mirror.gcr.io), or point it at a mirror: "
    "TRIVY_DB_REPOSITORY=HOST/PATH/trivy-db (and TRIVY_JAVA_DB_REPOSITORY), or copy a database into its "
    "cache folder and set TRIVY_SKIP_DB_UPDATE=true"
)
INSTALL_HINT = (
    "install trivy (https://trivy.dev/latest/getting-started/installation/; in GitHub Actions "
    "aquasecurity/setup-trivy), put it on PATH, then rerun"
)
_DB_FAILURE = ("db error", "vulnerability db", "trivy-db", "download db", "--skip-db-update")
Source = Literal["sbom", "image"]


def parse_severities(text: str) -> tuple[Severity, ...]:
    """``HIGH,CRITICAL`` -> the severities, in trivy's order; a UsageError naming a wrong one."""
    wanted = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in SEVERITIES]
    if unknown or not wanted:
        raise UsageError(
            f"{'unknown severity ' + ', '.join(unknown) if unknown else 'no severity given'} "
            f"(a comma-separated list of {', '.join(SEVERITIES)})"
        )
    return tuple(s for s in SEVERITIES if s in wanted)


def parse_report(text: str, source: str) -> list[Finding]:
    """The findings in a trivy JSON report, sorted and without duplicates; ScanError when it is not one."""
    try:
        data = json.loads(text)
        results = data.get("Results") or []
        findings = {
            (str(v["VulnerabilityID"]), str(v["PkgName"]), str(v.get("InstalledVersion") or "")): Finding(
                id=str(v["VulnerabilityID"]),
                package=str(v["PkgName"]),
                installed=str(v.get("InstalledVersion") or ""),
                fixed=str(v["FixedVersion"]) if v.get("FixedVersion") else None,
                severity=_severity(v.get("Severity")),
            )
            for result in results
            for v in (result.get("Vulnerabilities") or [])
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScanError(
            f"{source}: not a trivy JSON report ({type(exc).__name__}: {exc})",
            hint="raybuild reads trivy's --format json output (schema version 2)",
        ) from None
    return sorted(findings.values(), key=_order)


def _severity(value: Any) -> Severity:
    text = str(value or "UNKNOWN").upper()
    return text if text in SEVERITIES else "UNKNOWN"


def _order(finding: Finding) -> tuple[int, str, str]:
    # Worst first, then by package and advisory: the table reads top-down by urgency.
    return -SEVERITIES.index(finding.severity), finding.package, finding.id


def counts(findings: Iterable[Finding]) -> dict[Severity, int]:
    found = Counter(f.severity for f in findings)
    return {severity: found[severity] for severity in SEVERITIES}


def summary(findings: list[Finding]) -> str:
    if not findings:
        return "no vulnerabilities"
    by = counts(findings)
    parts = ", ".join(f"{s} {by[s]}" for s in reversed(SEVERITIES) if by[s])
    return f"{len(findings)} vulnerabilit{'y' if len(findings) == 1 else 'ies'} ({parts})"


def table_rows(findings: list[Finding]) -> list[list[str]]:
    return [[f.package, f.installed, f.fixed or "-", f.severity, f.id] for f in findings]


TABLE_HEADERS = ["package", "installed", "fixed", "severity", "id"]


def ignore_file(root: Path) -> Path | None:
    """The project's trivy ignore file, if it has one."""
    return next((root / name for name in IGNORE_FILES if (root / name).is_file()), None)


@dataclass
class Trivy:
    """The trivy binary, run through the engine (the one seam to subprocesses)."""

    engine: Engine
    path: str

    @classmethod
    def find(cls, engine: Engine) -> Trivy:
        path = which("trivy")
        if path is None:
            raise ScannerUnavailable("trivy is not on PATH; `raybuild scan` runs it", hint=INSTALL_HINT)
        return cls(engine, path)

    def version(self) -> str:
        result = self.engine.runner.run([self.path, "--version"], check=False, timeout=60)
        line = next((ln for ln in result.output.splitlines() if ln.lower().startswith("version")), "")
        return f"trivy {line.split(':', 1)[-1].strip()}" if line else "trivy"

    def ensure_db(self) -> None:
        """Fetch (or refresh) the vulnerability database now, so that a missing one is the first error."""
        if os.environ.get("TRIVY_SKIP_DB_UPDATE", "").lower() in ("1", "true"):
            return  # the user manages the database; a missing one is reported by the scan itself
        result = self.engine.runner.run(
            [self.path, "image", "--download-db-only", "--no-progress", "--quiet"], check=False, timeout=600
        )
        if result.returncode != 0:
            raise ScannerUnavailable(
                f"trivy could not fetch its vulnerability database ({_last_line(result.output)})",
                hint=DB_HINT,
            )

    def scan(
        self,
        target: str,
        source: Source,
        *,
        severities: tuple[Severity, ...] = SEVERITIES,
        ignore_unfixed: bool = False,
        ignorefile: Path | None = None,
    ) -> list[Finding]:
        """Findings for an SBOM file (``source="sbom"``) or an image in the engine (``"image"``)."""
        with tempfile.TemporaryDirectory(prefix="raybuild-trivy-") as tmp:
            report = Path(tmp) / "report.json"
            # --output keeps the report apart from trivy's log lines, which share the engine's stream.
            command = [self.path, source, "--format", "json", "--output", str(report), "--quiet"]
            command += ["--scanners", "vuln", "--skip-db-update", "--severity", ",".join(severities)]
            if ignore_unfixed:
                command.append("--ignore-unfixed")
            if ignorefile is not None:
                command += ["--ignorefile", str(ignorefile)]
            try:
                self.engine.runner.run(
                    [*command, target], timeout=1800, error=ScanError, what=f"trivy {source} {target}"
                )
            except EngineError as exc:
                if any(marker in exc.output_tail.lower() for marker in _DB_FAILURE):
                    raise ScannerUnavailable(
                        f"trivy has no usable vulnerability database ({_last_line(exc.output_tail)})",
                        hint=DB_HINT,
                    ) from None
                raise
            found = parse_report(report.read_text(encoding="utf-8"), f"trivy report for {target}")
        # trivy filters too; filtering again keeps the table honest whatever a trivy version does.
        return [f for f in found if f.severity in severities]


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def vulnerabilities(scanner: str, findings: list[Finding]) -> Vulnerabilities:
    """What ``measure --scan`` stores: counts of every severity, and the gated findings one by one."""
    gated = [f for f in findings if f.severity in GATED]
    return Vulnerabilities(scanner=scanner, counts=counts(findings), findings=gated)


def with_vulnerabilities(
    document: Measurement, found: Mapping[str, list[Finding]], scanner: str
) -> Measurement:
    """The measurement with each scanned app's ``vulnerabilities``."""
    apps = {
        name: app.model_copy(update={"vulnerabilities": vulnerabilities(scanner, found[name])})
        if name in found
        else app
        for name, app in document.apps.items()
    }
    return document.model_copy(update={"apps": apps})


# -- the project's apps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanOptions:
    source: Source = "sbom"
    severities: tuple[Severity, ...] = SEVERITIES
    ignore_unfixed: bool = False
    sbom_dir: Path | None = None  # where the SBOMs are (and missing or stale ones are written)
    offline: bool = False  # SBOMs made here: no package index requests for wheel hashes


def scan_apps(
    config: LoadedConfig,
    names: tuple[str, ...],
    trivy: Trivy,
    options: ScanOptions = ScanOptions(),
    progress: Progress = silent,
) -> dict[str, list[Finding]]:
    """Each selected app's findings. SBOMs are reused when they describe the built image, else made."""
    # The apps only: every app image holds the head image's contents, so its findings are among theirs.
    images = [image for image in sbom_images(config, names) if image.key != HEAD_KEY]
    if not images:
        raise UsageError("nothing to scan: no app image has been built", hint="run `raybuild build`")
    ignorefile = ignore_file(config.root)
    out_dir = options.sbom_dir or sbom_dir(config)
    maker: SbomMaker | None = None
    found = {}
    for image in images:
        target = image.ref
        if options.source == "sbom":
            path = out_dir / sbom_name(image.key)
            if not path.is_file() or sbom_image_id(path.read_text(encoding="utf-8")) != image.image_id:
                maker = maker or SbomMaker(
                    trivy.engine,
                    wheel_hashes(config, offline=options.offline),
                    progress,
                    project=project_id(config),
                )
                maker.write(image, out_dir)
            target = str(path)
        progress(f"{image.key}: scanning {target} with trivy")
        found[image.key] = trivy.scan(
            target,
            options.source,
            severities=options.severities,
            ignore_unfixed=options.ignore_unfixed,
            ignorefile=ignorefile,
        )
    return found
