"""The raybuild command line: thin Click commands over the library, one module per command.

Each command parses options, loads the config, calls the library and prints the result. It either returns,
or raises ``RaybuildError`` (also after its own report, such as the doctor table or the gate, said what
failed). ``main()`` alone turns that into the process's exit: one ``error:`` line with a ``hint:``, and with
--json one ``{"ok": false, "error": ..., "hint": ...}`` object on stdout (``--debug`` shows the traceback
instead). It is also the one boundary for what the library did not foresee: an ``OSError`` or
``UnicodeError`` becomes one line naming the path, a Click usage error one ``error:`` line, and Ctrl-C a
single line saying that nothing half-written was kept.
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
from raybuild.cli.common import CONSOLE, State, emit_json, render_error
from raybuild.errors import FileError, RaybuildError, UsageError
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
    # A command may still end by returning an exit code (its own report already said what failed); make it
    # Click's own exit, which main() and CliRunner both honour. Raising ReportedFailure says more.
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


def _usage_error(exc: click.ClickException) -> RaybuildError:
    """A Click usage error (a bad option value, a missing argument) as one ``error:`` line and a hint."""
    error = UsageError(exc.format_message())
    error.exit_code = exc.exit_code
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        error.hint = f"see `{ctx.command_path} --help`"
    return error


def main() -> None:
    # SIGTERM (CI cancelling a job, `timeout`) unwinds the same cleanups as Ctrl-C: see interrupts.py.
    with raised_on_signals():
        _main()


def _interrupted(cause: BaseException | None, as_json: bool) -> NoReturn:
    """One line (no blank one before it), and the shell's exit code for the signal."""
    name = cause.name if isinstance(cause, Interrupted) else "SIGINT"
    message = f"interrupted ({name}): cleaned up what this command started; nothing half-written was kept"
    click.echo(message, err=True)
    if as_json:
        emit_json({"ok": False, "error": message, "hint": "rerun the command"})
    sys.exit(cause.exit_code if isinstance(cause, Interrupted) else 130)


def _main() -> None:
    # The --debug option also reads RAYBUILD_DEBUG (as Click reads a flag's envvar); main() needs to know
    # whether to show tracebacks before Click has parsed anything.
    env_debug = os.environ.get("RAYBUILD_DEBUG", "").lower() in ("1", "true", "t", "yes", "y", "on")
    args = sys.argv[1:]
    debug = "--debug" in args or env_debug
    ctx: click.Context | None = None

    def as_json() -> bool:
        # Set by the --json option's callback; a usage error may stop parsing before that option is read.
        state = ctx.obj if ctx is not None else None
        return (isinstance(state, State) and state.as_json) or "--json" in args

    def fail(error: RaybuildError) -> NoReturn:
        render_error(error, as_json=as_json())
        sys.exit(error.exit_code)

    try:
        try:
            # Not Click's own main(): on Ctrl-C it prints a blank line and turns the interruption into a
            # generic Abort. Here the interruption reaches _interrupted() as itself.
            ctx = cli.make_context("raybuild", args)
            with ctx:
                cli.invoke(ctx)
        finally:
            CONSOLE.close()
    except click.exceptions.Exit as exc:  # --help, --version, and a command's returned exit code
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        _interrupted(exc.__cause__, as_json())
    except click.ClickException as exc:
        fail(_usage_error(exc))
    except RaybuildError as exc:
        if debug:
            raise
        fail(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM (interrupts.Interrupted)
        _interrupted(exc, as_json())
    except BrokenPipeError:
        # The reader of stdout went away (`raybuild render | head`): nothing is left to say to it.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit; let that succeed
        sys.exit(128 + 13)
    except OSError as exc:
        if debug:
            raise
        fail(FileError.from_os_error(exc))
    except UnicodeError as exc:
        if debug:
            raise
        # The library names the file where it reads one; this is the fallback for one it did not expect.
        fail(
            FileError.not_utf8(None, exc, hint="save it as UTF-8 text; rerun with --debug to see which file")
        )
    sys.exit(0)
