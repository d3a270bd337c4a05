"""`raybuild check`: the regression gate between two measurements."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild.cli.common import FiniteFloat, State, emit_json, json_option, pass_state
from raybuild.cli.render import deployed_delta
from raybuild.config import CONFIG_NAME, load_gate_config
from raybuild.errors import ReportedFailure
from raybuild.fsutil import atomic_write
from raybuild.manifest.render import render_manifest
from raybuild.records import load_publish_record
from raybuild.state import DEFAULT_MEASURE_PATH
from raybuild.verify.gate import (
    DEFAULT_MAX_SIZE_GROWTH,
    DEFAULT_MAX_STARTUP_GROWTH,
    ThresholdPolicy,
    check_files,
)


@click.command()
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The measure JSON to compare against (main's last `raybuild measure`).",
)
@click.option(
    "--current",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"The new measure JSON [default: {DEFAULT_MEASURE_PATH} next to {CONFIG_NAME}].",
)
@click.option(
    "--max-size-growth",
    type=FiniteFloat(min=0),
    default=None,
    metavar="FRACTION",
    help=f"Allowed size growth for every app, overriding raybuild.toml (0.05 = 5%; "
    f"default {DEFAULT_MAX_SIZE_GROWTH}).",
)
@click.option(
    "--max-startup-growth",
    type=FiniteFloat(min=0),
    default=None,
    metavar="FRACTION",
    help=f"Allowed growth of the median cold-start times, overriding raybuild.toml "
    f"(default {DEFAULT_MAX_STARTUP_GROWTH}).",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the Markdown report to FILE, ready to post as a PR comment.",
)
@click.option(
    "--deployed",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="PATH",
    help="The RayService manifest deployed now (main's `raybuild render`): the report then says whether "
    "this merge upgrades it, image by image (needs raybuild.toml and this build's records).",
)
@json_option
@pass_state
def check(
    state: State,
    baseline: Path,
    current: Path | None,
    max_size_growth: float | None,
    max_startup_growth: float | None,
    markdown_path: Path | None,
    deployed: Path | None,
    as_json: bool,
) -> None:
    """Compare a measurement with a baseline; exit 1 if any app grew past its limit.

    Gated: size.uncompressed and size.compressed (max_size_growth), and the medians of startup.t_head,
    t_serve and t_cold (max_startup_growth). Limits come from the flags, then each app's [apps.gate], then
    [gate] in raybuild.toml, then the defaults; raybuild.toml is optional here. New and removed apps are
    reported but never fail the gate.

    max_t_cold ([gate] or [apps.gate], seconds) is an absolute budget: an app whose worst measured t_cold
    (pull plus head start on the cold node) exceeds it fails the gate, naming the app and the budget.

    The report also shows each app's upgrade pull delta: the compressed bytes of the layers a node that
    ran the baseline's image must download for the current one (JSON: "pull_delta").

    When both measurements were made with `raybuild measure --scan`, a HIGH or CRITICAL vulnerability the
    baseline did not have also fails the gate (a new app is compared with every baseline app's findings),
    and findings fixed since the baseline are reported.
    """
    loaded = load_gate_config(Path(state.config_path), required=state.config_given)
    if loaded is None:
        click.echo(f"note: no {CONFIG_NAME} here; using the default limits", err=True)
    if current is None:
        current = _shown(loaded.root / DEFAULT_MEASURE_PATH) if loaded is not None else DEFAULT_MEASURE_PATH
    policy = ThresholdPolicy.from_config(
        loaded.config if loaded is not None else None,
        max_size_growth=max_size_growth,
        max_startup_growth=max_startup_growth,
    )
    report = check_files(baseline, current, policy)
    delta = None
    if deployed is not None:
        config = state.config()
        rendered = render_manifest(config, load_publish_record(config)).text
        delta = deployed_delta(state, deployed, rendered)
    markdown = report.to_markdown(sections=[delta.to_markdown()] if delta is not None else [])
    # Written even when the gate fails: CI posts this file as the PR comment that explains the failure.
    if markdown_path is not None:
        atomic_write(markdown_path, markdown)
    document = {**report.to_dict(), **({"upgrade": delta.to_dict()} if delta is not None else {})}
    if not as_json:
        click.echo(markdown, nl=False)
    if report.failed:
        count, found = len(report.regressions), report.new_findings
        reasons = [f"{count} metric{'s' if count != 1 else ''} grew past the limit"] if count else []
        if found:
            reasons.append(f"{found} new HIGH/CRITICAL vulnerabilit{'y' if found == 1 else 'ies'}")
        reasons += [f"over the start budget: {line}" for line in report.over_budget]
        raise ReportedFailure(
            f"gate failed: {'; '.join(reasons)}",
            hint="see the report; if a growth is intended, raise max_size_growth or max_startup_growth "
            "in [gate] or [apps.gate]"
            + (
                "; max_t_cold is the team's scale-up budget: make the image smaller or faster to start, "
                "or agree on a new budget"
                if report.over_budget
                else ""
            ),
            report={"ok": False, **document},
        )
    if as_json:
        emit_json({"ok": True, **document})


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it: the report names it in a PR comment."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
