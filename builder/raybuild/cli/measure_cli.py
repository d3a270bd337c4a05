"""Measurement commands: check (the regression gate). ``raybuild measure`` itself lives in its own module."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
from click.core import ParameterSource

from raybuild.cli.common import State, emit_json, json_option
from raybuild.config import CONFIG_NAME, RaybuildConfig, parse_config
from raybuild.errors import ConfigError
from raybuild.fsutil import atomic_write
from raybuild.state import DEFAULT_MEASURE_PATH
from raybuild.verify.gate import (
    DEFAULT_MAX_SIZE_GROWTH,
    DEFAULT_MAX_STARTUP_GROWTH,
    ThresholdPolicy,
    check_files,
)

_growth = click.FloatRange(min=0)


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
    type=_growth,
    default=None,
    metavar="FRACTION",
    help=f"Allowed size growth for every app, overriding raybuild.toml (0.05 = 5%; "
    f"default {DEFAULT_MAX_SIZE_GROWTH}).",
)
@click.option(
    "--max-startup-growth",
    type=_growth,
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
@json_option
@click.pass_context
def check(
    ctx: click.Context,
    baseline: Path,
    current: Path | None,
    max_size_growth: float | None,
    max_startup_growth: float | None,
    markdown_path: Path | None,
    as_json: bool,
) -> None:
    """Compare a measurement with a baseline; exit 1 if any app grew past its limit.

    Gated: size.uncompressed and size.compressed (max_size_growth), and the medians of startup.t_head,
    t_serve and t_cold (max_startup_growth). Limits come from the flags, then each app's [apps.gate], then
    [gate] in raybuild.toml, then the defaults; raybuild.toml is optional here. New and removed apps are
    reported but never fail the gate.
    """
    state = ctx.find_object(State) or State(config_path=CONFIG_NAME)
    config, root = _gate_config(ctx, state)
    if current is None:
        current = _shown(root / DEFAULT_MEASURE_PATH) if root is not None else DEFAULT_MEASURE_PATH
    policy = ThresholdPolicy.from_config(
        config, max_size_growth=max_size_growth, max_startup_growth=max_startup_growth
    )
    report = check_files(baseline, current, policy)
    markdown = report.to_markdown()
    # Written even when the gate fails: CI posts this file as the PR comment that explains the failure.
    if markdown_path is not None:
        atomic_write(markdown_path, markdown)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(markdown, nl=False)
    if report.failed:
        count = len(report.regressions)
        click.secho(
            f"gate failed: {count} metric{'s' if count != 1 else ''} grew past the limit", err=True, fg="red"
        )
        ctx.exit(1)


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it: the report names it in a PR comment."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _gate_config(ctx: click.Context, state: State) -> tuple[RaybuildConfig | None, Path | None]:
    """The config for its limits only, or ``(None, None)`` when there is no raybuild.toml.

    Parsed without ``load_config``'s checks that app folders and requirements exist: a gate job may run
    with nothing checked out but the two measure files. A config that exists but is invalid is an error,
    not a fallback to defaults, so that a typo in [gate] cannot silently loosen the gate.
    """
    path = Path(state.config_path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        source = ctx.parent.get_parameter_source("config_path") if ctx.parent is not None else None
        if source not in (None, ParameterSource.DEFAULT):
            raise ConfigError(
                f"{path}: no such file",
                hint="fix --config / RAYBUILD_CONFIG, or leave both unset to use the defaults",
            )
        click.echo(f"note: no {CONFIG_NAME} here; using the default limits", err=True)
        return None, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc
    return parse_config(data, path), path.parent.resolve()


COMMANDS = [check]
