"""`raybuild up` / `raybuild down`: the rendered RayService's topology, run locally in Docker.

On a private Docker network: a Redis GCS store (Debian's redis-server on the slim base, with a password),
a head started as KubeRay starts it with GCS fault tolerance (num-cpus 0, RAY_REDIS_ADDRESS, REDIS_PASSWORD,
RAY_external_storage_namespace), and one worker per app image carrying the same Ray node labels as the
rendered worker groups (two for an app with `ha = true`). The Serve config is the rendered serveConfigV2,
deployed through the dashboard REST API as KubeRay does. Only workers' Serve ports are published (like
excludeHeadPodFromServeSvc), and only on 127.0.0.1; the front (local/front.py) is the serve Service over
them. A worker runs its pod's preStop drain on SIGTERM and `docker stop` waits its grace period.
Everything carries raybuild's labels with this project's id, so `down` removes it even after a failed or
interrupted `up`, and never another checkout's cluster of the same name: container and network names
carry the project id too, so two checkouts can even run their clusters side by side.
"""

from __future__ import annotations

import secrets
from dataclasses import field, replace
from functools import partial
from typing import Any

from pydantic.dataclasses import dataclass as model

from raybuild import kuberay
from raybuild.config import LoadedConfig
from raybuild.config_apps import HA_MIN_REPLICAS, App
from raybuild.dashboard import RAY_DASHBOARD, Dashboard
from raybuild.engine import Engine
from raybuild.errors import ClusterError, RaybuildError
from raybuild.image import bases
from raybuild.images import image_references
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
from raybuild.local.front import CONFIG_ENV, FRONT_PORT, Backend, FrontMode, haproxy_config
from raybuild.loopback import free_port, http, wait_until
from raybuild.manifest import render as k8s
from raybuild.progress import Progress, silent
from raybuild.records import (
    RECORD_VERSION,
    RecordFormat,
    load_publish_record,
    load_record,
    parse_record,
    record_text,
    save_record,
)
from raybuild.state import HEAD_KEY, cluster_record_path, failure_log_path, project_id


@model(frozen=True)
class Node:
    name: str
    role: str  # "gcs", "head", "worker" or "front"
    image: str
    command: str
    env: dict[str, str]
    ip: str | None = None
    app: str | None = None
    publish: dict[int, int] = field(default_factory=dict)  # container port -> host port on 127.0.0.1


@model(frozen=True)
class LocalCluster:
    """What `up` started, the cluster record (``up.json``): enough to restart any node exactly as it was,
    and to reach every route."""

    name: str
    network: str
    subnet: str
    nodes: list[Node]
    routes: dict[str, str]  # app -> route prefix
    front: str = ""  # the front's mode (local/front.py), "" for none
    version: int = RECORD_VERSION

    def node(self, role: str, app: str | None = None) -> Node:
        for node in self.nodes:
            if node.role == role and (app is None or node.app == app):
                return node
        raise ClusterError(f"no {role} node{f' for app {app!r}' if app else ''} in cluster {self.name!r}")

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.node('head').publish[DASHBOARD_PORT]}"

    @property
    def front_url(self) -> str:
        """Where clients reach the cluster, like the serve Service (or an Ingress); "" without a front."""
        if not self.front:
            return ""
        return f"http://127.0.0.1:{self.node('front').publish[FRONT_PORT]}"

    def front_urls(self) -> dict[str, list[str]]:
        """Each app's URL through the front (empty without one)."""
        if not self.front:
            return {}
        return {app: [f"{self.front_url}{route}"] for app, route in self.routes.items()}

    def urls(self) -> dict[str, list[str]]:
        """Each app's URLs through every worker's Serve port (any proxy routes to any app)."""
        workers = [n for n in self.nodes if n.role == "worker"]
        return {
            app: [f"http://127.0.0.1:{w.publish[SERVE_PORT]}{route}" for w in workers]
            for app, route in self.routes.items()
        }

    def to_json(self) -> str:
        return record_text(self, CLUSTER)

    @classmethod
    def from_json(cls, text: str, source: str = "<cluster record>") -> LocalCluster:
        return parse_record(text, source, CLUSTER)


# up.json before it had a version is this version: `up` has always written the same keys.
CLUSTER = RecordFormat(
    "cluster record",
    LocalCluster,
    corrupt_hint="run `raybuild down`, then `raybuild up`",
    unversioned_is_current=True,
    omit_none=False,  # a node without an app or IP says so with null, as up.json always has
)


def load_cluster(config: LoadedConfig) -> LocalCluster:
    cluster = load_record(cluster_record_path(config), CLUSTER)
    if cluster is None:
        raise ClusterError("no local cluster is running", hint="run `raybuild up` first")
    return cluster


def save_cluster(config: LoadedConfig, cluster: LocalCluster) -> None:
    save_record(cluster_record_path(config), cluster, CLUSTER, mode=0o600)  # it holds the password


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
    front: FrontMode | None = None,
    front_image: str = "",
) -> LocalCluster:
    """The nodes of the local cluster. Fixed IPs for every node: workers reconnect to the store and head at
    theirs, and the front reaches each worker at its own, even after the worker was replaced."""
    name, network = cluster_name(config), object_prefix(config)
    prefix = subnet.rsplit(".", 1)[0]
    gcs_ip, head_ip, front_ip = f"{prefix}.10", f"{prefix}.11", f"{prefix}.12"
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
    workers: list[Node] = []
    for app in apps:
        env = {RECONNECT_TIMEOUT_ENV: WORKER_RECONNECT_TIMEOUT_S}
        command = kuberay.worker_command(
            head_ip, required_cpus(app), labels={LABEL_KEY: app.name}, usage_stats=False
        )
        # The fewest worker pods that show the behaviour: two for an HA app (its replicas spread over
        # them), one otherwise, whatever the group's replicas say.
        count = HA_MIN_REPLICAS if app.ha else 1
        for index in range(count):
            suffix = f"-{index + 1}" if count > 1 else ""
            workers.append(
                Node(
                    f"{network}-worker-{app.name}{suffix}",
                    "worker",
                    images[app.name],
                    kuberay.draining_command(command),
                    env,
                    ip=f"{prefix}.{20 + len(workers)}",
                    app=app.name,
                    publish={SERVE_PORT: 0},
                )
            )
    nodes += workers
    if front is not None:
        backends = [Backend(w.name, f"{w.ip}:{SERVE_PORT}") for w in workers]
        env = {CONFIG_ENV: haproxy_config(front, backends)}
        nodes.append(
            Node(f"{network}-front", "front", front_image, "", env, ip=front_ip, publish={FRONT_PORT: 0})
        )
    routes = {app.name: app.route_prefix for app in apps}
    return LocalCluster(name, network, subnet, nodes, routes, front or "")


def node_spec(project: str, cluster: LocalCluster, node: Node) -> NodeSpec:
    """The container of one node: on the cluster's network, under its own name, with its fixed IP."""
    ray_node = node.role in ("head", "worker")
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
        # `docker stop` gives a worker its pod's grace period for the drain its command runs on SIGTERM.
        stop_timeout=kuberay.TERMINATION_GRACE_S if node.role == "worker" else None,
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


def front_answers(cluster: LocalCluster) -> bool:
    """Every app answers through the front (True when there is none)."""
    return all(
        http("GET", url, timeout=5)[0] == 200 for urls in cluster.front_urls().values() for url in urls
    )


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
    front: FrontMode | None = "service",
    dashboard_api: Dashboard = RAY_DASHBOARD,
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
    front_image = bases.ensure_front(config, engine, progress) if front is not None else ""
    project = project_id(config)
    try:
        subnet = _create_network(engine, config)
        password = secrets.token_hex(16)
        cluster = plan(config, images, redis_image, subnet, password, cpu_apps, front, front_image)
        started: list[Node] = []
        for node in cluster.nodes:
            progress(f"starting {node.role} {node.name} ({node.image})")
            started.append(run_node(engine, project, cluster, node))
            if node.role == "head":
                cluster = replace(cluster, nodes=started + cluster.nodes[len(started) :])
                if not wait_until(partial(kuberay.probe, engine, node.name, "head"), timeout):
                    raise ClusterError(f"head never became healthy: {engine.logs(node.name, 5)!r}")
        cluster = replace(cluster, nodes=started)
        save_cluster(config, cluster)
        progress("waiting for every worker to join the head")
        dashboard = cluster.dashboard
        ray_nodes = sum(1 for node in started if node.role in ("head", "worker"))
        joined = partial(kuberay.alive_nodes, dashboard, dashboard_api)
        if not wait_until(lambda: joined() >= ray_nodes, timeout, interval=1.0):
            raise ClusterError(f"only {joined()} of {ray_nodes} Ray nodes joined")
        progress("deploying serveConfigV2 through the dashboard")
        kuberay.deploy(dashboard, serve_body(config, cpu_apps), ClusterError, api=dashboard_api)
        names = [app.name for app in cpu_apps]
        answered = partial(all_routes_answer, cluster)
        outcome = kuberay.wait_for_serve(dashboard, names, answered, timeout, 1.0, api=dashboard_api)
        if outcome.failure is not None:
            (app,) = [a for a in cpu_apps if a.name == outcome.failure.app]
            containers = [node.name for node in cluster.nodes if node.role in ("head", "worker")]
            log = failure_log_path(config, "up", app.name)
            kuberay.save_failure_log(engine, containers, outcome.failure, log)
            raise kuberay.deploy_error(ClusterError, app, outcome.failure, log)
        if not outcome.answered:
            statuses = {k: v.get("status") for k, v in kuberay.serve_status(dashboard, dashboard_api).items()}
            raise ClusterError(f"not every app answered within {timeout:.0f}s: {statuses}")
        if cluster.front:
            progress(f"waiting for the front ({cluster.front}) at {cluster.front_url}")
            if not wait_until(lambda: front_answers(cluster), timeout, interval=1.0):
                raise ClusterError(
                    f"the front never answered: {engine.logs(cluster.node('front').name, 5)!r}"
                )
        return cluster
    except BaseException:
        # A failed or interrupted (Ctrl-C, SIGTERM) `up` leaves nothing behind but what helps to diagnose:
        # the containers' logs were already read. Best effort, so that the cause is what gets reported.
        try:
            down(config, engine)
        except RaybuildError as exc:
            progress(f"warning: the half-started cluster stays ({exc.message}); run `raybuild down`")
        raise


def switch_front(
    config: LoadedConfig, engine: Engine, mode: FrontMode, timeout: float = 60.0, progress: Progress = silent
) -> LocalCluster:
    """Replace the running cluster's front with one in ``mode``, leaving every Ray node as it is."""
    cluster = load_cluster(config)
    project = project_id(config)
    workers = [n for n in cluster.nodes if n.role == "worker"]
    backends = [Backend(w.name, f"{w.ip}:{SERVE_PORT}") for w in workers]
    old = cluster.node("front") if cluster.front else None
    if old is not None:
        remove_node(engine, project, cluster, old)
    prefix = cluster.subnet.rsplit(".", 1)[0]
    front = Node(
        f"{cluster.network}-front",
        "front",
        old.image if old is not None else bases.ensure_front(config, engine, progress),
        "",
        {CONFIG_ENV: haproxy_config(mode, backends)},
        ip=f"{prefix}.12",
        publish=old.publish if old is not None else {FRONT_PORT: 0},
    )
    nodes = [n for n in cluster.nodes if n.role != "front"]
    cluster = replace(cluster, nodes=[*nodes, front], front=mode)
    started = run_node(engine, project, cluster, front)
    cluster = replace(cluster, nodes=[*nodes, started])
    save_cluster(config, cluster)
    if not wait_until(lambda: front_answers(cluster), timeout, interval=1.0):
        raise ClusterError(f"the front never answered: {engine.logs(started.name, 5)!r}")
    return cluster


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
