"""Scanning with trivy: its JSON report read from a fixture in trivy's documented format, the command lines,
and `raybuild scan` with a stand-in trivy (or none). trivy itself cannot be installed on raybuild's build
machines; the one test that runs the real thing is skipped unless trivy is on PATH."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from raybuild.cli import measure as measure_cli
from raybuild.cli import scan as scan_cli
from raybuild.config import LoadedConfig
from raybuild.errors import ScanError, ScannerUnavailable, UsageError
from raybuild.verify import scan
from raybuild.verify.results import Finding
from raybuild.verify.scan import Trivy, counts, parse_report, parse_severities, summary, table_rows
from tests.unit.fakes import FakeEngine
from tests.unit.ship.test_sbom import DEMO_REF, HEAD_REF, built_project, probe_report

if TYPE_CHECKING:
    from tests.conftest import MainResult, TmpProject


@pytest.fixture
def sbom_project(tmp_project: TmpProject) -> LoadedConfig:
    return built_project(tmp_project)


FIXTURE = Path(__file__).parent / "fixtures" / "trivy-sbom-report.json"


def test_the_report_fixture_gives_every_finding_worst_first() -> None:
    findings = parse_report(FIXTURE.read_text(), "fixture")
    assert [(f.severity, f.package, f.id, f.installed, f.fixed) for f in findings] == [
        ("CRITICAL", "zlib1g", "CVE-2099-0003", "1:1.2.13.dfsg-1", None),
        ("HIGH", "libc6", "CVE-2099-0001", "2.36-9+deb12u14", "2.36-9+deb12u15"),
        ("MEDIUM", "requests", "GHSA-xxxx-xxxx-0004", "2.34.2", "2.35.0"),
        ("LOW", "libc6", "CVE-2099-0002", "2.36-9+deb12u14", None),
    ]
    assert counts(findings) == {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 1, "HIGH": 1, "CRITICAL": 1}
    assert summary(findings) == "4 vulnerabilities (CRITICAL 1, HIGH 1, MEDIUM 1, LOW 1)"
    assert table_rows(findings)[0] == ["zlib1g", "1:1.2.13.dfsg-1", "-", "CRITICAL", "CVE-2099-0003"]


def test_duplicates_collapse_and_odd_severities_are_unknown() -> None:
    entry = {"VulnerabilityID": "CVE-1", "PkgName": "p", "InstalledVersion": "1", "Severity": "severe"}
    report = {"Results": [{"Vulnerabilities": [entry, entry]}, {"Vulnerabilities": None}]}
    assert parse_report(json.dumps(report), "r") == [
        Finding(id="CVE-1", package="p", installed="1", fixed=None, severity="UNKNOWN")
    ]
    assert parse_report('{"SchemaVersion": 2, "Results": []}', "r") == []
    assert summary([]) == "no vulnerabilities"


@pytest.mark.parametrize("text", ["not json", '{"Results": [{"Vulnerabilities": [{"PkgName": "p"}]}]}', "[]"])
def test_a_report_that_is_not_trivys_is_one_error(text: str) -> None:
    with pytest.raises(ScanError, match=r"^r: not a trivy JSON report"):
        parse_report(text, "r")


def test_severities() -> None:
    assert parse_severities("critical, HIGH") == ("HIGH", "CRITICAL")
    with pytest.raises(UsageError, match=r"^unknown severity SEVERE \(a comma-separated list of UNKNOWN"):
        parse_severities("HIGH,SEVERE")
    with pytest.raises(UsageError, match="no severity given"):
        parse_severities(" , ")


def test_no_trivy_is_scanner_unavailable_with_its_own_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "which", lambda tool: None)
    with pytest.raises(ScannerUnavailable, match="trivy is not on PATH") as exc:
        Trivy.find(FakeEngine())
    assert exc.value.exit_code == 3 and exc.value.hint and "setup-trivy" in exc.value.hint


def test_a_database_that_cannot_be_fetched_is_scanner_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIVY_SKIP_DB_UPDATE", raising=False)
    engine = FakeEngine()
    engine.runner.expect(
        "/bin/trivy", "image", returncode=1, output="FATAL init error: DB error: failed to download"
    )
    with pytest.raises(
        ScannerUnavailable, match=r"could not fetch its vulnerability database \(FATAL"
    ) as exc:
        Trivy(engine, "/bin/trivy").ensure_db()
    assert exc.value.hint and "TRIVY_DB_REPOSITORY" in exc.value.hint
    assert engine.runner.calls("/bin/trivy") == [
        ["/bin/trivy", "image", "--download-db-only", "--no-progress", "--quiet"]
    ]
    monkeypatch.setenv("TRIVY_SKIP_DB_UPDATE", "true")  # the user's own database: nothing to fetch
    Trivy(engine, "/bin/trivy").ensure_db()
    assert len(engine.runner.calls("/bin/trivy")) == 1


def test_scan_command_line(tmp_path: Path) -> None:
    engine = FakeEngine()
    ignore = tmp_path / ".trivyignore"
    trivy = Trivy(engine, "/bin/trivy")
    engine.runner.expect("/bin/trivy")
    with pytest.raises(FileNotFoundError):  # the fake engine writes no report; the command is what matters
        trivy.scan(
            "x.cdx.json", "sbom", severities=("HIGH", "CRITICAL"), ignore_unfixed=True, ignorefile=ignore
        )
    (args,) = engine.runner.calls("/bin/trivy")
    assert args[:2] == ["/bin/trivy", "sbom"] and args[-1] == "x.cdx.json"
    for option in (["--format", "json"], ["--severity", "HIGH,CRITICAL"], ["--ignorefile", str(ignore)]):
        assert args[args.index(option[0]) : args.index(option[0]) + 2] == option
    assert {"--ignore-unfixed", "--skip-db-update", "--quiet"} <= set(args)


def test_a_scan_without_a_usable_database_is_scanner_unavailable() -> None:
    engine = FakeEngine()
    engine.runner.expect(
        "/bin/trivy", returncode=1, output="FATAL --skip-db-update cannot be specified on the first run"
    )
    with pytest.raises(ScannerUnavailable, match="no usable vulnerability database"):
        Trivy(engine, "/bin/trivy").scan("x.cdx.json", "sbom")


# -- `raybuild scan` with a stand-in trivy -------------------------------------------------------------------


FAKE_TRIVY = """\
#!{python}
import json, shutil, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["--version"]:
    print("Version: 0.99.0")
elif "--output" in args:
    shutil.copy({report!r}, args[args.index("--output") + 1])
"""


@pytest.fixture
def fake_trivy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[list[str]]]:
    """Puts a trivy on the way that answers with ``report`` and logs its arguments; returns the log reader."""
    log = tmp_path / "trivy.log"
    report = tmp_path / "report.json"
    report.write_text(FIXTURE.read_text())
    path = tmp_path / "bin" / "trivy"
    path.parent.mkdir()
    path.write_text(FAKE_TRIVY.format(python=sys.executable, log=str(log), report=str(report)))
    path.chmod(0o755)
    monkeypatch.setattr(scan, "which", lambda tool: str(path))
    monkeypatch.delenv("TRIVY_SKIP_DB_UPDATE", raising=False)

    def calls(replace_report: str = "") -> list[list[str]]:
        if replace_report:
            report.write_text(replace_report)
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture
def scan_cli_run(monkeypatch: pytest.MonkeyPatch, sbom_project: LoadedConfig) -> Callable[..., MainResult]:
    engine = FakeEngine([DEMO_REF, HEAD_REF])
    engine.script("run_python", output=probe_report())
    from raybuild.runner import Runner

    engine.runner = Runner()  # type: ignore[assignment]  # trivy runs for real (the stand-in script)
    for module in (scan_cli, measure_cli):
        monkeypatch.setattr(module, "engine_for", lambda state: engine)
    return lambda run_main, *args: run_main("--config", str(sbom_project.path), "scan", "--offline", *args)


def test_scan_prints_a_table_per_app_and_exits_1_on_findings(
    fake_trivy: Callable[..., list[list[str]]],
    scan_cli_run: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
    sbom_project: LoadedConfig,
) -> None:
    (sbom_project.root / ".trivyignore").write_text("CVE-2099-0009\n")
    result = scan_cli_run(run_main)
    assert result.exit_code == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "demo: 2 vulnerabilities (CRITICAL 1, HIGH 1)"  # default --severity HIGH,CRITICAL
    assert lines[1].split() == ["PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "ID"]
    assert lines[2].split() == ["zlib1g", "1:1.2.13.dfsg-1", "-", "CRITICAL", "CVE-2099-0003"]
    db, sbom = fake_trivy()
    assert db[:2] == ["image", "--download-db-only"]
    assert sbom[0] == "sbom" and sbom[-1] == str(sbom_project.root / ".raybuild" / "sbom" / "demo.cdx.json")
    assert sbom[sbom.index("--ignorefile") + 1] == str(sbom_project.root / ".trivyignore")
    # The SBOM was missing, so it was made first; a second scan reuses it.
    assert (sbom_project.root / ".raybuild" / "sbom" / "demo.cdx.json").is_file()


def test_scan_exits_0_when_nothing_is_found_and_json_lists_findings(
    fake_trivy: Callable[..., list[list[str]]],
    scan_cli_run: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
) -> None:
    fake_trivy('{"SchemaVersion": 2, "Results": []}')
    clean = scan_cli_run(run_main)
    assert (clean.exit_code, clean.stdout) == (0, "demo: no vulnerabilities\n")
    fake_trivy(FIXTURE.read_text())
    result = scan_cli_run(run_main, "demo", "--severity", "MEDIUM,HIGH,CRITICAL", "--from", "image", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["failed"] is True and data["severities"] == ["MEDIUM", "HIGH", "CRITICAL"]
    assert [f["id"] for f in data["apps"]["demo"]["findings"]] == [
        "CVE-2099-0003",
        "CVE-2099-0001",
        "GHSA-xxxx-xxxx-0004",
    ]
    assert fake_trivy()[-1][:2] == ["image", "--format"] and fake_trivy()[-1][-1] == DEMO_REF


def test_scan_without_trivy_says_so_in_one_line_before_anything_else(
    monkeypatch: pytest.MonkeyPatch,
    scan_cli_run: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
) -> None:
    monkeypatch.setattr(scan, "which", lambda tool: None)
    result = scan_cli_run(run_main)
    assert result.exit_code == 3
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: trivy is not on PATH; `raybuild scan` runs it"]
    assert "Traceback" not in result.stderr and "listing the packages" not in result.stderr


def test_measure_scan_checks_for_trivy_before_measuring(
    monkeypatch: pytest.MonkeyPatch, sbom_project: LoadedConfig, run_main: Callable[..., MainResult]
) -> None:
    monkeypatch.setattr(scan, "which", lambda tool: None)
    monkeypatch.setattr(measure_cli, "engine_for", lambda state: FakeEngine())
    monkeypatch.setattr(
        measure_cli, "measure_apps", lambda *a, **k: pytest.fail("measured without a scanner")
    )
    result = run_main("--config", str(sbom_project.path), "measure", "--scan", "--no-startup")
    assert result.exit_code == 3 and "error: trivy is not on PATH" in result.stderr


@pytest.mark.skipif(
    shutil.which("trivy") is None, reason="trivy is not on PATH (it cannot be installed here)"
)
def test_real_trivy_reads_raybuilds_sbom(tmp_path: Path) -> None:
    """The one test with the real trivy: it must take raybuild's SBOM and give a report raybuild reads."""
    from datetime import UTC, datetime

    from raybuild.engine import Engine
    from raybuild.ship.sbom import build_sbom
    from raybuild.ship.wheels import WheelHashes
    from tests.unit.ship.test_sbom import INVENTORY, image

    sbom = tmp_path / "demo.cdx.json"
    sbom.write_text(build_sbom(image(), INVENTORY, WheelHashes(None).find, datetime.now(UTC)).text)
    trivy = Trivy.find(Engine())
    trivy.ensure_db()
    findings = trivy.scan(str(sbom), "sbom")
    assert all(
        f.package in {"numpy", "orjson", "ray", "typing_extensions", "bash", "libc6", "tzdata"}
        for f in findings
    )
