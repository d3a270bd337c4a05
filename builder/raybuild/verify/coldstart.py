"""Cold-start timings for `raybuild measure`: a warm node (head, worker, Serve) and a cold node (pull, head).

The warm node is this host's Docker engine. Its head and worker are started the way KubeRay starts them
(`kuberay`: their command lines, `ulimit -n 65536`, Serve config through the dashboard REST API) on a
network of their own, with ports published on 127.0.0.1 only.

The cold node is a second dockerd with its own image store under /var/lib/raybuild/cold: an empty store
is the only honest cold pull, since the main engine (and BuildKit's cache) keeps every layer it has built.
Its head runs with `--network none` and is probed with KubeRay's exec probes, as nothing can be published.

Every container and network carries raybuild's labels with the project's id and the purpose "measure"
(`measure_labels`); each is removed in a ``finally`` (which Ctrl-C and SIGTERM unwind too), and `sweep()`
removes what an earlier run of this project left behind, by those labels only: another checkout measuring
on the same daemon keeps its containers.
"""

from __future__ import annotations

import shlex
import shutil
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from raybuild import kuberay
from raybuild.config_apps import App
from raybuild.dashboard import RAY_DASHBOARD, Dashboard
from raybuild.engine import Engine, which
from raybuild.errors import EngineError, SmokeTestError
from raybuild.kuberay import (
    AGENT_HEALTH_PATH,
    AGENT_PORT,
    DASHBOARD_PORT,
    GCS_HEALTH_PATH,
    SERVE_PORT,
    NodeSpec,
    healthz_ok,
    required_cpus,
)
from raybuild.labels import object_labels, parse_ids
from raybuild.loopback import http, wait_until
from raybuild.progress import Progress, silent
from raybuild.verify.smoke import serve_application

COLD_ROOT = Path("/var/lib/raybuild/cold")
# `dockerd --bridge=none` deletes the host's `docker0` at startup (it shares the host network namespace),
# which breaks every container of the main engine on the default bridge. The cold daemon gets a bridge of
# its own instead, on a documentation-only range (RFC 5737 TEST-NET-2) that no Docker pool hands out. No
# container ever joins it: cold-node heads run with --network none.
COLD_BRIDGE = "rbcold0"
COLD_BRIDGE_CIDR = "198.51.100.1/30"


def measure_labels(project: str) -> dict[str, str]:
    """The labels of every container and network a measure run of ``project`` makes."""
    return object_labels(project, "measure")


def sweep(engine: Engine, project: str) -> int:
    """Remove every container and network a measure run of ``project`` left behind; how many went."""
    return engine.remove_labelled(measure_labels(project))


@dataclass(frozen=True)
class WarmStart:
    t_head: float
    t_worker: float
    t_serve: float


def warm_nodes(
    app: App, image: str, network: str, project: str, *, gpu: bool = False
) -> tuple[NodeSpec, NodeSpec]:
    """The warm node's head (agent, dashboard and Serve published) and one worker, on ``network``."""
    gpus: int | Literal["all"] = "all" if gpu else 0
    head = NodeSpec(
        name=f"{network}-head",
        image=image,
        command=kuberay.head_command(required_cpus(app)),
        labels=measure_labels(project),
        publish={AGENT_PORT: 0, DASHBOARD_PORT: 0, SERVE_PORT: 0},
        network=network,
        gpus=gpus,
    )
    # Docker's DNS on a user-defined network resolves the head's container name, like KubeRay's head Service.
    worker = NodeSpec(
        name=f"{network}-worker",
        image=image,
        command=kuberay.worker_command(head.name, 1),
        labels=measure_labels(project),
        network=network,
        gpus=gpus,
    )
    return head, worker


def _logs(engine: Engine, node: NodeSpec) -> str:
    return engine.logs(node.name, 8).strip()[-600:]


def warm_start(
    engine: Engine,
    app: App,
    image: str,
    *,
    project: str,
    cpu_mode: bool,
    gpu: bool = False,
    timeout: float = 180.0,
    progress: Progress = silent,
    log_path: Path | None = None,
    dashboard_api: Dashboard = RAY_DASHBOARD,
) -> WarmStart:
    """One head, one worker and the app's Serve deployment on this host's engine, timed phase by phase.

    t_head runs from container create until the agent's /api/healthz reports raylet and GCS healthy;
    t_worker from the worker's create until the head's state API lists two ALIVE nodes; t_serve from the
    Serve config's PUT until the app's route answers HTTP 200 on the published Serve port.
    """
    network = f"raybuild-measure-{uuid.uuid4().hex[:8]}"
    head, worker = warm_nodes(app, image, network, project, gpu=gpu)
    with ExitStack() as cleanup:  # containers first, then their network, whatever happens
        # Registered before it is made: an interruption during `network create` still removes it.
        cleanup.callback(engine.remove_network, network)
        engine.create_network(network, measure_labels(project))
        started = time.monotonic()
        cleanup.enter_context(kuberay.running(engine, head))
        agent, dashboard, serve = (
            f"http://127.0.0.1:{engine.published_port(head.name, port)}"
            for port in (AGENT_PORT, DASHBOARD_PORT, SERVE_PORT)
        )
        if not wait_until(lambda: healthz_ok(*http("GET", agent + AGENT_HEALTH_PATH, timeout=2)), timeout):
            raise SmokeTestError(
                f"app {app.name!r}: head not healthy within {timeout:.0f}s: {_logs(engine, head)}"
            )
        t_head = time.monotonic() - started
        # Not timed: KubeRay sends the Serve config only once the dashboard answers (its GCS probe).
        if not wait_until(lambda: http("GET", dashboard + GCS_HEALTH_PATH, timeout=2)[0] == 200, timeout):
            raise SmokeTestError(f"app {app.name!r}: dashboard never answered: {_logs(engine, head)}")

        progress(f"{app.name}: head healthy in {t_head:.1f}s; starting a worker")
        started = time.monotonic()
        cleanup.enter_context(kuberay.running(engine, worker))
        if not wait_until(lambda: kuberay.alive_nodes(dashboard, dashboard_api) >= 2, timeout, interval=0.5):
            raise SmokeTestError(f"app {app.name!r}: worker never joined: {_logs(engine, worker)}")
        t_worker = time.monotonic() - started

        progress(f"{app.name}: worker joined in {t_worker:.1f}s; deploying Serve")
        body = {
            "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
            "applications": [serve_application(app, cpu_mode=cpu_mode)],
        }
        route = f"{serve}{app.route_prefix.rstrip('/')}/"
        started = time.monotonic()
        kuberay.deploy(dashboard, body, SmokeTestError, f"app {app.name!r}: ", api=dashboard_api)
        outcome = kuberay.wait_for_serve(
            dashboard,
            [app.name],
            lambda: http("GET", route, timeout=5)[0] == 200,
            timeout,
            interval=0.25,
            api=dashboard_api,
        )
        if outcome.failure is not None:
            nodes = [head.name, worker.name]
            log = log_path and kuberay.save_failure_log(engine, nodes, outcome.failure, log_path)
            raise kuberay.deploy_error(SmokeTestError, app, outcome.failure, log)
        if not outcome.answered:
            raise SmokeTestError(
                f"app {app.name!r}: no HTTP 200 on {route} within {timeout:.0f}s: "
                f"{kuberay.app_status(dashboard, app.name, dashboard_api)}"
            )
        t_serve = time.monotonic() - started
    return WarmStart(t_head, t_worker, t_serve)


@dataclass
class ColdNode:
    """A second dockerd with an empty image store: a node that has never pulled the image."""

    engine: Engine
    project: str
    root: Path = COLD_ROOT
    progress: Progress = field(default=silent)
    # A second cold node (tests, benchmarks/reproducible.py) needs a bridge and range of its own.
    bridge: str = COLD_BRIDGE
    bridge_cidr: str = COLD_BRIDGE_CIDR
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
        try:
            self.node.info("ServerVersion", timeout=10)
        except EngineError:
            return False
        return True

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
        # Not /etc/docker/daemon.json: no shared hosts or bridge. One download attempt: a pull's retries are
        # measure's to decide, within its deadline, never stacked under dockerd's own five.
        config.write_text('{"max-download-attempts": 1}\n', encoding="utf-8")
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
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
        ]
        log = shlex.quote(str(self.root / "dockerd.log"))
        # Detached from raybuild (setsid, own output file) so that it outlives this command.
        self.engine.runner.run(
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
        shown = self.engine.runner.run(["ip", "-o", "-4", "addr", "show", "dev", self.bridge], check=False)
        if self.bridge_cidr in shown.output:
            return
        if shown.returncode != 0:
            self.engine.runner.run(
                ["ip", "link", "add", "name", self.bridge, "type", "bridge"], what="ip link add"
            )
        self.engine.runner.run(["ip", "addr", "flush", "dev", self.bridge], what="ip addr flush")
        self.engine.runner.run(
            ["ip", "addr", "add", self.bridge_cidr, "dev", self.bridge], what="ip addr add"
        )
        self.engine.runner.run(["ip", "link", "set", self.bridge, "up"], what="ip link set up")
        # The daemon keeps its default bridge's subnet in its network store; a new address needs a new store.
        shutil.rmtree(self.root / "data" / "network", ignore_errors=True)

    def stop(self, timeout: float = 60.0, remove: bool = False) -> None:
        """Stop the cold daemon (SIGTERM to its pidfile's pid); ``remove`` then deletes its image store."""
        pid = self.pidfile.read_text().strip() if self.pidfile.is_file() else ""
        if pid.isdigit():
            self.engine.runner.run(["kill", "-TERM", pid], check=False)
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout, interval=0.5)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
            self.engine.runner.run(["ip", "link", "del", self.bridge], check=False)

    def clear(self) -> None:
        """Remove this project's containers and every image on the cold node: the next pull starts from
        nothing. The cold daemon is raybuild's own (no one else's images live there); images another
        project's running head still uses cannot be removed, and stay."""
        sweep(self.node, self.project)
        listed = self.node.image_ids(what="docker image ls on the cold node")
        images = [word.removeprefix("sha256:") for word in listed]
        if images:
            self.node.remove_images(parse_ids("\n".join(images), "docker image ls"))

    def pull(self, ref: str, deadline: float | None = None) -> float:
        """Seconds to pull ``ref`` into the cold node's store; an error past ``deadline`` seconds."""
        started = time.monotonic()
        self.node.pull(ref, timeout=deadline, what=f"docker pull {ref} on the cold node")
        return time.monotonic() - started

    def head(self, app: App, ref: str, *, gpu: bool = False, timeout: float = 180.0) -> float:
        """Seconds from `docker run` until KubeRay's exec probes pass, on the cold node."""
        spec = NodeSpec(
            name=f"raybuild-measure-cold-{uuid.uuid4().hex[:8]}",
            image=ref,
            command=kuberay.head_command(required_cpus(app)),
            labels=measure_labels(self.project),
            network="none",
            gpus="all" if gpu else 0,
        )
        started = time.monotonic()
        with kuberay.running(self.node, spec):
            if not wait_until(lambda: kuberay.probe(self.node, spec.name), timeout):
                raise SmokeTestError(
                    f"app {app.name!r}: cold-node head never passed KubeRay's probes within "
                    f"{timeout:.0f}s: {_logs(self.node, spec)}"
                )
            return time.monotonic() - started


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
