"""`raybuild up` / `raybuild down`: the rendered RayService's topology, run locally in Docker.

On a private Docker network: a Redis GCS store (Debian's redis-server on the slim base, with a password),
a head started as KubeRay starts it with GCS fault tolerance (num-cpus 0, RAY_REDIS_ADDRESS, REDIS_PASSWORD,
RAY_external_storage_namespace), and one worker per app image carrying the same Ray node labels as the
rendered worker groups. The Serve config is the rendered serveConfigV2, deployed through the dashboard REST
API as KubeRay does. Only workers' Serve ports are published (like excludeHeadPodFromServeSvc), and only on
127.0.0.1. Everything carries raybuild's labels, so `down` removes it even after a failed `up`.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raybuild.config import App, LoadedConfig
from raybuild.engine import Engine
from raybuild.errors import ClusterError, EngineError, RaybuildError
from raybuild.fsutil import atomic_write
from raybuild.image import bases
from raybuild.loopback import free_port, http, wait_until
from raybuild.manifest import render as k8s
from raybuild.progress import Progress, silent
from raybuild.state import HEAD_KEY, image_references, load_publish_record
from raybuild.verify.smoke import (
    AGENT_PORT,
    DASHBOARD_PORT,
    GCS_PROBE,
    MANAGED_LABEL,
    RAYLET_PROBE,
    SERVE_PORT,
    nofile_limit,
    required_cpus,
)

CLUSTER_LABEL = "io.raybuild.cluster"
ROLE_LABEL = "io.raybuild.role"
GCS_PORT = 6379
# KubeRay sets this on workers when GCS fault tolerance is on: how long a raylet waits for the GCS to come
# back before it exits (Ray's default is 60 s). Ray reads its config from RAY_<name>, case and all.
RECONNECT_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
WORKER_RECONNECT_TIMEOUT_S = "600"


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # "gcs", "head" or "worker"
    image: str
    command: str
    env: dict[str, str]
    ip: str | None = None
    app: str | None = None
    publish: dict[int, int] = field(default_factory=dict)  # container port -> host port on 127.0.0.1


@dataclass(frozen=True)
class LocalCluster:
    """What `up` started: enough to restart any node exactly as it was, and to reach every route."""

    name: str
    network: str
    subnet: str
    nodes: list[Node]
    routes: dict[str, str]  # app -> route prefix

    def node(self, role: str, app: str | None = None) -> Node:
        for node in self.nodes:
            if node.role == role and (app is None or node.app == app):
                return node
        raise ClusterError(f"no {role} node{f' for app {app!r}' if app else ''} in cluster {self.name!r}")

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.node('head').publish[DASHBOARD_PORT]}"

    def urls(self) -> dict[str, list[str]]:
        """Each app's URLs through every worker's Serve port (any proxy routes to any app)."""
        workers = [n for n in self.nodes if n.role == "worker"]
        return {
            app: [f"http://127.0.0.1:{w.publish[SERVE_PORT]}{route}" for w in workers]
            for app, route in self.routes.items()
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LocalCluster:
        data = json.loads(text)
        nodes = [
            Node(**{**n, "publish": {int(k): v for k, v in n["publish"].items()}}) for n in data["nodes"]
        ]
        return cls(data["name"], data["network"], data["subnet"], nodes, data["routes"])


def state_path(config: LoadedConfig) -> Path:
    return config.root / ".raybuild" / "up.json"


def load_cluster(config: LoadedConfig) -> LocalCluster:
    path = state_path(config)
    if not path.is_file():
        raise ClusterError("no local cluster is running", hint="run `raybuild up` first")
    try:
        return LocalCluster.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"{path}: malformed ({exc})", hint="run `raybuild down`, then `raybuild up`"
        ) from exc


def cluster_name(config: LoadedConfig) -> str:
    name = config.config.cluster.name
    return name if name.startswith("raybuild") else f"raybuild-{name}"


def head_command(with_gcs: bool) -> str:
    # The same flags KubeRay derives from rayStartParams for the rendered head group.
    password = " --redis-password=$REDIS_PASSWORD" if with_gcs else ""
    return (
        f"ulimit -n 65536; ray start --head --block --dashboard-host=0.0.0.0 --num-cpus=0 "
        f"--dashboard-agent-listen-port={AGENT_PORT} --metrics-export-port=8080 "
        f"--disable-usage-stats{password}"
    )


def worker_command(head_ip: str, app: App) -> str:
    return (
        f"ulimit -n 65536; ray start --block --address={head_ip}:{GCS_PORT} --num-cpus={required_cpus(app)} "
        f"--dashboard-agent-listen-port={AGENT_PORT} --metrics-export-port=8080 --disable-usage-stats "
        f"--labels={k8s.LABEL_KEY}={app.name}"
    )


def plan(
    config: LoadedConfig,
    images: dict[str, str],
    redis_image: str,
    subnet: str,
    password: str,
    apps: tuple[App, ...],
) -> LocalCluster:
    """The nodes of the local cluster. Fixed IPs for the GCS store and head: workers reconnect to them."""
    name = cluster_name(config)
    prefix = subnet.rsplit(".", 1)[0]
    gcs_ip, head_ip = f"{prefix}.10", f"{prefix}.11"
    head_env = {
        "RAY_REDIS_ADDRESS": f"{gcs_ip}:{GCS_PORT}",
        "REDIS_PASSWORD": password,
        "RAY_external_storage_namespace": config.config.cluster.name,
    }
    nodes = [
        Node(f"{name}-gcs", "gcs", redis_image, "", {"REDIS_PASSWORD": password}, ip=gcs_ip),
        Node(
            f"{name}-head",
            "head",
            images["_head"],
            head_command(True),
            head_env,
            ip=head_ip,
            publish={DASHBOARD_PORT: 0},
        ),
    ]
    for app in apps:
        env = {RECONNECT_TIMEOUT_ENV: WORKER_RECONNECT_TIMEOUT_S}
        nodes.append(
            Node(
                f"{name}-worker-{app.name}",
                "worker",
                images[app.name],
                worker_command(head_ip, app),
                env,
                app=app.name,
                publish={SERVE_PORT: 0},
            )
        )
    return LocalCluster(name, name, subnet, nodes, {app.name: app.route_prefix for app in apps})


def run_node(engine: Engine, cluster: LocalCluster, node: Node) -> Node:
    """Start one node's container; returns the node with its published host ports filled in."""
    command = [
        "run",
        "-d",
        "--name",
        node.name,
        "--hostname",
        node.name,
        "--network",
        cluster.network,
        "--label",
        MANAGED_LABEL,
        "--label",
        f"{CLUSTER_LABEL}={cluster.name}",
        "--label",
        f"{ROLE_LABEL}={node.role}",
        "--ulimit",
        f"nofile={nofile_limit()}:{nofile_limit()}",
    ]
    if node.role != "gcs":
        # Kubernetes restarts a pod's container when it exits (restartPolicy Always); a head whose GCS lost
        # its store exits on purpose so that this restart brings it back.
        command += ["--shm-size=1g", "--restart", "on-failure"]
    if node.ip:
        command += ["--ip", node.ip]
    publish = {port: host_port or free_port() for port, host_port in node.publish.items()}
    for port, host_port in sorted(publish.items()):
        command += ["-p", f"127.0.0.1:{host_port}:{port}"]
    for key, value in sorted(node.env.items()):
        command += ["-e", f"{key}={value}"]
    command.append(node.image)
    if node.command:
        command += ["/bin/bash", "-c", "--", node.command]
    engine.docker_cmd(*command, what=f"docker run {node.name}")
    return Node(node.name, node.role, node.image, node.command, node.env, node.ip, node.app, publish)


def _create_network(engine: Engine, name: str) -> str:
    """A user-defined network with a subnet of its own (needed for fixed IPs); the first free /24 wins."""
    for third in range(213, 250):
        subnet = f"172.29.{third}.0/24"
        result = engine.docker_cmd(
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            subnet,
            "--ip-range",
            f"172.29.{third}.128/25",
            "--label",
            MANAGED_LABEL,
            "--label",
            f"{CLUSTER_LABEL}={name}",
            name,
            check=False,
        )
        if result.returncode == 0:
            return f"172.29.{third}.0"
        if "already exists" in result.output and "network with name" in result.output:
            raise ClusterError(f"network {name} already exists", hint="run `raybuild down` first")
    raise ClusterError("no free subnet for the cluster network in 172.29.213-249.0/24")


def node_healthy(engine: Engine, node: Node) -> bool:
    checks = [RAYLET_PROBE, GCS_PROBE] if node.role == "head" else [RAYLET_PROBE]
    return all(engine.exec(node.name, ["bash", "-c", c], timeout=10).returncode == 0 for c in checks)


def alive_nodes(cluster: LocalCluster) -> int:
    status, text = http("GET", f"{cluster.dashboard}/api/v0/nodes?limit=100")
    if status != 200:
        return 0
    try:
        return sum(1 for n in json.loads(text)["data"]["result"]["result"] if n.get("state") == "ALIVE")
    except (ValueError, KeyError, TypeError):
        return 0


def serve_body(config: LoadedConfig, apps: tuple[App, ...]) -> dict[str, Any]:
    """The rendered serveConfigV2 for these apps, plus a proxy host that the published port can reach."""
    body = k8s.serve_config(config)
    wanted = {app.name for app in apps}
    body["applications"] = [a for a in body["applications"] if a["name"] in wanted]
    body["http_options"] = {**body.get("http_options", {}), "host": "0.0.0.0", "port": SERVE_PORT}
    return body


def deploy(cluster: LocalCluster, body: dict[str, Any]) -> None:
    status, text = http("PUT", f"{cluster.dashboard}/api/serve/applications/", body, timeout=60)
    if status != 200:
        raise ClusterError(f"Serve deploy request returned {status}: {text[:300]}")


def all_routes_answer(cluster: LocalCluster) -> bool:
    return all(http("GET", url, timeout=5)[0] == 200 for urls in cluster.urls().values() for url in urls)


def serve_status(cluster: LocalCluster) -> dict[str, Any]:
    status, text = http("GET", f"{cluster.dashboard}/api/serve/applications/")
    if status != 200:
        return {}
    data: dict[str, Any] = json.loads(text).get("applications", {})
    return data


def local_images(config: LoadedConfig, apps: tuple[App, ...]) -> dict[str, str]:
    """Images as `raybuild render` references them, except that an image never built is an error here."""
    images = image_references(config, load_publish_record(config), apps)
    for image in images.images.values():
        if not image.recorded:
            raise ClusterError(
                f"no image for {'the head' if image.key == HEAD_KEY else repr(image.key)}",
                hint="run `raybuild build` (and `raybuild publish` to test the published digests)",
            )
    return images.refs()


def up(
    config: LoadedConfig,
    engine: Engine,
    apps: tuple[App, ...],
    timeout: float = 300.0,
    progress: Progress = silent,
) -> LocalCluster:
    cpu_apps = tuple(a for a in apps if a.device == "cpu")
    if not cpu_apps:
        raise ClusterError(
            "no CPU app selected",
            hint="`raybuild up` runs CPU apps; test GPU apps with `raybuild test --gpu`",
        )
    engine.ping()
    down(config, engine, progress=silent)
    images = local_images(config, cpu_apps)
    redis_image = bases.ensure_redis(config, engine, progress)
    name = cluster_name(config)
    try:
        subnet = _create_network(engine, name)
        cluster = plan(config, images, redis_image, subnet, secrets.token_hex(16), cpu_apps)
        started: list[Node] = []
        for node in cluster.nodes:
            progress(f"starting {node.role} {node.name} ({node.image})")
            started.append(run_node(engine, cluster, node))
            if node.role == "head":
                cluster = LocalCluster(
                    cluster.name,
                    cluster.network,
                    cluster.subnet,
                    started + cluster.nodes[len(started) :],
                    cluster.routes,
                )
                if not wait_until(lambda: node_healthy(engine, started[-1]), timeout):
                    raise ClusterError(f"head never became healthy: {engine.logs(node.name, 5)!r}")
        cluster = LocalCluster(cluster.name, cluster.network, cluster.subnet, started, cluster.routes)
        atomic_write(state_path(config), cluster.to_json())
        state_path(config).chmod(0o600)  # it holds the local store's password
        progress("waiting for every worker to join the head")
        if not wait_until(lambda: alive_nodes(cluster) >= len(started) - 1, timeout, interval=1.0):
            raise ClusterError(f"only {alive_nodes(cluster)} of {len(started) - 1} Ray nodes joined")
        progress("deploying serveConfigV2 through the dashboard")
        deploy(cluster, serve_body(config, cpu_apps))
        if not wait_until(lambda: all_routes_answer(cluster), timeout, interval=1.0):
            raise ClusterError(
                f"not every app answered within {timeout:.0f}s: "
                f"{ {k: v.get('status') for k, v in serve_status(cluster).items()} }"
            )
        return cluster
    except (RaybuildError, KeyboardInterrupt):
        # Leave nothing behind but what helps to diagnose: the containers' logs were already read.
        down(config, engine, progress=silent)
        raise


def down(config: LoadedConfig, engine: Engine, progress: Progress = silent) -> int:
    """Remove every container and network with this cluster's label; returns how many were removed."""
    label = f"{CLUSTER_LABEL}={cluster_name(config)}"
    removed = 0
    for container in engine.containers_with_label(label):
        engine.remove_container(container)
        removed += 1
    networks = engine.docker_cmd(
        "network", "ls", "-q", "--filter", f"label={label}", check=False
    ).output.split()
    for network in networks:
        try:
            engine.docker_cmd("network", "rm", network, what="docker network rm")
        except EngineError:
            time.sleep(1)
            engine.docker_cmd("network", "rm", network, check=False)
        removed += 1
    state_path(config).unlink(missing_ok=True)
    if removed:
        progress(f"removed {removed} containers and networks of {cluster_name(config)}")
    return removed
