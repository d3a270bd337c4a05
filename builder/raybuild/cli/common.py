"""What every command shares: the state object, shared options, config loading, the engine and output."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.markup import escape

if TYPE_CHECKING:
    from rich.status import Status

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.errors import EngineError, RaybuildError
from raybuild.images import with_found_deployments


@dataclass
class State:
    config_path: str
    debug: bool = False
    # --config or RAYBUILD_CONFIG was given: a missing file is then an error even where a default would do.
    config_given: bool = False
    # The command was given --json: main() then reports a failure as a JSON object on stdout as well.
    as_json: bool = False
    _config: LoadedConfig | None = None

    def config(self) -> LoadedConfig:
        if self._config is None:
            # Apps that list no deployments use what the last build found in their code.
            self._config = with_found_deployments(load_config(Path(self.config_path)))
        return self._config


pass_state = click.make_pass_decorator(State)

FAILURE_TAIL_LINES = 30


F = TypeVar("F", bound=Callable[..., Any])


class FiniteFloat(click.FloatRange):
    """A FloatRange that refuses nan and inf: Click lets both through (nan compares false with any bound,
    so it passes every range check) and they fail later, with a traceback, inside the library."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def seconds_option(*names: str, default: float, help: str) -> Callable[[F], F]:
    """A --timeout style option: positive, finite seconds."""
    return click.option(
        *names, type=FiniteFloat(min=0, min_open=True), default=default, show_default=True, help=help
    )


def remember_json(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
    """The --json callback: tells main() to print a failure as JSON too (every --json option uses it)."""
    if value and isinstance(ctx.obj, State):
        ctx.obj.as_json = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=remember_json,
    help="Print machine-readable JSON on stdout (on failure: ok, error and hint).",
)
apps_argument = click.argument("apps", nargs=-1, metavar="[APP]...")


def engine_for(state: State) -> Engine:
    """The engine a command runs Docker through; with --debug it echoes every command to stderr."""
    return Engine(debug=state.debug, echo=lambda line: click.echo(line, err=True))


def emit_json(payload: Any) -> None:
    CONSOLE.close()  # the live status must not redraw over the result
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


class Console:
    """Progress on stderr, so that --json output on stdout stays clean.

    A step is one line. Detail lines, which the library indents by two spaces (BuildKit steps, push and
    bootstrap logs: hundreds per build), stream only with --verbose. Without a terminal (CI logs) each step
    line carries the time since the command started, so a slow step shows as a gap; on a terminal a live
    status shows the step running, its elapsed time and its latest detail, and each finished step stays as
    one line with its own duration.
    """

    def __init__(self) -> None:
        self.verbose = False
        self.started = time.monotonic()
        self._live: Status | None = None
        self._step: tuple[str, float] | None = None

    def configure(self, *, verbose: bool, live: bool) -> None:
        self.verbose = verbose
        self.started = time.monotonic()
        if live and not verbose:
            from rich.console import Console as RichConsole

            self._live = RichConsole(stderr=True, highlight=False).status("")

    def progress(self, message: str) -> None:
        if message.startswith("  "):
            if self.verbose:
                click.echo(message, err=True)
            elif self._live is not None and self._step is not None:
                self._live.update(f"{self._step[0]} [dim]{escape(message.strip()[:90])}[/dim]")
            return
        if self._live is None:
            click.secho(f"==> [{time.monotonic() - self.started:6.1f}s] {message}", err=True, fg="cyan")
            return
        self._finish_step()
        self._step = (escape(message), time.monotonic())
        self._live.update(self._step[0])
        self._live.start()

    def _finish_step(self) -> None:
        if self._live is not None and self._step is not None:
            self._live.stop()
            took = time.monotonic() - self._step[1]
            self._live.console.print(f"[cyan]==>[/cyan] {self._step[0]} [dim]({took:.1f}s)[/dim]")
            self._step = None

    def close(self) -> None:
        """End the live status (the last step gets its line); safe to call more than once."""
        self._finish_step()


CONSOLE = Console()


def progress(message: str) -> None:
    """What commands pass to the library as its Progress."""
    CONSOLE.progress(message)


def render_error(exc: RaybuildError, *, as_json: bool = False) -> None:
    """The one way a failure is shown: an ``error:`` line and a ``hint:`` on stderr, and with --json one
    object on stdout (``ok`` false, ``error``, ``hint`` and whatever the error adds)."""
    click.secho(f"error: {exc.message}", err=True, fg="red")
    CONSOLE.close()
    if isinstance(exc, EngineError) and exc.output_tail:
        # Whatever the verbosity, a failure shows the last lines of what failed (the failing build step).
        for line in exc.output_tail.rstrip().splitlines()[-FAILURE_TAIL_LINES:]:
            click.echo(f"  | {line}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    if as_json:
        emit_json({**exc.details(), "ok": False, "error": exc.message, "hint": exc.hint})


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table (readable in CI logs, where rich's box drawing is noise)."""
    CONSOLE.close()
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
