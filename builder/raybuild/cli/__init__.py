"""The raybuild command line: thin Click commands over the library, one module per command.

Each command parses options, loads the config, calls the library and prints the result. It ends in one
of two ways: it returns (an exit code where its own report already said what failed: the doctor table,
the gate report, a drill), or it raises ``RaybuildError``. ``main()`` alone turns either into the process's
exit: an error becomes one ``error:`` line with a ``hint:`` (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click
from click.core import ParameterSource

from raybuild import __version__
from raybuild.cli import (
    base,
    build,
    check,
    doctor,
    down,
    drill,
    generate,
    init,
    list_apps,
    lock,
    measure,
    publish,
    render,
    sbom,
    scan,
    test,
    up,
)
from raybuild.cli.common import CONSOLE, State, render_error
from raybuild.errors import RaybuildError
from raybuild.interrupts import Interrupted, raised_on_signals


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="raybuild")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=str),
    default="raybuild.toml",
    show_default=True,
    envvar="RAYBUILD_CONFIG",
    help="The project config file (or its folder).",
)
@click.option("--debug", is_flag=True, envvar="RAYBUILD_DEBUG", help="Show tracebacks and every command run.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="RAYBUILD_VERBOSE",
    help="Stream the BuildKit, push and bootstrap logs (by default each step is one line).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str, debug: bool, verbose: bool) -> None:
    """Build, measure and ship slim Ray Serve images for KubeRay.

    raybuild locks each app against one shared Ray, generates multi-stage Dockerfiles on slim bases,
    builds them with BuildKit, measures size and cold start, and renders the RayService that runs them.
    """
    given = ctx.get_parameter_source("config_path") not in (None, ParameterSource.DEFAULT)
    live = sys.stderr.isatty() and os.environ.get("CI") != "true"
    CONSOLE.configure(verbose=verbose or debug, live=live)
    ctx.obj = State(config_path=config_path, debug=debug, config_given=given)


@cli.result_callback()
def _exit_code(result: object, **_: object) -> None:
    # Click drops a command's return value in standalone mode (CliRunner, `cli()`); make a returned exit
    # code Click's own exit, which main() receives as cli.main()'s result.
    if isinstance(result, int) and result:
        click.get_current_context().exit(result)


for _command in (
    init.init,
    list_apps.list_apps,
    lock.lock,
    generate.generate,
    doctor.doctor,
    base.base,
    build.build,
    test.test_app,
    measure.measure,
    check.check,
    publish.publish,
    sbom.sbom,
    scan.scan,
    render.render,
    up.up,
    down.down,
    drill.drill,
):
    cli.add_command(_command)


def main() -> None:
    # SIGTERM (CI cancelling a job, `timeout`) unwinds the same cleanups as Ctrl-C: see interrupts.py.
    with raised_on_signals():
        _main()


def _interrupted(cause: BaseException | None) -> NoReturn:
    name = cause.name if isinstance(cause, Interrupted) else "SIGINT"
    message = f"interrupted ({name}): cleaned up what this command started; nothing half-written was kept"
    click.echo(message, err=True)
    sys.exit(cause.exit_code if isinstance(cause, Interrupted) else 130)


def _main() -> None:
    # The --debug option also reads RAYBUILD_DEBUG (as Click reads a flag's envvar); main() needs to know
    # whether to show tracebacks before Click has parsed anything.
    env_debug = os.environ.get("RAYBUILD_DEBUG", "").lower() in ("1", "true", "t", "yes", "y", "on")
    debug = "--debug" in sys.argv[1:] or env_debug
    try:
        try:
            result = cli.main(standalone_mode=False)
        finally:
            CONSOLE.close()
    except click.exceptions.Abort as exc:
        # Click turns an interruption inside a command into Abort, with the interruption as its cause.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _interrupted(exc.__cause__)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RaybuildError as exc:
        if debug:
            raise
        render_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    sys.exit(result if isinstance(result, int) else 0)
