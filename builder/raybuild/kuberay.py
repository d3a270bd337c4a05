"""The KubeRay node contract, written once: what a head or worker pod runs, and how KubeRay checks it.

KubeRay turns a group's rayStartParams into the Ray container's command (`ulimit -n 65536; ray start ...`),
probes the container with exec probes, and its RayService controller deploys Serve through the dashboard's
REST API. The smoke test, the cold starts and the local cluster all start their nodes from here, so each
of them runs a node the way a pod runs it: the same command line, ports, probes and Serve requests.

A ``NodeSpec`` is one container as `docker run` starts it; ``start`` and ``running`` make it through the
engine, and ``probe`` tells whether it is ready. Every wait on a node has a deadline.
"""

from __future__ import annotations

import json
import math
import resource
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from raybuild.config_apps import App
from raybuild.dashboard import RAY_DASHBOARD, Dashboard
from raybuild.engine import Engine, Result
from raybuild.errors import EngineError, GpuUnavailable, RaybuildError
from raybuild.fsutil import atomic_write
from raybuild.image.introspect import AppException
from raybuild.labels import label_filters
from raybuild.loopback import wait_until
from raybuild.verify.gpu import TOOLKIT_HINT, no_device_driver

GCS_PORT = 6379
DASHBOARD_PORT = 8265
AGENT_PORT = 52365
SERVE_PORT = 8000
METRICS_PORT = 8080

# A Ray node label key (Kubernetes label syntax). Ray reserves the ray.io/ prefix for its own labels.
LABEL_KEY = "raybuild.io/app"

# GCS fault tolerance, as KubeRay sets it up from gcsFaultToleranceOptions: the head reads the store's
# address and namespace from these variables, and `ray start` gets the password through $REDIS_PASSWORD
# (KubeRay fills that variable from the password Secret).
REDIS_ADDRESS_ENV = "RAY_REDIS_ADDRESS"
REDIS_PASSWORD_ENV = "REDIS_PASSWORD"
STORAGE_NAMESPACE_ENV = "RAY_external_storage_namespace"
# KubeRay sets this on workers when GCS fault tolerance is on: how long a raylet waits for the GCS to come
# back before it exits (Ray's default is 60 s). Ray reads its config from RAY_<name>, case and all.
RECONNECT_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
WORKER_RECONNECT_TIMEOUT_S = "600"

Role = Literal["head", "worker"]


# -- the `ray start` command lines ------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _ray_start(role: Role, params: Mapping[str, str]) -> str:
    """The container's command, as KubeRay generates it from a group's rayStartParams.

    KubeRay adds the parameters it always sets (block, the agent and metrics ports), writes them in key
    order, and turns a "true" value into a bare flag; `ulimit -n 65536` comes first.
    """
    defaults = {
        "block": "true",
        "dashboard-agent-listen-port": str(AGENT_PORT),
        "metrics-export-port": str(METRICS_PORT),
    }
    flags = [
        f"--{key}" if value == "true" else f"--{key}={value}"
        for key, value in sorted({**defaults, **params}.items())
    ]
    start = ["ray", "start", "--head"] if role == "head" else ["ray", "start"]
    return "ulimit -n 65536; " + " ".join([*start, *flags])


def head_command(
    num_cpus: float, *, num_gpus: int = 0, gcs_fault_tolerance: bool = False, usage_stats: bool = True
) -> str:
    """A head's command. KubeRay passes the container's nvidia.com/gpu limit to `ray start` as num-gpus."""
    params = {"dashboard-host": "0.0.0.0", "num-cpus": _number(num_cpus)}
    if num_gpus:
        params["num-gpus"] = str(num_gpus)
    if gcs_fault_tolerance:
        params["redis-password"] = f"${REDIS_PASSWORD_ENV}"
    if not usage_stats:
        params["disable-usage-stats"] = "true"
    return _ray_start("head", params)


def worker_command(
    head: str, num_cpus: float, *, labels: Mapping[str, str] | None = None, usage_stats: bool = True
) -> str:
    """A worker's command: it joins the GCS on ``head`` and carries its group's Ray node labels."""
    params = {"address": f"{head}:{GCS_PORT}", "num-cpus": _number(num_cpus)}
    if labels:
        params["labels"] = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    if not usage_stats:
        params["disable-usage-stats"] = "true"
    return _ray_start("worker", params)


def gcs_head_env(redis_address: str, password: str, namespace: str) -> dict[str, str]:
    """The head's environment under GCS fault tolerance (see REDIS_ADDRESS_ENV)."""
    return {REDIS_ADDRESS_ENV: redis_address, REDIS_PASSWORD_ENV: password, STORAGE_NAMESPACE_ENV: namespace}


# -- sizing a node for an app -----------------------------------------------------------------------------


def _min_replicas(app: App) -> list[tuple[int, float, float]]:
    """(replicas, num_cpus, num_gpus) per deployment, every replica at its minimum (at least one)."""
    rows = []
    for deployment in app.deployments:
        replicas = deployment.num_replicas or (
            deployment.autoscaling.min_replicas if deployment.autoscaling else 1
        )
        options = deployment.ray_actor_options
        rows.append((max(replicas, 1), options.num_cpus or 1.0, options.num_gpus or 0.0))
    return rows


def required_cpus(app: App) -> int:
    """CPUs for a node that holds every replica at its minimum, plus one for Serve's own actors."""
    total = sum(replicas * cpus for replicas, cpus, _ in _min_replicas(app))
    return max(2, int(total + 0.999) + 1)


def required_gpus(app: App) -> int:
    """GPUs for a node that holds every replica at its minimum, and at least one."""
    total = sum(replicas * gpu for replicas, _, gpu in _min_replicas(app))
    return max(1, math.ceil(total - 1e-9))


def nofile_limit() -> int:
    """KubeRay runs `ulimit -n 65536`; give the container that much where this host's hard limit allows."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)


# -- one container ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One container as `docker run` starts it: a Ray node, or the local cluster's GCS store."""

    name: str
    image: str
    command: str = ""  # run with /bin/bash -c, as KubeRay runs it; empty: the image's own command
    labels: Mapping[str, str] = field(default_factory=dict)  # Docker object labels (engine.object_labels)
    env: Mapping[str, str] = field(default_factory=dict)
    publish: Mapping[int, int] = field(default_factory=dict)  # port -> host port on 127.0.0.1 (0: any)
    network: str | None = None  # "none" for no network at all
    ip: str | None = None
    hostname: str | None = None
    gpus: int | Literal["all"] = 0  # Docker's GPU device request, what a pod's nvidia.com/gpu limit becomes
    shm_size: str | None = "1g"  # Ray's object store lives in /dev/shm
    nofile: int | None = field(default_factory=nofile_limit)
    restart: str | None = None
    stop_timeout: int | None = None  # seconds `docker stop` waits before SIGKILL: the pod's grace period
    platform: str | None = None  # another platform's image, run under emulation (`docker run --platform`)


def start(engine: Engine, spec: NodeSpec) -> None:
    """Start the container; a failed or interrupted start leaves no container behind.

    The container is found again by its name and labels, so an interruption while `docker run` was still
    creating it removes it too, and a same-named container of anyone else is never touched.
    """
    label_filters(spec.labels)  # a container that no sweep could find is never made
    try:
        engine.run_detached(spec, what=f"docker run {spec.name} ({spec.image})")
    except BaseException as exc:
        engine.release(spec.labels, name=spec.name)
        if isinstance(exc, EngineError) and spec.gpus and no_device_driver(exc.output_tail):
            raise GpuUnavailable(
                "Docker could not give the container a GPU (no NVIDIA device driver in dockerd)",
                hint=TOOLKIT_HINT,
            ) from exc
        raise


@contextmanager
def running(engine: Engine, spec: NodeSpec) -> Iterator[NodeSpec]:
    """The container started, and removed on the way out whatever happens (errors, Ctrl-C, SIGTERM)."""
    start(engine, spec)
    try:
        yield spec
    finally:
        engine.release(spec.labels, name=spec.name)


# -- KubeRay's probes -------------------------------------------------------------------------------------

RAYLET_HEALTH_PATH = "/api/local_raylet_healthz"
GCS_HEALTH_PATH = "/api/gcs_healthz"
AGENT_HEALTH_PATH = "/api/healthz"  # the agent's view of both: raylet and GCS
# KubeRay's readiness and liveness exec probes (ray-operator's initLivenessAndReadinessProbe): a head checks
# its raylet and the GCS, a worker its raylet only.
RAYLET_PROBE = f"wget -T 2 -q -O- http://localhost:{AGENT_PORT}{RAYLET_HEALTH_PATH} | grep success"
GCS_PROBE = f"wget -T 2 -q -O- http://localhost:{DASHBOARD_PORT}{GCS_HEALTH_PATH} | grep success"
# kubelet's timeoutSeconds for a worker's readiness probe; each of a head's two checks gets as much.
PROBE_TIMEOUT_S = 2
# A bound on `docker exec` itself, for a daemon that does not answer.
EXEC_TIMEOUT_S = 10


# A RayService worker's readiness probe as KubeRay injects it (ray-operator's pod.go and utils/constant.go):
# the raylet check, and the Serve proxy's `/-/healthz`, which answers 503 once the node drains. Its failure
# threshold is 1 (ServeReadinessProbeFailureThreshold), so a draining or dead proxy leaves the serve
# Service at the next probe. The rendered manifest spells this probe out, and `raybuild up`'s front checks
# its backends with the same period and threshold.
SERVE_HEALTH_PATH = "/-/healthz"
SERVE_PROBE = (
    f"wget -T {PROBE_TIMEOUT_S} -q -O- http://localhost:{SERVE_PORT}{SERVE_HEALTH_PATH} | grep success"
)
WORKER_READINESS_PROBE = f"{RAYLET_PROBE} && {SERVE_PROBE}"
READINESS_INITIAL_DELAY_S = 10
READINESS_PERIOD_S = 5
READINESS_FAILURE_THRESHOLD = 1


class Executes(Protocol):
    """Runs a command in a running container: the Docker engine, or the containerd cold node's ctr."""

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result: ...


def probe(engine: Executes, container: str, role: str = "head") -> bool:
    """KubeRay's exec probes for a node, each bounded the way kubelet bounds an exec probe (timeoutSeconds).

    Unbounded, a probe sent before the port listens does not fail: under `--network none` wget's connect
    to localhost's ::1 fails with "Cannot assign requested address", which wget retries 20 times with a
    growing back-off, so the head would look ready seconds after it is.
    """
    checks = (RAYLET_PROBE, GCS_PROBE) if role == "head" else (RAYLET_PROBE,)
    return all(
        engine.exec(
            container, ["timeout", str(PROBE_TIMEOUT_S), "bash", "-c", check], timeout=EXEC_TIMEOUT_S
        ).returncode
        == 0
        for check in checks
    )


def healthz_ok(status: int, body: str) -> bool:
    """Ray 2.60's agent `/api/healthz`: HTTP 200 with `raylet: success` and `gcs: success` lines."""
    checks = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
    return status == 200 and all(checks.get(name, "").startswith("success") for name in ("raylet", "gcs"))


# -- draining a worker before Ray stops -------------------------------------------------------------------

# A worker pod's terminationGracePeriodSeconds: the preStop hook below, and what follows it, fit inside.
TERMINATION_GRACE_S = 60
# The deadline the hook gives Ray's drain. Serve stops the replicas of a draining node gracefully (each
# waits for the requests it holds) once the deadline is less than their graceful_shutdown_timeout_s
# (20 s by default) away, or as soon as a replacement runs elsewhere: 45 s leaves Serve's proxy its
# minimum draining period, RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S (30 s), which is what lets the serve
# Service (readiness every 5 s) take the pod out before the proxy stops.
DRAIN_DEADLINE_S = 45
# How long the hook waits for the proxy and the replicas to be gone, before `ray stop` anyway; the rest
# of the grace period is for `ray stop`.
DRAIN_WAIT_S = TERMINATION_GRACE_S - 10
# The preStop hook. `ray drain-node` (Ray 2.60; the call the autoscaler makes before it removes a node)
# marks this node as draining with a deadline: Ray schedules nothing new on it, Serve starts replacement
# replicas elsewhere and stops this node's replicas gracefully, and its proxy answers `/-/healthz` with 503
# while it keeps serving what it has, then stops once it holds no request. The hook waits for both (the
# proxy's port refuses: wget exits 4; no `ray::ServeReplica` process is left, a pattern that the grep's own
# command line does not match), then stops Ray. One try at 127.0.0.1: wget retries a refused connection
# to localhost 20 times with a growing back-off (its ::1 fails with "Cannot assign requested address"), which
# once kept a drained worker waiting until its grace period ran out. Without it,
# SIGTERM goes to the container's shell, which ignores it, and the pod dies at the end of its grace period
# with its requests.
DRAIN_HOOK = (
    "ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --reason-message 'pod terminating' "
    f"--deadline-remaining-seconds {DRAIN_DEADLINE_S}; "
    f"for _ in $(seq {DRAIN_WAIT_S}); do "
    f"wget -t 1 -T {PROBE_TIMEOUT_S} -q -O /dev/null http://127.0.0.1:{SERVE_PORT}{SERVE_HEALTH_PATH}; "
    "[ $? -eq 4 ] && ! grep -qs 'ServeReplic[a]' /proc/[0-9]*/cmdline && break; sleep 1; done; "
    "ray stop"
)


def draining_command(command: str) -> str:
    """A worker's command that runs the preStop hook on SIGTERM, for a container that no kubelet stops.

    `docker stop` sends SIGTERM to the container's shell, then SIGKILL after the stop timeout (the grace
    period). The shell runs the hook, then does what the kubelet does once a preStop hook returns: SIGTERM
    to `ray start --block`, which `ray stop` leaves blocking (it reports subprocesses that ended on SIGTERM
    as graceful, and goes on waiting).
    """
    stop = "kill -TERM $ray 2>/dev/null"
    return f"drain() {{ {DRAIN_HOOK}; {stop}; }}; trap drain TERM; {command} & ray=$!; wait $ray; wait $ray"


# -- the dashboard's REST API (raybuild.dashboard makes the calls; these read the answers) ----------------


def alive_nodes(dashboard: str, api: Dashboard = RAY_DASHBOARD) -> int:
    """ALIVE nodes in the dashboard's state API (GET /api/v0/nodes); 0 when it does not answer."""
    status, body = api.nodes(dashboard)
    if status != 200:
        return 0
    try:
        nodes = json.loads(body)["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        return 0
    return sum(1 for node in nodes if isinstance(node, dict) and node.get("state") == "ALIVE")


def deploy(
    dashboard: str,
    body: Mapping[str, Any],
    error: type[RaybuildError],
    context: str = "",
    timeout: float = 60,
    api: Dashboard = RAY_DASHBOARD,
) -> None:
    """PUT a Serve config, as KubeRay's RayService controller sends it; ``error`` when it is refused."""
    status, text = api.deploy_applications(dashboard, body, timeout)
    if status != 200:
        raise error(f"{context}Serve deploy request returned {status}: {text[:300]}")


def serve_status(dashboard: str, api: Dashboard = RAY_DASHBOARD) -> dict[str, Any]:
    """Each Serve application's status by name; empty when the dashboard does not answer."""
    status, text = api.applications(dashboard)
    if status != 200:
        return {}
    try:
        applications = json.loads(text)["applications"]
    except (ValueError, KeyError, TypeError):
        return {}
    return applications if isinstance(applications, dict) else {}


def app_status(dashboard: str, app: str, api: Dashboard = RAY_DASHBOARD) -> str:
    """One line on an app's Serve status, for an error message."""
    info = serve_status(dashboard, api).get(app)
    if not isinstance(info, dict):
        return f"Serve reports no status for {app!r}"
    return f"status {info.get('status')}: {str(info.get('message', ''))[:300]}"


# -- a failed Serve deploy --------------------------------------------------------------------------------

# Where every Ray node writes its logs; Serve names a replica's log relative to this folder.
RAY_LOGS_DIR = "/tmp/ray/session_latest/logs"
DEPLOY_FAILED = "DEPLOY_FAILED"
# A waiting command reads the applications' status at least this often: a deploy that failed (an import
# error, an exception in a constructor) stops the wait there, instead of at its timeout.
STATUS_POLL_S = 2.0


@dataclass(frozen=True)
class DeployFailure:
    """An application Serve reports as DEPLOY_FAILED, with what Serve said about it."""

    app: str
    message: str  # the failed deployment's message, else the application's: a traceback, usually
    log_file: str | None = None  # the last failed replica's log, relative to RAY_LOGS_DIR on its node

    def describe(self) -> str:
        """The app's exception (type, message, its own frame), else the first line of Serve's message."""
        exception = AppException.from_traceback(self.message)
        if exception is not None:
            return exception.describe()
        lines = self.message.strip().splitlines()
        return lines[0][:300] if lines else "no message from Serve"


def deploy_failures(
    dashboard: str, apps: Sequence[str], api: Dashboard = RAY_DASHBOARD
) -> list[DeployFailure]:
    """The apps among ``apps`` whose deploy failed, read from one Serve status request."""
    statuses = serve_status(dashboard, api)
    failures = []
    for app in apps:
        info = statuses.get(app)
        if not isinstance(info, dict) or info.get("status") != DEPLOY_FAILED:
            continue
        message, log_file = str(info.get("message") or ""), None
        deployments = info.get("deployments")
        for deployment in (deployments or {}).values() if isinstance(deployments, dict) else ():
            if isinstance(deployment, dict) and deployment.get("status") == DEPLOY_FAILED:
                # The app's own message only says which deployment failed; the deployment's has the cause.
                message = str(deployment.get("message") or message)
                dead = deployment.get("recent_dead_replicas")
                if isinstance(dead, list) and dead and isinstance(dead[-1], dict):
                    log_file = dead[-1].get("log_file_path") or None
                break
        failures.append(DeployFailure(app, message, log_file))
    return failures


@dataclass(frozen=True)
class ServeWait:
    answered: bool
    failure: DeployFailure | None = None


def wait_for_serve(
    dashboard: str,
    apps: Sequence[str],
    answered: Callable[[], bool],
    timeout: float,
    interval: float = 0.5,
    api: Dashboard = RAY_DASHBOARD,
) -> ServeWait:
    """Wait until ``answered()``; stop at the first status read that shows a deploy of ``apps`` failed."""
    failed: list[DeployFailure] = []

    def done() -> bool:
        if answered():
            return True
        failed.extend(deploy_failures(dashboard, apps, api))
        return bool(failed)

    ready = wait_until(done, timeout, interval=min(interval, STATUS_POLL_S))
    return ServeWait(ready and not failed, failed[0] if failed else None)


def save_failure_log(engine: Engine, containers: Sequence[str], failure: DeployFailure, path: Path) -> Path:
    """Keep Serve's whole message and the failed replica's log at ``path``: the containers are removed."""
    parts = [f"Serve could not deploy app {failure.app!r}. What Serve reported:\n\n{failure.message}\n"]
    if failure.log_file:
        source = f"{RAY_LOGS_DIR}/{failure.log_file.lstrip('/')}"
        for container in containers:
            result = engine.exec(container, ["tail", "-n", "500", source], timeout=EXEC_TIMEOUT_S)
            if result.returncode == 0:
                parts.append(
                    f"\n--- {source} on {container}, the failed replica's log ---\n{result.output}\n"
                )
                break
    atomic_write(path, "".join(parts))
    return path


def deploy_error(
    error: type[RaybuildError], app: App, failure: DeployFailure, log: Path | None
) -> RaybuildError:
    """One line naming the app's exception, and a hint saying where the whole story is."""
    where = f"the whole traceback and the replica's log are in {log}; " if log is not None else ""
    return error(
        f"app {app.name!r}: Serve could not deploy it: {failure.describe()}",
        hint=f"{where}fix the app under {app.path}, then `raybuild build {app.name}` and rerun",
    )
