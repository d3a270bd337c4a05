"""`raybuild test`: smoke-test an image as KubeRay runs it."""

from __future__ import annotations

import click

from raybuild import platforms
from raybuild.cli.common import (
    State,
    emit_json,
    engine_for,
    json_option,
    pass_state,
    progress,
    seconds_option,
)
from raybuild.config import LoadedConfig
from raybuild.errors import UsageError
from raybuild.images import built_image
from raybuild.kuberay import required_gpus
from raybuild.lock.resolve import cuda_need
from raybuild.state import failure_log_path, project_id
from raybuild.verify import gpu as gpus
from raybuild.verify.smoke import smoke_test


@click.command("test")
@click.argument("app_name", metavar="APP")
@click.option(
    "--gpu",
    is_flag=True,
    help="Give the head GPUs through Docker's device request, check that Ray reports them, and deploy "
    "with the app's real num_gpus. Needs an NVIDIA GPU, a driver new enough for the app's locked CUDA, "
    "and the NVIDIA container toolkit.",
)
@click.option(
    "--skip-if-unavailable",
    is_flag=True,
    help="With --gpu: when this host cannot run the app on a GPU, print why as `skipped: ...` and exit 0.",
)
@click.option("--image", default=None, help="Image to test [default: the app's last build].")
@click.option(
    "--platform",
    "platform_name",
    type=click.Choice(platforms.ALLOWED),
    default=None,
    help="Test this platform's image only [default: every platform the app was built for]. Another "
    "platform than this machine's runs under emulation (scripts/setup), with --timeout stretched for it; "
    "its times are not start-up figures.",
)
@seconds_option("--timeout", default=180.0, help="Seconds to wait for the head and the route.")
@json_option
@pass_state
def test_app(
    state: State,
    app_name: str,
    gpu: bool,
    skip_if_unavailable: bool,
    image: str | None,
    platform_name: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Smoke-test an image as KubeRay runs it: probes pass, Serve deploys, the route answers 200.

    A GPU app without --gpu runs in CPU mode: its CUDA libraries must resolve and it must import, with
    num_gpus set to 0.
    """
    config = state.config()
    (app,) = config.select((app_name,))
    engine = engine_for(state)
    if gpu:
        host = gpus.ready_for(
            app, cuda_need(config, app), required_gpus(app), engine, skip_if_unavailable=skip_if_unavailable
        )
        if isinstance(host, gpus.Skip):
            if as_json:
                emit_json({"app": app.name, "skipped": host.reason})
            else:
                click.echo(f"skipped: {host.reason}")
            return
        progress(f"GPU host: driver {host.driver}, {host.gpus} GPU(s) {', '.join(host.names)}".rstrip())
    targets = _images(config, app.name, image, platform_name)
    engine.ping()  # a daemon that is down is one line saying so, not a failed `docker run`
    log = failure_log_path(config, "test", app.name)
    results = []
    for platform, ref in targets:
        if not platforms.native(platform):
            problem = platforms.emulation_problem(platform)
            if problem is not None:
                raise UsageError(
                    f"cannot test {app.name!r} for {platform}: {problem}", hint=platforms.EMULATION_HINT
                )
        result = smoke_test(
            app,
            ref,
            engine,
            project=project_id(config),
            gpu=gpu,
            timeout=timeout,
            progress=progress,
            log_path=log,
            platform=platform,
        )
        results.append(result)
        if not as_json:
            gpu_text = f", {result.gpus:g} GPU(s) in Ray" if gpu else ""
            where = f" [{platform}, emulated]" if result.emulated else ""
            click.echo(
                f"ok: {app.name} ({ref}){where} head ready {result.t_head:.1f}s{gpu_text}, route "
                f"{app.route_prefix} answered 200 after {result.t_serve:.1f}s: {result.body[:80]}"
            )
    if as_json:
        emit_json(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results])


def _images(config: LoadedConfig, app: str, image: str | None, platform: str | None) -> list[tuple[str, str]]:
    """(platform, image) pairs to test: --image as --platform's, else the last build's of each platform."""
    if image is not None:
        return [(platform or platforms.DEFAULT, image)]
    built = built_image(config, app)
    wanted = (platform,) if platform else built.platforms
    found = [(p, built.platform_ref(p)) for p in wanted]
    missing = [p for p, ref in found if ref is None]
    if missing:
        raise UsageError(
            f"app {app!r} was not built for {', '.join(missing)} (built for {', '.join(built.platforms)})",
            hint=f"add it to the app's platforms (or [project].platforms) and run `raybuild build {app}`",
        )
    return [(p, str(ref)) for p, ref in found if ref is not None]
