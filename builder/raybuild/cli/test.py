"""`raybuild test`: smoke-test an image as KubeRay runs it."""

from __future__ import annotations

import click

from raybuild.cli.common import (
    State,
    emit_json,
    engine_for,
    json_option,
    pass_state,
    progress,
    seconds_option,
)
from raybuild.kuberay import required_gpus
from raybuild.lock.resolve import cuda_need
from raybuild.state import built_ref, failure_log_path, project_id
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
@seconds_option("--timeout", default=180.0, help="Seconds to wait for the head and the route.")
@json_option
@pass_state
def test_app(
    state: State,
    app_name: str,
    gpu: bool,
    skip_if_unavailable: bool,
    image: str | None,
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
    ref = image or built_ref(config, app.name)
    engine.ping()  # a daemon that is down is one line saying so, not a failed `docker run`
    log = failure_log_path(config, "test", app.name)
    result = smoke_test(
        app,
        ref,
        engine,
        project=project_id(config),
        gpu=gpu,
        timeout=timeout,
        progress=progress,
        log_path=log,
    )
    if as_json:
        emit_json(result.to_dict())
        return
    gpu_text = f", {result.gpus:g} GPU(s) in Ray" if gpu else ""
    click.echo(
        f"ok: {app.name} ({ref}) head ready {result.t_head:.1f}s{gpu_text}, route {app.route_prefix} "
        f"answered 200 after {result.t_serve:.1f}s: {result.body[:80]}"
    )
