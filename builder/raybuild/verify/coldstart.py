"""Cold-start timings for `raybuild measure`: a warm node (head, worker, Serve) and a cold node (pull, head).

The warm node is this host's Docker engine. Containers are made with testcontainers and started the way
KubeRay starts them (its head and worker command lines, `ulimit -n 65536`, Serve config through the
dashboard REST API), with ports published on 127.0.0.1 only.

The cold node is a second dockerd with its own image store under /var/lib/raybuild/cold: an empty store
is the only honest cold pull, since the main engine (and BuildKit's cache) keeps every layer it has built.
Its head runs with `--network none` and is probed with KubeRay's exec probes, as nothing can be published.

Every container and network carries ``io.raybuild.managed=true`` and ``io.raybuild.purpose=measure``; each
is removed in a ``finally``, and `sweep()` removes leftovers of an interrupted run by label.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raybuild.config import App
from raybuild.engine import Engine, which
from raybuild.errors import EngineError, SmokeTestError
from raybuild.loopback import http, wait_until
from raybuild.progress import Progress, silent
from raybuild.verify.smoke import (
    AGENT_PORT,
    DASHBOARD_PORT,
    GCS_PROBE,
    RAYLET_PROBE,
    SERVE_PORT,
    kuberay_head_command,
    nofile_limit,
    required_cpus,
    serve_application,
)

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer


LABELS = {"io.raybuild.managed": "true", "io.raybuild.purpose": "measure"}
PURPOSE_LABEL = "io.raybuild.purpose=measure"
GCS_PORT = 6379
COLD_ROOT = Path("/var/lib/raybuild/cold")
# `dockerd --bridge=none` deletes the host's `docker0` at startup (it shares the host network namespace),
# which breaks every container of the main engine on the default bridge. The cold daemon gets a bridge of
# its own instead, on a documentation-only range (RFC 5737 TEST-NET-2) that no Docker pool hands out. No
# container ever joins it: cold-node heads run with --network none.
COLD_BRIDGE = "rbcold0"
COLD_BRIDGE_CIDR = "198.51.100.1/30"
PROBE_TIMEOUT_S = 2


def healthz_ok(status: int, body: str) -> bool:
    """Ray 2.60's agent `/api/healthz`: HTTP 200 with `raylet: success` and `gcs: success` lines."""
    checks = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
    return status == 200 and all(checks.get(name, "").startswith("success") for name in ("raylet", "gcs"))


def alive_nodes(status: int, body: str) -> int:
    """ALIVE nodes in a dashboard state API answer (GET /api/v0/nodes); 0 when it did not answer."""
    if status != 200:
        return 0
    try:
        nodes = json.loads(body)["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        return 0
    return sum(1 for node in nodes if isinstance(node, dict) and node.get("state") == "ALIVE")


def kubelet_probe(engine: Engine, container: str) -> bool:
    """KubeRay's two exec probes, each bounded the way kubelet bounds an exec probe (timeoutSeconds).

    Unbounded, a probe sent before the port listens does not fail: under `--network none` wget's connect
    to localhost's ::1 fails with "Cannot assign requested address", which wget retries 20 times with a
    growing back-off, so the head would look ready seconds after it is.
    """
    return all(
        engine.exec(container, ["timeout", str(PROBE_TIMEOUT_S), "bash", "-c", probe], timeout=10).returncode
        == 0
        for probe in (RAYLET_PROBE, GCS_PROBE)
    )


def kuberay_worker_command(head: str, num_cpus: int = 1) -> str:
    """A worker container's command, as KubeRay generates it for a worker group."""
    return (
        f"ulimit -n 65536; ray start --address={head}:{GCS_PORT} --block "
        f"--dashboard-agent-listen-port={AGENT_PORT} --metrics-export-port=8080 --num-cpus={num_cpus}"
    )


def sweep(engine: Engine) -> int:
    """Remove every container and network a measure run left behind; the number of containers removed."""
    containers = engine.containers_with_label(PURPOSE_LABEL)
    for container in containers:
        engine.remove_container(container)
    networks = engine.docker_cmd("network", "ls", "-q", "--filter", f"label={PURPOSE_LABEL}", check=False)
    for network in networks.output.split():
        engine.docker_cmd("network", "rm", network, check=False)
    return len(containers)


def _disable_ryuk() -> None:
    # Ryuk's reaper image cannot be pulled here, and raybuild cleans up by label itself.
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    from testcontainers.core.config import testcontainers_config

    testcontainers_config.ryuk_disabled = True


@dataclass(frozen=True)
class WarmStart:
    t_head: float
    t_worker: float
    t_serve: float


@dataclass
class _Node:
    container: DockerContainer
    name: str


def _container(
    image: str, command: str, *, network: Any, alias: str, ports: tuple[int, ...] = (), gpu: bool = False
) -> _Node:
    from testcontainers.core.container import DockerContainer

    name = f"raybuild-measure-{alias}-{uuid.uuid4().hex[:8]}"
    limit = nofile_limit()
    kwargs: dict[str, Any] = {
        "labels": dict(LABELS),
        "ulimits": [{"name": "nofile", "soft": limit, "hard": limit}],
        "shm_size": "1g",
    }
    if gpu:
        kwargs["device_requests"] = [{"count": -1, "capabilities": [["gpu"]]}]
    container = (
        DockerContainer(image, name=name, network=network, network_aliases=[alias])
        .with_command(["/bin/bash", "-c", "--", command])
        .with_kwargs(**kwargs)
    )
    bindings: dict[str, Any] = container.ports
    for port in ports:
        bindings[f"{port}/tcp"] = ("127.0.0.1", None)  # a free port, on loopback only
    return _Node(container, name)


def _start(node: _Node, image: str) -> None:
    try:
        node.container.start()
    except Exception as exc:  # docker-py's errors: one RaybuildError, not a traceback
        raise EngineError(
            f"starting {node.name} ({image}) failed: {exc}", hint="check `docker info`"
        ) from exc


def _host_port(node: _Node, port: int) -> int:
    container = node.container
    return int(container.get_docker_client().port(container.get_container_id(), port))


def _logs(engine: Engine, node: _Node | None) -> str:
    return engine.logs(node.name, 8).strip()[-600:] if node else ""


def warm_start(
    engine: Engine,
    app: App,
    image: str,
    *,
    cpu_mode: bool,
    gpu: bool = False,
    timeout: float = 180.0,
    progress: Progress = silent,
) -> WarmStart:
    """One head, one worker and the app's Serve deployment on this host's engine, timed phase by phase.

    t_head runs from container create until the agent's /api/healthz reports raylet and GCS healthy;
    t_worker from the worker's create until the head's state API lists two ALIVE nodes; t_serve from the
    Serve config's PUT until the app's route answers HTTP 200 on the published Serve port.
    """
    _disable_ryuk()
    from testcontainers.core.network import Network

    network = Network(docker_network_kw={"labels": dict(LABELS)})
    network.create()
    head = _container(
        image,
        kuberay_head_command(required_cpus(app)),
        network=network,
        alias="head",
        ports=(AGENT_PORT, DASHBOARD_PORT, SERVE_PORT),
        gpu=gpu,
    )
    worker: _Node | None = None
    try:
        started = time.monotonic()
        _start(head, image)
        agent, dashboard, serve = (_host_port(head, p) for p in (AGENT_PORT, DASHBOARD_PORT, SERVE_PORT))
        healthz = f"http://127.0.0.1:{agent}/api/healthz"
        if not wait_until(lambda: healthz_ok(*http("GET", healthz, timeout=2)), timeout):
            raise SmokeTestError(
                f"app {app.name!r}: head not healthy within {timeout:.0f}s: {_logs(engine, head)}"
            )
        t_head = time.monotonic() - started
        # Not timed: KubeRay sends the Serve config only once the dashboard answers (its GCS probe).
        gcs = f"http://127.0.0.1:{dashboard}/api/gcs_healthz"
        if not wait_until(lambda: http("GET", gcs, timeout=2)[0] == 200, timeout):
            raise SmokeTestError(f"app {app.name!r}: dashboard never answered: {_logs(engine, head)}")

        progress(f"{app.name}: head healthy in {t_head:.1f}s; starting a worker")
        worker = _container(image, kuberay_worker_command("head"), network=network, alias="worker", gpu=gpu)
        started = time.monotonic()
        _start(worker, image)
        nodes = f"http://127.0.0.1:{dashboard}/api/v0/nodes"
        if not wait_until(lambda: alive_nodes(*http("GET", nodes, timeout=5)) >= 2, timeout, interval=0.5):
            raise SmokeTestError(f"app {app.name!r}: worker never joined: {_logs(engine, worker)}")
        t_worker = time.monotonic() - started

        progress(f"{app.name}: worker joined in {t_worker:.1f}s; deploying Serve")
        body = {
            "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
            "applications": [serve_application(app, cpu_mode=cpu_mode)],
        }
        route = f"http://127.0.0.1:{serve}{app.route_prefix.rstrip('/')}/"
        started = time.monotonic()
        status, text = http("PUT", f"http://127.0.0.1:{dashboard}/api/serve/applications/", body, timeout=60)
        if status != 200:
            raise SmokeTestError(f"app {app.name!r}: Serve deploy request returned {status}: {text[:200]}")
        if not wait_until(lambda: http("GET", route, timeout=5)[0] == 200, timeout, interval=0.25):
            _, state = http("GET", f"http://127.0.0.1:{dashboard}/api/serve/applications/")
            raise SmokeTestError(
                f"app {app.name!r}: no HTTP 200 on {route} within {timeout:.0f}s: {state[:300]}"
            )
        return WarmStart(t_head, t_worker, time.monotonic() - started)
    finally:
        for node in (worker, head):
            if node is not None:
                with contextlib.suppress(Exception):
                    node.container.stop()
                engine.remove_container(node.name)
        with contextlib.suppress(Exception):
            network.remove()
        engine.docker_cmd("network", "rm", network.name, check=False)


@dataclass
class ColdNode:
    """A second dockerd with an empty image store: a node that has never pulled the image."""

    engine: Engine
    root: Path = COLD_ROOT
    progress: Progress = field(default=silent)
    _node_engine: Engine | None = field(default=None, init=False, repr=False)

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def pidfile(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def node(self) -> Engine:
        """The Engine that talks to the cold daemon (same docker client, DOCKER_HOST pointing at it)."""
        if self._node_engine is None:
            self._node_engine = Engine(
                client=self.engine.docker,
                debug=self.engine.debug,
                echo=self.engine.echo,
                env={**self.engine.env, "DOCKER_HOST": self.host},
            )
        return self._node_engine

    def running(self) -> bool:
        if not (self.root / "docker.sock").exists():
            return False
        result = self.node.docker_cmd("info", "--format", "{{.ServerVersion}}", check=False, timeout=10)
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        """Start the cold daemon unless it runs already (it is left running for the next measure)."""
        if self.running():
            return
        dockerd = which("dockerd")
        if dockerd is None:
            raise EngineError(
                "dockerd not found: the cold node needs a second Docker daemon",
                hint="install docker.io (scripts/setup), or pass --no-pull",
            )
        self.progress(f"starting the cold node's dockerd ({self.host})")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "daemon.json"
        config.write_text("{}\n", encoding="utf-8")  # not /etc/docker/daemon.json: no shared hosts or bridge
        self._ensure_bridge()
        command = [
            dockerd,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.pidfile),
            "--host",
            self.host,
            "--config-file",
            str(config),
            f"--bridge={COLD_BRIDGE}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
        ]
        log = shlex.quote(str(self.root / "dockerd.log"))
        # Detached from raybuild (setsid, own output file) so that it outlives this command.
        self.engine.run(
            ["sh", "-c", f"setsid {shlex.join(command)} >{log} 2>&1 </dev/null &"],
            what="start the cold node's dockerd",
        )
        if not wait_until(self.running, timeout, interval=0.5):
            raise EngineError(
                f"the cold node's dockerd did not come up within {timeout:.0f}s",
                output_tail=_tail(self.root / "dockerd.log"),
                hint=f"see {self.root / 'dockerd.log'}; it must run as root",
            )

    def _ensure_bridge(self) -> None:
        shown = self.engine.run(["ip", "-o", "-4", "addr", "show", "dev", COLD_BRIDGE], check=False)
        if COLD_BRIDGE_CIDR in shown.output:
            return
        if shown.returncode != 0:
            self.engine.run(["ip", "link", "add", "name", COLD_BRIDGE, "type", "bridge"], what="ip link add")
        self.engine.run(["ip", "addr", "flush", "dev", COLD_BRIDGE], what="ip addr flush")
        self.engine.run(["ip", "addr", "add", COLD_BRIDGE_CIDR, "dev", COLD_BRIDGE], what="ip addr add")
        self.engine.run(["ip", "link", "set", COLD_BRIDGE, "up"], what="ip link set up")
        # The daemon keeps its default bridge's subnet in its network store; a new address needs a new store.
        shutil.rmtree(self.root / "data" / "network", ignore_errors=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the cold daemon and remove its bridge (its image store stays on disk)."""
        if self.pidfile.is_file():
            pid = self.pidfile.read_text(encoding="utf-8").strip()
            self.engine.run(["kill", pid], check=False)
            wait_until(lambda: not self.pidfile.exists(), timeout, interval=0.5)
        self.engine.run(["ip", "link", "delete", COLD_BRIDGE], check=False)

    def clear(self) -> None:
        """Remove every container and image on the cold node: the next pull starts from nothing."""
        sweep(self.node)
        images = self.node.docker_cmd("image", "ls", "-aq", "--no-trunc", check=False).output.split()
        if images:
            self.node.docker_cmd("image", "rm", "--force", *dict.fromkeys(images), check=False)

    def pull(self, ref: str) -> float:
        started = time.monotonic()
        self.node.docker_cmd("pull", "--quiet", ref, what=f"docker pull {ref} on the cold node")
        return time.monotonic() - started

    def head(self, app: App, ref: str, *, gpu: bool = False, timeout: float = 180.0) -> float:
        """Seconds from `docker run` until KubeRay's exec probes pass, on the cold node."""
        name = f"raybuild-measure-cold-{uuid.uuid4().hex[:8]}"
        limit = nofile_limit()
        command = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            f"nofile={limit}:{limit}",
            "--shm-size=1g",
        ]
        for key, value in LABELS.items():
            command += ["--label", f"{key}={value}"]
        if gpu:
            command += ["--gpus", "all"]
        command += [ref, "/bin/bash", "-c", "--", kuberay_head_command(required_cpus(app))]
        try:
            started = time.monotonic()
            self.node.docker_cmd(*command, what=f"docker run {ref} on the cold node")
            if not wait_until(lambda: kubelet_probe(self.node, name), timeout):
                raise SmokeTestError(
                    f"app {app.name!r}: cold-node head never passed KubeRay's probes within "
                    f"{timeout:.0f}s: {self.node.logs(name, 8).strip()[-600:]}"
                )
            return time.monotonic() - started
        finally:
            self.node.remove_container(name)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
