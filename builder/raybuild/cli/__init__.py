"""The raybuild command line: thin Click commands over the library.

Each command parses options, loads the config, calls one library function and prints the result. Library
errors (``RaybuildError``) become one line with a hint; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import click

from raybuild import __version__
from raybuild.cli.common import State, render_error
from raybuild.errors import RaybuildError


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
@click.pass_context
def cli(ctx: click.Context, config_path: str, debug: bool) -> None:
    """Build, measure and ship slim Ray Serve images for KubeRay.

    raybuild locks each app against one shared Ray, generates multi-stage Dockerfiles on slim bases,
    builds them with BuildKit, measures size and cold start, and renders the RayService that runs them.
    """
    ctx.obj = State(config_path=config_path, debug=debug)


def _register() -> None:
    from raybuild.cli import deploy, images, local, measure_cli, measure_run, project, publish_cli

    for module in (project, images, measure_run, measure_cli, deploy, local, publish_cli):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    # The --debug option also reads RAYBUILD_DEBUG (as Click reads a flag's envvar); main() needs to know
    # whether to show tracebacks before Click has parsed anything.
    env_debug = os.environ.get("RAYBUILD_DEBUG", "").lower() in ("1", "true", "t", "yes", "y", "on")
    debug = "--debug" in sys.argv[1:] or env_debug
    try:
        result = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
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
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
