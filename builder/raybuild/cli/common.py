"""What every command shares: the state object, shared options, config loading, the engine and output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.errors import EngineError, RaybuildError
from raybuild.state import with_found_deployments


@dataclass
class State:
    config_path: str
    debug: bool = False
    # --config or RAYBUILD_CONFIG was given: a missing file is then an error even where a default would do.
    config_given: bool = False
    _config: LoadedConfig | None = None

    def config(self) -> LoadedConfig:
        if self._config is None:
            # Apps that list no deployments use what the last build found in their code.
            self._config = with_found_deployments(load_config(Path(self.config_path)))
        return self._config


pass_state = click.make_pass_decorator(State)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
apps_argument = click.argument("apps", nargs=-1, metavar="[APP]...")


def engine_for(state: State) -> Engine:
    """The engine a command runs Docker through; with --debug it echoes every command to stderr."""
    return Engine(debug=state.debug, echo=lambda line: click.echo(line, err=True))


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def progress(message: str) -> None:
    """Progress goes to stderr so that --json output on stdout stays clean."""
    click.secho(f"==> {message}", err=True, fg="cyan")


def render_error(exc: RaybuildError) -> None:
    click.secho(f"error: {exc.message}", err=True, fg="red")
    if isinstance(exc, EngineError) and exc.output_tail:
        for line in exc.output_tail.rstrip().splitlines()[-15:]:
            click.echo(f"  | {line}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table (readable in CI logs, where rich's box drawing is noise)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
