"""Image commands: doctor, base, build, test."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild import doctor as checks
from raybuild.cli.common import State, apps_argument, emit_json, json_option, pass_state, progress, table
from raybuild.engine import Engine
from raybuild.errors import GpuUnavailable, UsageError
from raybuild.image import bases
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.state import built_ref
from raybuild.verify.smoke import required_gpus, smoke_test

ca_option = click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA bundle for HTTPS inside builds (a BuildKit secret, never a layer). "
    "[default: $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE or $PIP_CERT]",
)
netrc_option = click.option(
    "--netrc",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A .netrc with package index credentials, passed as a BuildKit secret.",
)


def engine_for(state: State) -> Engine:
    return Engine(debug=state.debug, echo=lambda line: click.echo(line, err=True))


@click.command()
@json_option
@pass_state
def doctor(state: State, as_json: bool) -> None:
    """Check the prerequisites for building: daemon, BuildKit client, registry, proxy CA, tools."""
    results = checks.run_checks(engine_for(state))
    if as_json:
        emit_json({"ok": all(c.ok for c in results if c.required), "checks": [c.to_dict() for c in results]})
    else:
        table(
            ["check", "status", "detail"],
            [
                [
                    c.name,
                    "ok" if c.ok else ("MISSING" if c.required else "warn"),
                    c.detail if c.ok else f"{c.detail} -> {c.fix}",
                ]
                for c in results
            ],
        )
    if not all(c.ok for c in results if c.required):
        raise SystemExit(1)


@click.command()
@click.argument("devices", nargs=-1, type=click.Choice(["cpu", "gpu"]))
@json_option
@pass_state
def base(state: State, devices: tuple[str, ...], as_json: bool) -> None:
    """Make the base images (bootstrapped with mmdebstrap, or from a registry image) if missing."""
    refs = bases.ensure_bases(state.config(), engine_for(state), devices or ("cpu", "gpu"), progress)
    if as_json:
        emit_json(refs)
        return
    table(["image", "reference"], [[k, v] for k, v in refs.items()])


@click.command()
@apps_argument
@ca_option
@netrc_option
@json_option
@pass_state
def build(
    state: State, apps: tuple[str, ...], ca_bundle: Path | None, netrc: Path | None, as_json: bool
) -> None:
    """Build app images with BuildKit: one shared Ray layer, content-addressed tags.

    An app whose inputs did not change is not rebuilt. A code-only change rebuilds only the code layer.
    """
    config = state.config()
    selected = config.select(apps)
    builder = Builder(config, engine_for(state), ca_bundle or default_ca_bundle(), netrc, progress)
    built = builder.build(selected)
    if as_json:
        emit_json([image.to_dict() for image in built])
        return
    table(
        ["app", "status", "image", "id"],
        [[b.app, "cached" if b.cached else "built", b.ref, b.image_id[:19]] for b in built],
    )


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
    "--timeout", default=180.0, show_default=True, help="Seconds to wait for the head and the route."
)
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
        from raybuild.lock.resolve import cuda_need
        from raybuild.verify import gpu as gpus

        if app.device != "gpu":
            raise UsageError(f'app {app.name!r} is a CPU app; --gpu is for apps with device = "gpu"')
        try:
            host = gpus.ensure(cuda_need(config, app), required_gpus(app), engine)
        except GpuUnavailable as exc:
            if not skip_if_unavailable:
                raise
            if as_json:
                emit_json({"app": app.name, "skipped": exc.message})
            else:
                click.echo(f"skipped: {exc.message}")
            return
        progress(f"GPU host: driver {host.driver}, {host.gpus} GPU(s) {', '.join(host.names)}".rstrip())
    ref = image or built_ref(config, app.name)
    result = smoke_test(config, app, ref, engine, gpu=gpu, timeout=timeout, progress=progress)
    if as_json:
        emit_json(result.to_dict())
        return
    gpu_text = f", {result.gpus:g} GPU(s) in Ray" if gpu else ""
    click.echo(
        f"ok: {app.name} ({ref}) head ready {result.t_head:.1f}s{gpu_text}, route {app.route_prefix} "
        f"answered 200 after {result.t_serve:.1f}s: {result.body[:80]}"
    )


COMMANDS = [doctor, base, build, test_app]
