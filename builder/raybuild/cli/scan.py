"""`raybuild scan`: trivy's findings for each app image, from its SBOM or from the image."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild.cli.common import (
    State,
    apps_argument,
    emit_json,
    engine_for,
    json_option,
    pass_state,
    progress,
    table,
)
from raybuild.cli.sbom import offline_option
from raybuild.errors import ReportedFailure, UsageError
from raybuild.state import SBOM_DIR
from raybuild.verify.results import Severity
from raybuild.verify.scan import (
    TABLE_HEADERS,
    ScanOptions,
    Source,
    Trivy,
    counts,
    parse_severities,
    scan_apps,
    summary,
    table_rows,
)


# Generic only from click 8.4 on; subscripting it would break the click 8.1 that pyproject allows.
class SeverityList(click.ParamType):  # type: ignore[type-arg]
    """``HIGH,CRITICAL``, checked when the command line is parsed (and by the workflow test's checker)."""

    name = "SEVERITIES"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, tuple):
            return value
        try:
            return parse_severities(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


# Exit codes: 0 no findings at the chosen severities, 1 findings (ReportedFailure), 3 trivy or its database
# missing (ScannerUnavailable), so that CI can tell "vulnerable" from "could not scan".


@click.command()
@apps_argument
@click.option(
    "--severity",
    "severities",
    type=SeverityList(),
    default="HIGH,CRITICAL",
    show_default=True,
    help="Report only these severities (comma-separated: UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL).",
)
@click.option(
    "--ignore-unfixed", is_flag=True, help="Leave out vulnerabilities that have no fixed version yet."
)
@click.option(
    "--from",
    "source",
    type=click.Choice(["sbom", "image"]),
    default="sbom",
    show_default=True,
    help="Scan the image's SBOM (made first when missing or stale), or the image in the engine.",
)
@click.option(
    "--sbom-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"Where the SBOMs are [default: {SBOM_DIR} next to raybuild.toml, where `raybuild sbom` writes].",
)
@offline_option
@json_option
@pass_state
def scan(
    state: State,
    apps: tuple[str, ...],
    severities: tuple[Severity, ...],
    ignore_unfixed: bool,
    source: Source,
    sbom_dir: Path | None,
    offline: bool,
    as_json: bool,
) -> None:
    """Scan each built APP image (default all) for known vulnerabilities with trivy.

    \b
    Prints each app's findings: package, installed version, fixed version, severity and ID. The
    project's .trivyignore (or .trivyignore.yaml) is honoured.
    Exit codes: 0 nothing found, 1 vulnerabilities found, 3 trivy is not on PATH or its vulnerability
    database cannot be fetched (checked before anything else; TRIVY_DB_REPOSITORY points trivy at a
    mirror, TRIVY_SKIP_DB_UPDATE=true makes it use the database it has).
    """
    trivy = Trivy.find(engine_for(state))
    progress("checking trivy's vulnerability database")
    trivy.ensure_db()
    config = state.config()
    options = ScanOptions(source, severities, ignore_unfixed, sbom_dir, offline)
    found = scan_apps(config, apps, trivy, options, progress)
    report = {
        "failed": any(found.values()),
        "severities": list(severities),
        "apps": {
            name: {"counts": counts(findings), "findings": [f.model_dump() for f in findings]}
            for name, findings in found.items()
        },
    }
    if not as_json:
        for name, findings in found.items():
            click.echo(f"{name}: {summary(findings)}")
            if findings:
                table(TABLE_HEADERS, table_rows(findings))
                click.echo()
    affected = [name for name, findings in found.items() if findings]
    if affected:
        # main() prints this line after the tables (with --json: one object holding the findings as well).
        raise ReportedFailure(
            f"vulnerabilities found in {', '.join(affected)} ({', '.join(severities)})",
            hint="upgrade the packages named above, or list accepted findings in .trivyignore",
            report={"ok": False, **report},
        )
    if as_json:
        emit_json({"ok": True, **report})
