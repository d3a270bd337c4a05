"""Drills without a cluster: percentiles, outage windows, replica identity, the bounded request loop against
a tiny HTTP server on 127.0.0.1, and whole drills whose nodes are the fake engine's. Nothing here asserts on
how long anything took."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import click
import pytest

from raybuild import kuberay
from raybuild.errors import ClusterError, UsageError
from raybuild.local import drill
from raybuild.local.cluster import LocalCluster, Node, node_spec
from raybuild.local.drill import Latency, RequestLoop, Sample, Window
from tests.conftest import REPO_ROOT, MainResult
from tests.unit.fakes import FakeDashboard, FakeEngine, docker_runs

PROJECT = "0123456789abcdef"


def test_percentile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert drill.percentile(values, 0.0) == 1.0
    assert drill.percentile(values, 0.5) == 51.0
    assert drill.percentile(values, 0.95) == 95.0
    assert drill.percentile(values, 1.0) == 100.0
    assert drill.percentile([7.0], 0.99) == 7.0
    assert drill.percentile([], 0.5) == 0.0


SAMPLES = [
    Sample(0.1, 0.010, True),
    Sample(1.0, 0.020, True),
    Sample(2.0, 0.500, False, "HTTP 500"),
    Sample(2.5, 0.300, True),
    Sample(3.0, 5.000, False, "TimeoutError"),
    Sample(4.0, 0.030, True),
]


def test_window_over_the_whole_drill() -> None:
    whole = drill.window(SAMPLES)
    assert (whole.sent, whole.failed) == (6, 2)
    # Latency covers the successful requests only, in milliseconds.
    assert whole.latency == Latency(p50_ms=30.0, p95_ms=300.0, p99_ms=300.0, max_ms=300.0)


def test_outage_window_includes_its_bounds() -> None:
    outage = drill.window(SAMPLES, 2.0, 3.0)
    assert outage == Window(sent=3, failed=2, latency=Latency(300.0, 300.0, 300.0, 300.0))


def test_a_window_where_everything_failed_has_no_latency() -> None:
    assert drill.window(SAMPLES, 2.0, 2.0) == Window(sent=1, failed=1, latency=None)
    assert drill.window(SAMPLES, 10.0, 20.0) == Window(sent=0, failed=0, latency=None)


def test_replica_ids_are_sorted_per_deployment() -> None:
    status = {
        "demo": {
            "status": "RUNNING",
            "deployments": {
                "Demo": {"replicas": [{"replica_id": "b"}, {"replica_id": "a"}]},
                "Ingress": {"replicas": []},
            },
        },
        "starting": {"status": "DEPLOYING", "deployments": None},
    }
    assert drill.replica_ids(status) == {"demo/Demo": ["a", "b"], "demo/Ingress": []}


def test_a_report_is_ok_only_without_failures_and_with_recovery() -> None:
    clean = Window(10, 0, None)
    report = drill.DrillReport("head-restart", "h", 1.0, 10.0, clean, clean, 0.5, True, True, True, {})
    assert report.ok
    assert not replace(report, total=Window(10, 1, None), errors={"HTTP 500": 1}).ok
    assert not replace(report, recovered=False).ok
    assert not replace(report, apps_running=False).ok
    # A client that fell behind measured itself: no failure counted, but no clean bill of health either.
    assert not replace(report, client_late=3, client_saturated=True).ok
    assert report.to_dict()["total"] == {"sent": 10, "failed": 0, "latency": None}
    assert report.to_dict()["client_saturated"] is False


# -- the request loop -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/slow":
            time.sleep(0.6)
        status = 500 if self.path == "/fail" else 200
        body = b"ok" if status == 200 else b"boom"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (the timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server: /fail answers 500, /slow answers after 0.6 s, anything else 200."""
    hits: ClassVar[list[str]] = []
    handler = type("Handler", (_Handler,), {"hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_loop_sends_rps_times_duration_requests_round_robin(server: tuple[str, list[str]]) -> None:
    base, hits = server
    loop = RequestLoop([f"{base}/ok", f"{base}/fail"], rps=40, duration=0.5)
    loop.start()
    samples = loop.join()
    assert len(samples) == 20
    assert sorted(hits) == sorted(["/ok"] * 10 + ["/fail"] * 10)
    assert sum(1 for s in samples if not s.ok) == 10
    assert {s.error for s in samples if not s.ok} == {"HTTP 500"}
    assert all(s.error == "" for s in samples if s.ok)
    assert [s.started for s in samples] == sorted(s.started for s in samples)


def test_the_loop_names_connection_errors_and_timeouts(server: tuple[str, list[str]]) -> None:
    base, _ = server
    refused = f"http://127.0.0.1:{closed_port()}/"
    loop = RequestLoop([refused, f"{base}/slow"], rps=20, duration=0.1, timeout=0.2)
    loop.start()
    samples = loop.join()
    assert len(samples) == 2
    assert sorted(s.error for s in samples) == ["ConnectionRefusedError", "TimeoutError"]
    assert drill.window(samples) == Window(sent=2, failed=2, latency=None)


def test_the_loop_never_exceeds_its_budget(server: tuple[str, list[str]]) -> None:
    base, hits = server
    loop = RequestLoop([f"{base}/ok"], rps=7, duration=0.5)  # 3.5 requests: at most 3
    loop.start()
    assert len(loop.join()) == 3
    assert len(hits) == 3


def test_requests_the_client_cannot_send_on_time_are_not_failures_of_the_server(
    server: tuple[str, list[str]],
) -> None:
    base, hits = server
    # One request at a time: while the first waits 0.6 s for /slow, the others find no room.
    loop = RequestLoop([f"{base}/slow"], rps=20, duration=0.25, max_in_flight=1)
    loop.start()
    samples = loop.join()
    assert len(samples) == len(hits) == 1
    assert loop.client_late == 4, "5 slots, 1 sent"
    assert drill.window(samples).failed == 0


def test_a_loop_that_is_behind_its_schedule_skips_rather_than_bursts(server: tuple[str, list[str]]) -> None:
    base, hits = server
    loop = RequestLoop([f"{base}/ok"], rps=40, duration=0.5, late_after=-1.0)  # every slot is "late"
    loop.start()
    assert loop.join() == [] and hits == []
    assert loop.client_late == 20


def test_a_stopped_loop_sends_nothing_more(server: tuple[str, list[str]]) -> None:
    base, _ = server
    loop = RequestLoop([f"{base}/ok"], rps=2, duration=60)
    loop.start()
    loop.stop()
    assert len(loop.join()) <= 1


# -- a whole drill, with the fake engine ------------------------------------------------------------------

SERVE_STATUS = {"demo": {"status": "RUNNING", "deployments": {"Demo": {"replicas": [{"replica_id": "r1"}]}}}}


def _cluster(port: int, front: int = 0) -> LocalCluster:
    """A running cluster whose worker (and, with ``front``, whose front) is the test server at ``port``."""
    nodes = [
        Node("c-gcs", "gcs", "redis:1", "", {"REDIS_PASSWORD": "pw"}, ip="172.29.213.10"),
        Node("c-head", "head", "head:1", "ray start --head", {}, ip="172.29.213.11", publish={8265: 40001}),
        Node("c-worker-demo", "worker", "demo:1", "ray start", {}, app="demo", publish={8000: port}),
    ]
    if front:
        nodes.append(Node("c-front", "front", "front:1", "", {}, ip="172.29.213.12", publish={8000: front}))
    return LocalCluster("c", "c", "172.29.213.0", nodes, {"demo": "/demo"}, "ingress" if front else "")


# Each drill: the node it breaks, the node whose probes must pass again, and those probes.
DRILL_CASES = [
    ("worker-kill", "c-worker-demo", "c-worker-demo", [kuberay.RAYLET_PROBE]),
    ("worker-drain", "c-worker-demo", "c-worker-demo", [kuberay.RAYLET_PROBE]),
    ("head-restart", "c-head", "c-head", [kuberay.RAYLET_PROBE, kuberay.GCS_PROBE]),
    ("gcs-outage", "c-gcs", "c-head", [kuberay.RAYLET_PROBE, kuberay.GCS_PROBE]),
]


def test_every_drill_of_the_table_is_run_by_the_whole_drill_test() -> None:
    # A kind added to the table gets its own case below, or this fails.
    assert sorted(case[0] for case in DRILL_CASES) == sorted(drill.DRILLS) == sorted(drill.DRILL_KINDS)
    for kind, fault in drill.DRILLS.items():
        assert callable(getattr(fault, "run", None)), f"{kind} has no run()"


def test_the_cli_offers_exactly_the_tables_drills_and_their_old_names() -> None:
    from raybuild.cli import drill as drill_cli

    [kind] = [p for p in drill_cli.drill.params if p.name == "kind"]
    assert isinstance(kind.type, click.Choice)
    assert list(kind.type.choices) == [*drill.DRILL_KINDS, *drill_cli.ALIASES]
    assert set(drill_cli.ALIASES.values()) <= set(drill.DRILLS), "an old name must name a drill of the table"


def test_an_unknown_drill_is_refused_before_anything_runs(server: tuple[str, list[str]]) -> None:
    base, hits = server
    cluster = _cluster(int(base.rsplit(":", 1)[1]))
    engine = FakeEngine()
    with pytest.raises(UsageError, match=r"^no drill named 'disk-full'") as raised:
        drill.run_drill(engine, PROJECT, cluster, "disk-full", duration=0.3, rps=10, timeout=5, direct=True)
    assert raised.value.hint == "choose one of: head-restart, worker-kill, worker-drain, gcs-outage"
    assert (engine.log, hits) == ([], []), "no request sent, no node touched"


def test_the_cli_refuses_an_unknown_drill(run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", str(REPO_ROOT / "raybuild.toml"), "drill", "disk-full")
    assert result.exit_code == 2
    assert "'disk-full' is not one of 'head-restart', 'worker-kill'" in result.stderr


@pytest.mark.parametrize(("kind", "target", "probed", "probes"), DRILL_CASES)
def test_a_drill_replaces_its_target_and_waits_for_kuberays_probes(
    server: tuple[str, list[str]],
    kind: str,
    target: str,
    probed: str,
    probes: list[str],
) -> None:
    base, hits = server
    cluster = _cluster(int(base.rsplit(":", 1)[1]))
    dashboard = FakeDashboard(applications=(200, json.dumps({"applications": SERVE_STATUS})))
    engine = FakeEngine()
    for node in cluster.nodes:  # running, as `up` started them
        engine.containers[node.name] = dict(node_spec(PROJECT, cluster, node).labels)
    report = drill.run_drill(
        engine,
        PROJECT,
        cluster,
        kind,
        duration=0.3,
        rps=10,
        outage=0.01,
        timeout=5,
        direct=True,
        dashboard_api=dashboard,
    )

    assert (report.target, report.recovered, report.apps_running, report.replicas_unchanged) == (
        target,
        True,
        True,
        True,
    )
    assert report.total.failed == 0 and report.total.sent == 3
    assert set(hits) == {"/demo"}
    assert [call[-1] for call in engine.calls("exec", probed)] == probes
    assert report.mode == "direct"
    assert {url for url, _, _ in dashboard.called("applications")} == {cluster.dashboard}
    if kind == "worker-drain":  # `docker stop` with the pod's grace period: SIGTERM runs the drain first
        (stop,) = engine.calls("stop")
        assert stop.args == (target,) and stop["grace"] == kuberay.TERMINATION_GRACE_S
    if kind == "gcs-outage":
        (stop,) = engine.calls("stop")
        assert stop.args == ("c-gcs",) and stop["grace"] == 0
        assert [c.args for c in engine.calls("start")] == [("c-gcs",)]
    else:
        [run] = docker_runs(engine)
        assert engine.removed == [target]
        assert run[run.index("--name") + 1] == target, "the replacement keeps the name, IP and ports"
        assert f"io.raybuild.project={PROJECT}" in run


def test_a_rate_the_client_cannot_sustain_is_refused_before_anything_is_killed(
    server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    cluster = _cluster(int(base.rsplit(":", 1)[1]))
    dashboard = FakeDashboard(applications=(200, json.dumps({"applications": SERVE_STATUS})))
    monkeypatch.setattr(drill, "RequestLoop", partial(RequestLoop, max_in_flight=0))  # nothing fits
    engine = FakeEngine()
    with pytest.raises(UsageError, match=r"^--rps 10: this machine's request loop fell behind") as raised:
        drill.run_drill(
            engine,
            PROJECT,
            cluster,
            "head-restart",
            duration=0.3,
            rps=10,
            timeout=5,
            direct=True,
            dashboard_api=dashboard,
        )
    assert raised.value.hint is not None and "lower --rps" in raised.value.hint
    assert engine.calls() == [], "no node was touched"


def test_a_drill_goes_through_the_front_unless_direct(
    server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, hits = server
    port = int(base.rsplit(":", 1)[1])
    cluster = _cluster(closed_port(), front=port)  # a worker port that refuses: only the front answers
    dashboard = FakeDashboard(applications=(200, json.dumps({"applications": SERVE_STATUS})))
    monkeypatch.setattr(drill, "all_routes_answer", lambda cluster: True)
    engine = FakeEngine()
    for node in cluster.nodes:
        engine.containers[node.name] = dict(node_spec(PROJECT, cluster, node).labels)
    report = drill.run_drill(
        engine, PROJECT, cluster, "worker-kill", duration=0.3, rps=10, timeout=5, dashboard_api=dashboard
    )
    assert (report.mode, report.total.sent, report.total.failed) == ("ingress", 3, 0)
    assert set(hits) == {"/demo"}


def test_a_drill_through_a_cluster_without_a_front_is_refused(
    server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    cluster = _cluster(int(base.rsplit(":", 1)[1]))
    engine = FakeEngine()
    with pytest.raises(ClusterError, match="no front") as raised:
        drill.run_drill(engine, PROJECT, cluster, "worker-kill", duration=0.3, rps=10, timeout=5)
    assert raised.value.hint is not None and "--direct" in raised.value.hint
    assert engine.calls() == [], "no node was touched"
