"""`raybuild up` / `raybuild down`: the rendered RayService's topology, run locally in Docker.

On a private Docker network: a Redis GCS store (Debian's redis-server on the slim base, with a password),
a head started as KubeRay starts it with GCS fault tolerance (num-cpus 0, RAY_REDIS_ADDRESS, REDIS_PASSWORD,
RAY_external_storage_namespace), and one worker per app image carrying the same Ray node labels as the
rendered worker groups. The Serve config is the rendered serveConfigV2, deployed through the dashboard REST
API as KubeRay does. Only workers' Serve ports are published (like excludeHeadPodFromServeSvc), and only on
127.0.0.1. Everything carries raybuild's labels with this project's id, so `down` removes it even after a
failed or interrupted `up`, and never another checkout's cluster of the same name: container and network
names carry the project id too, so two checkouts can even run their clusters side by side.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from raybuild import kuberay
from raybuild.config import App, LoadedConfig
from raybuild.engine import Engine
from raybuild.errors import ClusterError, RaybuildError
from raybuild.fsutil import atomic_write
from raybuild.image import bases
from raybuild.kuberay import (
    DASHBOARD_PORT,
    GCS_PORT,
    LABEL_KEY,
    RECONNECT_TIMEOUT_ENV,
    REDIS_PASSWORD_ENV,
    SERVE_PORT,
    WORKER_RECONNECT_TIMEOUT_S,
    NodeSpec,
    required_cpus,
)
from raybuild.labels import object_labels
from raybuild.loopback import free_port, http, wait_until
from raybuild.manifest import render as k8s
from raybuild.progress import Progress, silent
from raybuild.state import (
    HEAD_KEY,
    cluster_record_path,
    failure_log_path,
    image_references,
    load_publish_record,
    project_id,
)


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


def load_cluster(config: LoadedConfig) -> LocalCluster:
    path = cluster_record_path(config)
    if not path.is_file():
        raise ClusterError("no local cluster is running", hint="run `raybuild up` first")
    try:
        return LocalCluster.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        why = f"no {exc} key" if isinstance(exc, KeyError) else str(exc)
        raise ClusterError(
            f"{path}: malformed ({why})", hint="run `raybuild down`, then `raybuild up`"
        ) from exc


def cluster_name(config: LoadedConfig) -> str:
    name = config.config.cluster.name
    return name if name.startswith("raybuild") else f"raybuild-{name}"


def object_prefix(config: LoadedConfig) -> str:
    """The start of every container and network name of this checkout's cluster (Docker names are global)."""
    return f"{cluster_name(config)}-{project_id(config)[:8]}"


def cluster_labels(config: LoadedConfig) -> dict[str, str]:
    """What selects this checkout's cluster, whatever its name was when it was started."""
    return object_labels(project_id(config), "cluster")


def plan(
    config: LoadedConfig,
    images: dict[str, str],
    redis_image: str,
    subnet: str,
    password: str,
    apps: tuple[App, ...],
) -> LocalCluster:
    """The nodes of the local cluster. Fixed IPs for the GCS store and head: workers reconnect to them."""
    name, network = cluster_name(config), object_prefix(config)
    prefix = subnet.rsplit(".", 1)[0]
    gcs_ip, head_ip = f"{prefix}.10", f"{prefix}.11"
    # The head schedules nothing (num-cpus 0, like the rendered head group) and keeps its state in the store.
    head_command = kuberay.head_command(0, gcs_fault_tolerance=True, usage_stats=False)
    head_env = kuberay.gcs_head_env(f"{gcs_ip}:{GCS_PORT}", password, config.config.cluster.name)
    nodes = [
        Node(f"{network}-gcs", "gcs", redis_image, "", {REDIS_PASSWORD_ENV: password}, ip=gcs_ip),
        Node(
            f"{network}-head",
            "head",
            images[HEAD_KEY],
            head_command,
            head_env,
            ip=head_ip,
            publish={DASHBOARD_PORT: 0},
        ),
    ]
    for app in apps:
        env = {RECONNECT_TIMEOUT_ENV: WORKER_RECONNECT_TIMEOUT_S}
        nodes.append(
            Node(
                f"{network}-worker-{app.name}",
                "worker",
                images[app.name],
                kuberay.worker_command(
                    head_ip, required_cpus(app), labels={LABEL_KEY: app.name}, usage_stats=False
                ),
                env,
                app=app.name,
                publish={SERVE_PORT: 0},
            )
        )
    return LocalCluster(name, network, subnet, nodes, {app.name: app.route_prefix for app in apps})


def node_spec(project: str, cluster: LocalCluster, node: Node) -> NodeSpec:
    """The container of one node: on the cluster's network, under its own name, with its fixed IP."""
    ray_node = node.role != "gcs"
    return NodeSpec(
        name=node.name,
        image=node.image,
        command=node.command,
        labels=object_labels(project, "cluster", cluster=cluster.name, role=node.role),
        env=node.env,
        publish=node.publish,
        network=cluster.network,
        ip=node.ip,
        hostname=node.name,
        shm_size="1g" if ray_node else None,
        # Kubernetes restarts a pod's container when it exits (restartPolicy Always); a head whose GCS lost
        # its store exits on purpose so that this restart brings it back.
        restart="on-failure" if ray_node else None,
    )


def run_node(engine: Engine, project: str, cluster: LocalCluster, node: Node) -> Node:
    """Start one node's container; returns the node with its published host ports filled in."""
    publish = {port: host_port or free_port() for port, host_port in node.publish.items()}
    started = replace(node, publish=publish)
    kuberay.start(engine, node_spec(project, cluster, started))
    return started


def remove_node(engine: Engine, project: str, cluster: LocalCluster, node: Node) -> None:
    """Kill and remove one node's container, found by its name and this project's labels."""
    engine.remove_containers(node_spec(project, cluster, node).labels, name=node.name)


def _create_network(engine: Engine, config: LoadedConfig) -> str:
    """A user-defined network with a subnet of its own (needed for fixed IPs); the first free /24 wins."""
    name = object_prefix(config)
    for third in range(213, 250):
        subnet = f"172.29.{third}.0/24"
        result = engine.create_network(
            name,
            object_labels(project_id(config), "cluster", cluster=cluster_name(config)),
            subnet=subnet,
            ip_range=f"172.29.{third}.128/25",
            check=False,
        )
        if result.returncode == 0:
            return f"172.29.{third}.0"
        if "already exists" in result.output and "network with name" in result.output:
            raise ClusterError(f"network {name} already exists", hint="run `raybuild down` first")
    raise ClusterError("no free subnet for the cluster network in 172.29.213-249.0/24")


def serve_body(config: LoadedConfig, apps: tuple[App, ...]) -> dict[str, Any]:
    """The rendered serveConfigV2 for these apps, plus a proxy host that the published port can reach."""
    body = k8s.serve_config(config)
    wanted = {app.name for app in apps}
    body["applications"] = [a for a in body["applications"] if a["name"] in wanted]
    body["http_options"] = {**body.get("http_options", {}), "host": "0.0.0.0", "port": SERVE_PORT}
    return body


def all_routes_answer(cluster: LocalCluster) -> bool:
    return all(http("GET", url, timeout=5)[0] == 200 for urls in cluster.urls().values() for url in urls)


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
    for warning in image_references(config, load_publish_record(config), cpu_apps).warnings:
        progress(f"warning: {warning}")
    redis_image = bases.ensure_redis(config, engine, progress)
    project = project_id(config)
    try:
        subnet = _create_network(engine, config)
        cluster = plan(config, images, redis_image, subnet, secrets.token_hex(16), cpu_apps)
        started: list[Node] = []
        for node in cluster.nodes:
            progress(f"starting {node.role} {node.name} ({node.image})")
            started.append(run_node(engine, project, cluster, node))
            if node.role == "head":
                cluster = LocalCluster(
                    cluster.name,
                    cluster.network,
                    cluster.subnet,
                    started + cluster.nodes[len(started) :],
                    cluster.routes,
                )
                if not wait_until(partial(kuberay.probe, engine, node.name, "head"), timeout):
                    raise ClusterError(f"head never became healthy: {engine.logs(node.name, 5)!r}")
        cluster = LocalCluster(cluster.name, cluster.network, cluster.subnet, started, cluster.routes)
        atomic_write(cluster_record_path(config), cluster.to_json(), mode=0o600)  # it holds the password
        progress("waiting for every worker to join the head")
        dashboard, ray_nodes = cluster.dashboard, len(started) - 1
        if not wait_until(lambda: kuberay.alive_nodes(dashboard) >= ray_nodes, timeout, interval=1.0):
            raise ClusterError(f"only {kuberay.alive_nodes(dashboard)} of {ray_nodes} Ray nodes joined")
        progress("deploying serveConfigV2 through the dashboard")
        kuberay.deploy(dashboard, serve_body(config, cpu_apps), ClusterError)
        names = [app.name for app in cpu_apps]
        outcome = kuberay.wait_for_serve(dashboard, names, lambda: all_routes_answer(cluster), timeout, 1.0)
        if outcome.failure is not None:
            (app,) = [a for a in cpu_apps if a.name == outcome.failure.app]
            containers = [node.name for node in cluster.nodes if node.role in ("head", "worker")]
            log = failure_log_path(config, "up", app.name)
            kuberay.save_failure_log(engine, containers, outcome.failure, log)
            raise kuberay.deploy_error(ClusterError, app, outcome.failure, log)
        if not outcome.answered:
            statuses = {k: v.get("status") for k, v in kuberay.serve_status(dashboard).items()}
            raise ClusterError(f"not every app answered within {timeout:.0f}s: {statuses}")
        return cluster
    except BaseException:
        # A failed or interrupted (Ctrl-C, SIGTERM) `up` leaves nothing behind but what helps to diagnose:
        # the containers' logs were already read. Best effort, so that the cause is what gets reported.
        try:
            down(config, engine)
        except RaybuildError as exc:
            progress(f"warning: the half-started cluster stays ({exc.message}); run `raybuild down`")
        raise


def down(config: LoadedConfig, engine: Engine, progress: Progress = silent) -> int:
    """Remove this checkout's cluster: every container and network with its labels; how many went.

    Honest about failure: when the daemon cannot be asked, or something could not be removed, this raises
    and the record in .raybuild/up.json stays, so that a later `down` can still finish the job.
    """
    engine.ping()  # "not reachable", with its hint, rather than a failed listing
    removed = engine.remove_labelled(cluster_labels(config))
    cluster_record_path(config).unlink(missing_ok=True)
    if removed:
        progress(f"removed {removed} containers and networks of {cluster_name(config)}")
    return removed
