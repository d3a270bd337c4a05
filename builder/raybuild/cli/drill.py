"""`raybuild drill`: break a node of the local cluster under load and report what clients saw."""

from __future__ import annotations

import click

from raybuild.cli.common import (
    FiniteFloat,
    State,
    emit_json,
    engine_for,
    json_option,
    pass_state,
    progress,
    table,
)
from raybuild.errors import ReportedFailure
from raybuild.local import cluster as local
from raybuild.local.drill import DRILL_KINDS, DrillReport, run_drill
from raybuild.state import project_id

POSITIVE = FiniteFloat(min=0, min_open=True)
# Old names of drills, still accepted: worker-kill's before workers could also be drained.
ALIASES = {"worker-restart": "worker-kill"}


@click.command()
@click.argument("kind", type=click.Choice([*DRILL_KINDS, *ALIASES]))
@click.option(
    "--duration", type=POSITIVE, default=30.0, show_default=True, help="Seconds the request loop runs."
)
@click.option(
    "--rps",
    type=POSITIVE,
    default=20.0,
    show_default=True,
    help="Requests per second, over every app's routes. A rate this machine's client cannot keep up with "
    "is refused before anything is killed.",
)
@click.option(
    "--app", "app_name", default=None, help="worker-kill, worker-drain: whose worker [default: the first]."
)
@click.option(
    "--outage",
    type=FiniteFloat(min=0),
    default=5.0,
    show_default=True,
    help="gcs-outage: seconds the store is down.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="Send the requests round-robin to every worker's Serve port instead of through the front.",
)
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when requests failed (to record a drill).")
@json_option
@pass_state
def drill(
    state: State,
    kind: str,
    duration: float,
    rps: float,
    app_name: str | None,
    outage: float,
    direct: bool,
    allow_failures: bool,
    as_json: bool,
) -> None:
    """Kill and replace a node under a bounded request loop, and report what clients saw.

    Requests go through `raybuild up`'s front (--direct: to the workers' Serve ports). head-restart: the
    head pod restarts with the same GCS store; with GCS fault tolerance, 0 requests fail. worker-kill: one
    worker dies (SIGKILL), like a lost node. worker-drain: one worker gets SIGTERM and its pod's grace
    period, like a scale-down; its preStop drain lets Serve finish its requests first. Either way a new
    worker replaces it. gcs-outage: the store stops briefly. worker-restart is worker-kill's old name.
    """
    if duration * rps > 10000:
        raise click.BadParameter("need at most 10000 requests in all (--duration times --rps)")
    config = state.config()
    cluster = local.load_cluster(config)
    report = run_drill(
        engine_for(state),
        project_id(config),
        cluster,
        ALIASES.get(kind, kind),
        duration=duration,
        rps=rps,
        app=app_name,
        outage=outage,
        progress=progress,
        direct=direct,
    )
    if not as_json:
        _print(report)
    if not report.ok and not allow_failures:
        raise ReportedFailure(
            f"the {kind} drill failed: {report.total.failed} of {report.total.sent} requests failed, "
            f"recovered: {report.recovered}, apps running: {report.apps_running}",
            hint="see the report; pass --allow-failures to record a drill without failing",
            report={"ok": False, **report.to_dict()},
        )
    if as_json:
        emit_json({"ok": report.ok, **report.to_dict()})


def _print(report: DrillReport) -> None:
    def lat(w: object) -> str:
        latency = getattr(w, "latency", None)
        return f"p50 {latency.p50_ms} ms, p99 {latency.p99_ms} ms" if latency else "-"

    table(
        ["window", "sent", "failed", "latency"],
        [
            ["whole drill", report.total.sent, report.total.failed, lat(report.total)],
            [f"outage ({report.outage_s}s)", report.outage.sent, report.outage.failed, lat(report.outage)],
        ],
    )
    click.echo(
        f"through: {report.mode}  recovered: {report.recovered}  apps running: {report.apps_running}  "
        f"replicas unchanged: {report.replicas_unchanged}"
    )
    if report.client_saturated:
        click.echo(
            f"client saturated: {report.client_late} requests could not be sent on time and are not "
            "counted above; lower --rps for a drill that measures the cluster"
        )
    if report.errors:
        click.echo("errors: " + ", ".join(f"{k} x{v}" for k, v in report.errors.items()))
