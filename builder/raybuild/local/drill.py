"""Fault drills on the local cluster: a bounded request loop while a node is killed and replaced.

The loop sends at most ``rps * duration`` requests, through the front (like clients of the serve Service or
an Ingress) or, with ``direct``, round-robin to every worker's Serve port, all on 127.0.0.1, and stops by
itself. A worker is lost in one of two ways: ``worker-kill`` (SIGKILL, like a node that dies) and
``worker-drain`` (`docker stop` with the pod's grace period: SIGTERM runs the preStop drain, like a
scale-down or a preemption with notice). Either way a new worker takes its place, as KubeRay makes a new pod.

The report is honest: every failure is counted, with latency percentiles for the outage window (from the
kill until the replacement is healthy) and for the whole drill.

It is honest about its own client too. A request the loop could not send on time (its thread fell behind
the schedule, or too many requests were still waiting for an answer) measures this machine, not the
cluster: it is not sent, not counted as a failure, and the report says ``client_saturated``. When that
happens before anything is killed, the drill refuses the rate instead of breaking a node for nothing.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Protocol

from raybuild import kuberay
from raybuild.dashboard import RAY_DASHBOARD, Dashboard
from raybuild.engine import Engine
from raybuild.errors import ClusterError, UsageError
from raybuild.local.cluster import (
    LocalCluster,
    Node,
    all_routes_answer,
    front_answers,
    remove_node,
    run_node,
)
from raybuild.loopback import LOOPBACK, wait_until
from raybuild.progress import Progress, silent

# `docker stop` returns once the container ended; bounded beyond the grace period for a daemon that hangs.
STOP_MARGIN_S = 30

# A request sent this long after its slot, or while this many are still unanswered, would measure the
# client's own backlog (a Python thread per request, on a machine that also runs the cluster). A shorter
# lag is no backlog: on 2 cores busy restarting a Ray head, the loop's thread was seen waking up to 0.6 s
# late at 10 rps, and the requests it then sent still measured the cluster.
LATE_AFTER_S = 1.0
MAX_IN_FLIGHT = 128


@dataclass(frozen=True)
class Sample:
    started: float  # seconds since the drill began
    latency: float
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Window:
    sent: int
    failed: int
    latency: Latency | None


@dataclass(frozen=True)
class DrillReport:
    drill: str
    target: str
    duration_s: float
    rps: float
    total: Window
    outage: Window
    outage_s: float  # from the kill until the replacement passed its probes
    recovered: bool
    apps_running: bool
    replicas_unchanged: bool  # False: Serve moved (replaced) replicas
    errors: dict[str, int]
    client_late: int = 0  # requests the loop could not send on time: neither sent nor counted
    client_saturated: bool = False
    # What the requests went through: the front's mode ("service" or "ingress"), or "direct".
    mode: str = "direct"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        clean = self.total.failed == 0 and not self.client_saturated
        return clean and self.recovered and self.apps_running


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def window(samples: list[Sample], start: float = 0.0, end: float = float("inf")) -> Window:
    inside = [s for s in samples if start <= s.started <= end]
    latencies = [s.latency * 1000 for s in inside if s.ok]
    latency = None
    if latencies:
        p50, p95, p99 = (round(percentile(latencies, q), 1) for q in (0.5, 0.95, 0.99))
        latency = Latency(p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=round(max(latencies), 1))
    return Window(len(inside), sum(1 for s in inside if not s.ok), latency)


class RequestLoop:
    """Round-robins over URLs at a fixed rate in a background thread; bounded in count and time.

    A request that cannot go out on time (``late_after`` behind its slot, or ``max_in_flight`` requests
    still unanswered) is skipped and counted in ``client_late``, never as a failure of the cluster.
    """

    def __init__(
        self,
        urls: list[str],
        rps: float,
        duration: float,
        timeout: float = 5.0,
        *,
        late_after: float = LATE_AFTER_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.urls = urls
        self.interval = 1.0 / rps
        self.limit = int(rps * duration)
        self.duration = duration
        self.timeout = timeout
        self.late_after = late_after
        self.max_in_flight = max_in_flight
        self.samples: list[Sample] = []
        self.client_late = 0
        self.origin = 0.0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self.origin = time.monotonic()
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _one(self, url: str, started: float) -> None:
        t0 = time.monotonic()
        try:
            with LOOPBACK.open(url, timeout=self.timeout) as response:
                response.read()
                ok, error = (
                    response.status == 200,
                    "" if response.status == 200 else f"HTTP {response.status}",
                )
        except urllib.error.HTTPError as exc:
            ok, error = False, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            ok, error = False, type(getattr(exc, "reason", exc)).__name__
        with self._lock:
            self.samples.append(Sample(round(started, 3), time.monotonic() - t0, ok, error))
            self._in_flight -= 1

    def _run(self) -> None:
        for index in range(self.limit):
            due = index * self.interval
            if due > self.duration or self._stop.is_set():
                break
            delay = due - self.now()
            if delay > 0 and self._stop.wait(delay):
                break
            with self._lock:
                late = self.now() - due > self.late_after or self._in_flight >= self.max_in_flight
                if late:
                    self.client_late += 1
                    continue
                self._in_flight += 1
            worker = threading.Thread(
                target=self._one, args=(self.urls[index % len(self.urls)], self.now()), daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        """Send nothing more; requests already sent still finish (``join``)."""
        self._stop.set()

    def join(self) -> list[Sample]:
        self._thread.join()
        for worker in self._workers:
            worker.join(self.timeout + 1)
        with self._lock:
            return sorted(self.samples, key=lambda s: s.started)


def replica_ids(status: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for app, info in status.items():
        for name, deployment in (info.get("deployments") or {}).items():
            out[f"{app}/{name}"] = sorted(r.get("replica_id", "") for r in deployment.get("replicas", []))
    return out


def _replace(engine: Engine, project: str, cluster: LocalCluster, node: Node) -> None:
    """Kill a node's container and start a new one with the same name, IP, ports and environment."""
    remove_node(engine, project, cluster, node)
    run_node(engine, project, cluster, node)


def _refuse_a_saturated_client(loop: RequestLoop, rps: float) -> None:
    """Before anything is killed: a loop that already fell behind would report its own backlog."""
    if loop.client_late:
        loop.stop()
        sent = len(loop.join())
        raise UsageError(
            f"--rps {rps:g}: this machine's request loop fell behind before anything was killed "
            f"({loop.client_late} requests late, {sent} sent); nothing was killed",
            hint="lower --rps (the drill measures the cluster only while its client keeps up)",
        )


@dataclass(frozen=True)
class FaultOptions:
    """What a fault may need beyond the cluster: the drill's options, its progress and its clock."""

    app: str | None  # the worker drills' app (None: the first worker)
    outage: float  # gcs-outage: seconds the store is down
    progress: Progress
    t_kill: float  # seconds into the drill when the fault strikes
    now: Callable[[], float]  # seconds into the drill, for the progress lines


@dataclass(frozen=True)
class Struck:
    """The node a fault broke, and the node whose KubeRay probes say the cluster recovered."""

    target: Node
    checked: Node


class Fault(Protocol):
    """One kind of drill: breaks a node (and starts its replacement) while the request loop runs."""

    def run(self, engine: Engine, project: str, cluster: LocalCluster, options: FaultOptions) -> Struck: ...


def _worker(cluster: LocalCluster, app: str | None) -> Node:
    return cluster.node("worker", app) if app else cluster.node("worker")


class HeadRestart:
    """The head pod restarts with the same GCS store."""

    def run(self, engine: Engine, project: str, cluster: LocalCluster, options: FaultOptions) -> Struck:
        target = cluster.node("head")
        options.progress(
            f"t={options.t_kill:.1f}s: killing the head {target.name} and starting a new one at {target.ip}"
        )
        _replace(engine, project, cluster, target)
        return Struck(target, target)


class WorkerKill:
    """One worker dies (SIGKILL), like a lost node; a new one takes its place."""

    def run(self, engine: Engine, project: str, cluster: LocalCluster, options: FaultOptions) -> Struck:
        target = _worker(cluster, options.app)
        options.progress(
            f"t={options.t_kill:.1f}s: killing worker {target.name} (SIGKILL) and starting a new one"
        )
        _replace(engine, project, cluster, target)
        return Struck(target, target)


class WorkerDrain:
    """One worker gets SIGTERM and its pod's grace period (its preStop drain runs), then is replaced."""

    def run(self, engine: Engine, project: str, cluster: LocalCluster, options: FaultOptions) -> Struck:
        target = _worker(cluster, options.app)
        grace = kuberay.TERMINATION_GRACE_S
        options.progress(
            f"t={options.t_kill:.1f}s: stopping worker {target.name} (SIGTERM, {grace}s grace period)"
        )
        engine.stop(target.name, grace=grace, timeout=grace + STOP_MARGIN_S)
        options.progress(f"t={options.now():.1f}s: {target.name} drained and stopped; starting a new one")
        _replace(engine, project, cluster, target)
        return Struck(target, target)


class GcsOutage:
    """The GCS store stops for a while and starts again; the head must ride it out."""

    def run(self, engine: Engine, project: str, cluster: LocalCluster, options: FaultOptions) -> Struck:
        target = cluster.node("gcs")
        options.progress(
            f"t={options.t_kill:.1f}s: stopping the GCS store {target.name} for {options.outage:.0f}s"
        )
        engine.stop(target.name, grace=0)
        time.sleep(options.outage)
        engine.start(target.name)
        # The store has no KubeRay probe; the head, whose GCS lost its store, is what must recover.
        return Struck(target, cluster.node("head"))


# The drills, by the name `raybuild drill` takes: the one list of kinds, so a kind cannot exist without
# the code that runs it (the CLI's choices are these names).
DRILLS: Mapping[str, Fault] = MappingProxyType(
    {
        "head-restart": HeadRestart(),
        "worker-kill": WorkerKill(),
        "worker-drain": WorkerDrain(),
        "gcs-outage": GcsOutage(),
    }
)
DRILL_KINDS: tuple[str, ...] = tuple(DRILLS)


def fault_for(kind: str) -> Fault:
    """The drill named ``kind``; a name the table lacks is refused before anything runs."""
    try:
        return DRILLS[kind]
    except KeyError:
        raise UsageError(
            f"no drill named {kind!r}", hint=f"choose one of: {', '.join(DRILL_KINDS)}"
        ) from None


def run_drill(
    engine: Engine,
    project: str,
    cluster: LocalCluster,
    kind: str,
    duration: float = 30.0,
    rps: float = 20.0,
    app: str | None = None,
    outage: float = 5.0,
    timeout: float = 120.0,
    progress: Progress = silent,
    direct: bool = False,
    dashboard_api: Dashboard = RAY_DASHBOARD,
) -> DrillReport:
    fault = fault_for(kind)
    if not direct and not cluster.front:
        raise ClusterError(
            "this cluster has no front to send the drill's requests through",
            hint="rerun `raybuild up` (it starts one), or pass --direct to hit the workers' ports",
        )
    if not all_routes_answer(cluster) or not (direct or front_answers(cluster)):
        raise ClusterError("not every app answers before the drill", hint="check `raybuild up`, or rerun it")
    before = replica_ids(kuberay.serve_status(cluster.dashboard, dashboard_api))
    targets = cluster.urls() if direct else cluster.front_urls()
    urls = [url for app_urls in targets.values() for url in app_urls]
    loop = RequestLoop(urls, rps, duration)
    loop.start()
    time.sleep(min(duration * 0.2, 5.0))
    _refuse_a_saturated_client(loop, rps)
    t_kill = loop.now()
    struck = fault.run(engine, project, cluster, FaultOptions(app, outage, progress, t_kill, loop.now))
    target, checked = struck.target, struck.checked
    recovered = wait_until(lambda: kuberay.probe(engine, checked.name, checked.role), timeout, interval=0.5)
    t_healthy = loop.now()
    progress(
        f"t={t_healthy:.1f}s: {checked.role} {'healthy again' if recovered else 'NOT healthy'}; "
        "letting the request loop finish"
    )
    samples = loop.join()

    def statuses() -> dict[str, Any]:
        return kuberay.serve_status(cluster.dashboard, dashboard_api)

    # Replicas may take a moment to report again after the controller restarts with the new head.
    wait_until(lambda: all(i.get("status") == "RUNNING" for i in statuses().values()), 60, interval=1.0)
    after_status = statuses()
    errors: dict[str, int] = {}
    for sample in samples:
        if not sample.ok:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    return DrillReport(
        drill=kind,
        target=target.name,
        mode="direct" if direct else cluster.front,
        duration_s=duration,
        rps=rps,
        total=window(samples),
        outage=window(samples, t_kill, t_healthy),
        outage_s=round(t_healthy - t_kill, 2),
        recovered=recovered,
        apps_running=bool(after_status) and all(i.get("status") == "RUNNING" for i in after_status.values()),
        replicas_unchanged=replica_ids(after_status) == before,
        errors=errors,
        client_late=loop.client_late,
        client_saturated=loop.client_late > 0,
    )
