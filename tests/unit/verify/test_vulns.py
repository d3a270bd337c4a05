"""The gate's vulnerability check: new HIGH/CRITICAL findings fail it, fixed ones are good news; with
measurements built from trivy's report format (the fixture) through `measure --scan`'s own code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from raybuild.cli import cli
from raybuild.verify.gate import compare
from raybuild.verify.results import Finding, Measurement, schema
from raybuild.verify.scan import parse_report, with_vulnerabilities
from raybuild.verify.vulns import compare_vulnerabilities, markdown
from tests.conftest import MainResult
from tests.unit.verify.test_gate import app, measurement
from tests.unit.verify.test_scan import FIXTURE

SCANNER = "trivy 0.99.0"
REPORT = parse_report(FIXTURE.read_text(), "fixture")  # CRITICAL zlib1g, HIGH libc6, MEDIUM, LOW


def finding(
    id: str, package: str = "openssl", severity: str = "HIGH", fixed: str | None = "3.0.1"
) -> Finding:
    return Finding.model_validate(
        {"id": id, "package": package, "installed": "3.0.0", "fixed": fixed, "severity": severity}
    )


def scanned(found: dict[str, list[Finding]], unscanned: tuple[str, ...] = ()) -> Measurement:
    document = measurement({name: app() for name in [*found, *unscanned]})
    return with_vulnerabilities(document, found, SCANNER)


def test_measure_scan_stores_counts_and_the_gated_findings() -> None:
    document = scanned({"hello": REPORT})
    stored = document.apps["hello"].vulnerabilities
    assert stored is not None and stored.scanner == SCANNER
    assert stored.counts == {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 1, "HIGH": 1, "CRITICAL": 1}
    assert [f.id for f in stored.findings] == ["CVE-2099-0003", "CVE-2099-0001"]
    assert Measurement.from_json(document.to_json()) == document


def test_a_document_without_scans_has_no_vulnerabilities_key() -> None:
    text = measurement({"hello": app()}).to_json()
    assert "vulnerabilities" not in json.loads(text)["apps"]["hello"]
    mixed = json.loads(scanned({"hello": REPORT}, unscanned=("sklearn",)).to_json())["apps"]
    assert "vulnerabilities" in mixed["hello"] and "vulnerabilities" not in mixed["sklearn"]


def test_a_new_high_finding_fails_the_gate_and_a_fixed_one_is_good_news() -> None:
    baseline = scanned({"hello": [*REPORT, finding("CVE-2099-0100", severity="CRITICAL")]})
    current = scanned({"hello": [*REPORT, finding("CVE-2099-0200")]})
    report = compare(baseline, current)
    (diff,) = report.vulnerabilities
    assert [f.id for f in diff.new] == ["CVE-2099-0200"]
    assert [f.id for f in diff.fixed] == ["CVE-2099-0100"]
    assert diff.unchanged == 2
    assert report.failed and not report.regressions and report.new_findings == 1
    assert report.summary() == "**Gate failed:** 1 new HIGH/CRITICAL vulnerability (hello)."
    text = report.to_markdown()
    assert "### Vulnerabilities (HIGH and CRITICAL)" in text
    assert "| hello | **1** | 1 | 2 |" in text
    assert "- hello: CVE-2099-0200 in openssl 3.0.0 (HIGH, fixed in 3.0.1)" in text
    assert (
        "Fixed since the baseline:\n- hello: CVE-2099-0100 in openssl 3.0.0 (CRITICAL, fixed in 3.0.1)"
        in text
    )


def test_medium_findings_and_version_changes_do_not_fail_it() -> None:
    baseline = scanned({"hello": REPORT})
    bumped = [f.model_copy(update={"installed": "9"}) if f.package == "libc6" else f for f in REPORT]
    current = scanned({"hello": [*bumped, finding("CVE-2099-0300", severity="MEDIUM")]})
    report = compare(baseline, current)
    assert not report.failed and report.vulnerabilities[0].new == ()


def test_a_new_app_is_compared_with_every_baseline_app() -> None:
    baseline = scanned({"hello": REPORT})
    current = scanned({"hello": REPORT, "sklearn": [*REPORT, finding("CVE-2099-0400", package="scipy")]})
    diffs = {d.app: d for d in compare_vulnerabilities(baseline, current)}
    assert [f.id for f in diffs["sklearn"].new] == ["CVE-2099-0400"]  # what it brings, not the shared base's
    assert diffs["sklearn"].fixed == () and diffs["hello"].new == ()


@pytest.mark.parametrize(
    ("baseline_scanned", "current_scanned", "status"),
    [(False, True, "no baseline scan"), (True, False, "not scanned")],
)
def test_nothing_fails_when_either_side_was_not_scanned(
    baseline_scanned: bool, current_scanned: bool, status: str
) -> None:
    plain = measurement({"hello": app()})
    risky = scanned({"hello": [finding("CVE-2099-0500", severity="CRITICAL")]})
    report = compare(risky if baseline_scanned else plain, risky if current_scanned else plain)
    assert not report.failed
    assert [d.status for d in report.vulnerabilities] == [status]
    assert f"hello: {'the baseline has no scan' if status == 'no baseline scan' else 'measured without'}" in (
        "\n".join(markdown(report.vulnerabilities))
    )


def test_without_any_scan_the_report_has_no_vulnerability_section() -> None:
    plain = measurement({"hello": app()})
    report = compare(plain, plain)
    assert report.vulnerabilities == () and "Vulnerabilities" not in report.to_markdown()


def test_check_fails_on_a_new_high_finding_in_a_fixture_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., MainResult]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYBUILD_CONFIG", raising=False)
    baseline, current = tmp_path / "baseline.json", tmp_path / "current.json"
    scanned({"hello": [f for f in REPORT if f.id != "CVE-2099-0001"]}).write(baseline)
    scanned({"hello": REPORT}).write(current)
    result = run_main("check", "--baseline", str(baseline), "--current", str(current), "--json")
    assert result.exit_code == 1, result.stderr
    assert "error: gate failed: 1 new HIGH/CRITICAL vulnerability" in result.stderr.splitlines()
    payload = json.loads(result.stdout)
    assert payload["failed"] is True and all(row["verdict"] == "ok" for row in payload["rows"])
    assert (payload["ok"], payload["error"]) == (False, "gate failed: 1 new HIGH/CRITICAL vulnerability")
    assert payload["vulnerabilities"][0]["new"][0]["id"] == "CVE-2099-0001"
    back = CliRunner().invoke(cli, ["check", "--baseline", str(current), "--current", str(baseline)])
    assert back.exit_code == 0, back.output
    assert "Fixed since the baseline:\n- hello: CVE-2099-0001 in libc6" in back.stdout


def test_a_scanned_document_validates_against_the_published_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    validator.validate(json.loads(scanned({"hello": REPORT}, unscanned=("sklearn",)).to_json()))
    broken = json.loads(scanned({"hello": REPORT}).to_json())
    broken["apps"]["hello"]["vulnerabilities"]["counts"]["SEVERE"] = 1
    assert list(validator.iter_errors(broken))
