"""The local cluster without Docker: its plan (KubeRay's topology with GCS fault tolerance), the Serve body,
the state file, and the containers and networks it asks the fake engine for."""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from raybuild import kuberay
from raybuild.config import LoadedConfig
from raybuild.errors import ClusterError, EngineError, StateError
from raybuild.interrupts import Interrupted
from raybuild.kuberay import LABEL_KEY, RECONNECT_TIMEOUT_ENV
from raybuild.labels import CLUSTER_LABEL, PROJECT_LABEL, PURPOSE_LABEL, ROLE_LABEL
from raybuild.local import cluster
from raybuild.local.cluster import LocalCluster, Node
from raybuild.manifest import render as k8s
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, save_build_record
from raybuild.state import cluster_record_path, failure_log_path, project_id, publish_record_path
from tests.conftest import TmpProject, other_app
from tests.unit.fakes import FakeDashboard, FakeEngine, docker_error, docker_runs, make_app
from tests.unit.serve_failures import failed_status

OTHER_APP = "\n" + other_app(deployment_lines="num_replicas = 3\nray_actor_options = { num_cpus = 1 }\n")
IMAGES = {"_head": "reg/ray-head:1", "demo": "reg/demo:1", "other": "reg/other:1"}
REDIS = "raybuild/gcs-redis:py3.11-abc"
FRONT = "raybuild/front-haproxy:py3.11-abc"
SUBNET = "172.29.213.0"
PID = "0123456789abcdef"


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.append_config(OTHER_APP)
    tmp_project.add_app("other")
    return tmp_project.load()


@pytest.fixture
def planned(project: LoadedConfig) -> LocalCluster:
    return cluster.plan(project, IMAGES, REDIS, SUBNET, "s3cret", project.apps)


# -- the plan ---------------------------------------------------------------------------------------------


def test_plan_gives_every_node_a_fixed_ip(project: LoadedConfig, planned: LocalCluster) -> None:
    prefix = f"raybuild-serve-{project_id(project)[:8]}"  # Docker names are global: this checkout's own
    assert cluster.object_prefix(project) == prefix
    assert [(n.name, n.role, n.ip) for n in planned.nodes] == [
        (f"{prefix}-gcs", "gcs", "172.29.213.10"),
        (f"{prefix}-head", "head", "172.29.213.11"),
        (f"{prefix}-worker-demo", "worker", "172.29.213.20"),
        (f"{prefix}-worker-other", "worker", "172.29.213.21"),
    ]
    assert (planned.name, planned.network, planned.subnet) == ("raybuild-serve", prefix, SUBNET)
    assert planned.routes == {"demo": "/demo", "other": "/other"}


def test_the_gcs_store_runs_redis_with_the_password(planned: LocalCluster) -> None:
    gcs = planned.node("gcs")
    assert (gcs.image, gcs.command, gcs.env, gcs.publish) == (REDIS, "", {"REDIS_PASSWORD": "s3cret"}, {})


def test_the_head_schedules_nothing_and_keeps_its_state_in_the_store(planned: LocalCluster) -> None:
    head = planned.node("head")
    assert head.image == "reg/ray-head:1"
    assert head.command == (
        "ulimit -n 65536; ray start --head --block --dashboard-agent-listen-port=52365 "
        "--dashboard-host=0.0.0.0 --disable-usage-stats --metrics-export-port=8080 --num-cpus=0 "
        "--redis-password=$REDIS_PASSWORD"
    )
    assert head.env == {
        "RAY_REDIS_ADDRESS": "172.29.213.10:6379",
        "REDIS_PASSWORD": "s3cret",
        "RAY_external_storage_namespace": "raybuild-serve",
    }
    assert head.publish == {8265: 0}, "the dashboard only; Serve traffic goes to workers"


def test_workers_carry_the_app_label_and_wait_for_the_gcs(
    project: LoadedConfig, planned: LocalCluster
) -> None:
    for app in project.apps:
        worker = planned.node("worker", app.name)
        assert worker.image == IMAGES[app.name]
        assert worker.app == app.name
        # KubeRay's command, run so that SIGTERM drains the worker first, as its pod's preStop hook does.
        assert worker.command == kuberay.draining_command(
            "ulimit -n 65536; ray start --address=172.29.213.11:6379 --block "
            "--dashboard-agent-listen-port=52365 --disable-usage-stats "
            f"--labels=raybuild.io/app={app.name} --metrics-export-port=8080 "
            f"--num-cpus={kuberay.required_cpus(app)}"
        )
        assert worker.env == {RECONNECT_TIMEOUT_ENV: "600"}
        assert worker.publish == {8000: 0}
    assert "--num-cpus=4" in planned.node("worker", "other").command
    assert RECONNECT_TIMEOUT_ENV == "RAY_gcs_rpc_server_reconnect_timeout_s"
    assert all(RECONNECT_TIMEOUT_ENV not in n.env for n in planned.nodes if n.role != "worker")


def test_only_the_selected_apps_get_workers(project: LoadedConfig) -> None:
    planned = cluster.plan(project, IMAGES, REDIS, SUBNET, "pw", project.apps[1:])
    assert [n.role for n in planned.nodes] == ["gcs", "head", "worker"]
    assert planned.routes == {"other": "/other"}


def test_cluster_name_always_starts_with_raybuild(tmp_project: TmpProject) -> None:
    assert cluster.cluster_name(tmp_project.load()) == "raybuild-serve"
    tmp_project.append_config('[cluster]\nname = "prod"\n')
    assert cluster.cluster_name(tmp_project.load()) == "raybuild-prod"


# -- serve body -------------------------------------------------------------------------------------------


def test_serve_body_is_the_rendered_config_for_the_selected_apps(project: LoadedConfig) -> None:
    body = cluster.serve_body(project, project.apps[:1])
    assert [a["name"] for a in body["applications"]] == ["demo"]
    assert body["applications"] == k8s.serve_config(project)["applications"][:1]
    assert body["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_every_deployment_is_pinned_to_its_apps_workers(project: LoadedConfig) -> None:
    body = cluster.serve_body(project, project.apps)
    selectors = {
        (application["name"], deployment["name"]): deployment["ray_actor_options"]["label_selector"]
        for application in body["applications"]
        for deployment in application["deployments"]
    }
    assert selectors == {
        ("demo", "Demo"): {LABEL_KEY: "demo"},
        ("other", "Other"): {LABEL_KEY: "other"},
    }


# -- the state file ---------------------------------------------------------------------------------------


def started(planned: LocalCluster) -> LocalCluster:
    """The plan with host ports filled in, as `up` records it."""
    ports = iter(range(40001, 40010))
    nodes = [
        Node(n.name, n.role, n.image, n.command, n.env, n.ip, n.app, {p: next(ports) for p in n.publish})
        for n in planned.nodes
    ]
    return replace(planned, nodes=nodes)


def test_local_cluster_survives_a_json_round_trip(planned: LocalCluster) -> None:
    running = started(planned)
    restored = LocalCluster.from_json(running.to_json())
    assert restored == running
    assert restored.node("head").publish == {8265: 40001}


def test_urls_reach_every_app_through_every_worker(planned: LocalCluster) -> None:
    running = started(planned)
    assert running.dashboard == "http://127.0.0.1:40001"
    assert running.urls() == {
        "demo": ["http://127.0.0.1:40002/demo", "http://127.0.0.1:40003/demo"],
        "other": ["http://127.0.0.1:40002/other", "http://127.0.0.1:40003/other"],
    }


def test_an_ha_app_gets_two_workers_and_the_front_balances_over_every_worker(
    tmp_project: TmpProject,
) -> None:
    tmp_project.append_config(
        OTHER_APP.replace('route_prefix = "/other"', 'route_prefix = "/other"\nha = true')
    )
    tmp_project.add_app("other")
    project = tmp_project.load()
    planned = cluster.plan(project, IMAGES, REDIS, SUBNET, "pw", project.apps, "ingress", FRONT)
    prefix = cluster.object_prefix(project)
    workers = [(n.name, n.ip, n.app) for n in planned.nodes if n.role == "worker"]
    assert workers == [
        (f"{prefix}-worker-demo", "172.29.213.20", "demo"),
        (f"{prefix}-worker-other-1", "172.29.213.21", "other"),
        (f"{prefix}-worker-other-2", "172.29.213.22", "other"),
    ]
    front = planned.node("front")
    assert (front.image, front.ip, front.publish, planned.front) == (
        FRONT,
        "172.29.213.12",
        {8000: 0},
        "ingress",
    )
    config = front.env["HAPROXY_CFG"]
    assert "    mode http\n" in config and "retry-on conn-failure empty-response 502 503" in config
    servers = [line.split()[1:] for line in config.splitlines() if line.strip().startswith("server ")]
    assert servers == [[name, f"{ip}:8000"] for name, ip, _ in workers]
    running = started(planned)
    assert running.front_url == "http://127.0.0.1:40005"
    assert running.front_urls() == {
        "demo": ["http://127.0.0.1:40005/demo"],
        "other": ["http://127.0.0.1:40005/other"],
    }
    assert LocalCluster.from_json(running.to_json()) == running


def test_a_cluster_without_a_front_has_no_front_urls(planned: LocalCluster) -> None:
    assert (planned.front, planned.front_url, planned.front_urls()) == ("", "", {})
    assert "front" not in [n.role for n in planned.nodes]


def test_a_missing_node_is_a_cluster_error(planned: LocalCluster) -> None:
    with pytest.raises(ClusterError, match="no worker node for app 'nope' in cluster 'raybuild-serve'"):
        planned.node("worker", "nope")


def test_load_cluster_without_or_with_a_broken_state_file(project: LoadedConfig) -> None:
    with pytest.raises(ClusterError, match="no local cluster is running") as raised:
        cluster.load_cluster(project)
    assert raised.value.hint == "run `raybuild up` first"
    cluster_record_path(project).parent.mkdir(parents=True)
    cluster_record_path(project).write_text('{"name": "x"}')
    with pytest.raises(
        StateError, match=r"up\.json: malformed cluster record: key 'network': missing"
    ) as bad:
        cluster.load_cluster(project)
    assert bad.value.hint == "run `raybuild down`, then `raybuild up`"


def test_local_images_come_from_the_last_build(project: LoadedConfig) -> None:
    with pytest.raises(ClusterError, match="no image for the head"):
        cluster.local_images(project, project.apps)
    save_build_record(
        project,
        [
            BuiltImage("_head", "reg/ray-head:7", "sha256:1", "cpu", cached=False),
            BuiltImage("demo", "reg/demo:7", "sha256:2", "cpu", cached=False),
        ],
    )
    assert cluster.local_images(project, project.apps[:1]) == {
        "_head": "reg/ray-head:7",
        "demo": "reg/demo:7",
    }
    with pytest.raises(ClusterError, match="no image for 'other'") as raised:
        cluster.local_images(project, project.apps)
    assert raised.value.hint == "run `raybuild build` (and `raybuild publish` to test the published digests)"


def test_local_images_prefer_the_published_digests(project: LoadedConfig) -> None:
    other = PublishedImage("reg/other:7", "sha256:" + "f" * 64, 1, 1)
    PublishRecord({"other": other}).save(publish_record_path(project))
    save_build_record(project, [BuiltImage("_head", "reg/ray-head:7", "sha256:1", "cpu", cached=False)])
    assert cluster.local_images(project, project.apps[1:]) == {
        "_head": "reg/ray-head:7",
        "other": other.pinned,
    }


# -- containers and networks, with the fake engine --------------------------------------------------------


def test_run_node_starts_a_ray_node_as_kubernetes_would_restart_it(
    project: LoadedConfig, planned: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(cluster, "free_port", lambda: 40123)
    engine = FakeEngine()
    pid = project_id(project)
    head = cluster.run_node(engine, pid, planned, planned.node("head"))
    name = planned.node("head").name
    assert engine.verbs() == ["run_detached"]
    assert docker_runs(engine) == [
        [
            "run", "-d", "--name", name, "--hostname", name,
            "--network", planned.network, "--ip", "172.29.213.11",
            "--label", "io.raybuild.cluster=raybuild-serve", "--label", "io.raybuild.managed=true",
            "--label", f"io.raybuild.project={pid}", "--label", "io.raybuild.purpose=cluster",
            "--label", "io.raybuild.role=head",
            "--ulimit", "nofile=4096:4096", "--shm-size=1g", "--restart", "on-failure",
            "-p", "127.0.0.1:40123:8265",
            "-e", "RAY_REDIS_ADDRESS=172.29.213.10:6379",
            "-e", "RAY_external_storage_namespace=raybuild-serve",
            "-e", "REDIS_PASSWORD=s3cret",
            "reg/ray-head:1", "/bin/bash", "-c", "--", planned.node("head").command,
        ]
    ]  # fmt: skip
    assert engine.containers[name] == {
        "io.raybuild.managed": "true",
        PROJECT_LABEL: pid,
        PURPOSE_LABEL: "cluster",
        CLUSTER_LABEL: "raybuild-serve",
        ROLE_LABEL: "head",
    }
    assert head == replace(planned.node("head"), publish={8265: 40123})


def test_run_node_starts_the_gcs_store_without_restarts_or_a_command(planned: LocalCluster) -> None:
    engine = FakeEngine()
    cluster.run_node(engine, PID, planned, planned.node("gcs"))
    [run] = docker_runs(engine)
    assert "--restart" not in run and "--shm-size=1g" not in run and "-p" not in run
    assert run[run.index("--ip") + 1] == "172.29.213.10"
    assert run[-3:] == ["-e", "REDIS_PASSWORD=s3cret", REDIS]


def test_run_node_keeps_the_host_port_of_a_restarted_node(planned: LocalCluster) -> None:
    engine = FakeEngine()
    worker = started(planned).node("worker", "other")
    again = cluster.run_node(engine, PID, planned, worker)
    [run] = docker_runs(engine)
    assert run[run.index("--ip") + 1] == worker.ip == "172.29.213.21", "the front finds it at the same IP"
    assert run[run.index("-p") + 1] == "127.0.0.1:40003:8000"
    assert run[run.index("--stop-timeout") + 1] == str(kuberay.TERMINATION_GRACE_S)
    assert again == worker


def test_the_network_takes_the_first_free_subnet(project: LoadedConfig) -> None:
    engine = FakeEngine()
    overlap = "Error response from daemon: Pool overlaps with other one on this address space"
    engine.script("create_network", when={"subnet": "172.29.213.0/24"}, returncode=1, output=overlap)
    assert cluster._create_network(engine, project) == "172.29.214.0"
    assert engine.networks == {cluster.object_prefix(project): cluster_labels_of(project)}


def test_an_existing_network_says_to_run_down_first(project: LoadedConfig) -> None:
    engine = FakeEngine()
    exists = "Error response from daemon: network with name raybuild-serve-x already exists"
    engine.script("create_network", returncode=1, output=exists)
    with pytest.raises(ClusterError, match="already exists") as raised:
        cluster._create_network(engine, project)
    assert raised.value.hint == "run `raybuild down` first"
    assert len(engine.calls("create_network")) == 1


def cluster_labels_of(config: LoadedConfig) -> dict[str, str]:
    return {**cluster.cluster_labels(config), CLUSTER_LABEL: "raybuild-serve"}


def test_down_removes_this_checkouts_cluster_only(
    project: LoadedConfig, planned: LocalCluster, tmp_project: TmpProject
) -> None:
    engine = FakeEngine()
    pid = project_id(project)
    cluster._create_network(engine, project)
    for node in planned.nodes:
        cluster.run_node(engine, pid, planned, node)
    # A second checkout of the same project, same cluster name, on the same daemon.
    second = TmpProject(tmp_project.root.parent / "second")
    second.add_app("demo")
    second.write_config(project.path.read_text())
    second.add_app("other")
    other = second.load()
    assert cluster.cluster_name(other) == cluster.cluster_name(project)
    cluster._create_network(engine, other)
    theirs = cluster.plan(other, IMAGES, REDIS, "172.29.214.0", "pw", other.apps)
    for node in theirs.nodes:
        cluster.run_node(engine, project_id(other), theirs, node)
    engine.containers["unlabelled"] = {}
    cluster_record_path(project).parent.mkdir(parents=True)
    cluster_record_path(project).write_text(started(planned).to_json())
    messages: list[str] = []

    assert cluster.down(project, engine, progress=messages.append) == 5
    assert sorted(engine.containers) == sorted([*(n.name for n in theirs.nodes), "unlabelled"])
    assert list(engine.networks) == [theirs.network]
    assert not cluster_record_path(project).exists()
    assert messages == ["removed 5 containers and networks of raybuild-serve"]
    assert cluster.down(project, engine) == 0


def test_down_with_the_daemon_unreachable_fails_and_keeps_the_record(
    project: LoadedConfig, planned: LocalCluster
) -> None:
    engine = FakeEngine()
    unreachable = "Cannot connect to the Docker daemon at unix:///nonexistent. Is the docker daemon running?"
    engine.script("container_ids", raises=docker_error("docker ps failed (exit 1)", unreachable))
    record = cluster_record_path(project)
    record.parent.mkdir(parents=True)
    record.write_text(started(planned).to_json())
    with pytest.raises(EngineError) as raised:
        cluster.down(project, engine)
    assert raised.value.hint is not None and "daemon is not running" in raised.value.hint
    assert record.read_text() == started(planned).to_json()


def test_down_with_a_broken_docker_config_removes_only_what_it_listed(
    project: LoadedConfig, planned: LocalCluster
) -> None:
    engine = FakeEngine()
    cluster.run_node(engine, project_id(project), planned, planned.node("head"))
    engine.containers["string"] = {}
    # Reading IDs from stdout alone, past a warning on stderr, is the engine's (see test_engine).
    assert cluster.down(project, engine) == 1
    assert list(engine.containers) == ["string"]


def test_up_refuses_a_selection_without_cpu_apps(project: LoadedConfig) -> None:
    engine = FakeEngine()
    with pytest.raises(ClusterError, match="no CPU app selected"):
        cluster.up(project, engine, (make_app("cuda", device="gpu"),))
    assert engine.calls() == []


NODES_ALIVE = json.dumps(
    {"data": {"result": {"result": [{"state": "ALIVE"}, {"state": "ALIVE"}, {"state": "ALIVE"}]}}}
)


@pytest.fixture
def built(project: LoadedConfig, monkeypatch: pytest.MonkeyPatch) -> LoadedConfig:
    """A project whose images were built; the GCS store's image is made without Docker."""
    save_build_record(
        project,
        [
            BuiltImage("_head", "reg/ray-head:1", "sha256:1", "cpu", cached=False),
            BuiltImage("demo", "reg/demo:1", "sha256:2", "cpu", cached=False),
            BuiltImage("other", "reg/other:1", "sha256:3", "cpu", cached=False),
        ],
    )
    monkeypatch.setattr(cluster.bases, "ensure_redis", lambda *args: REDIS)
    monkeypatch.setattr(cluster.bases, "ensure_front", lambda *args: FRONT)
    return project


def test_up_starts_the_topology_probes_the_head_and_deploys_the_rendered_config(
    built: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes: list[str] = []

    def http(method: str, url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, str]:
        routes.append(url)
        return 200, "{}"

    monkeypatch.setattr(cluster, "http", http)
    dashboard = FakeDashboard(nodes=(200, NODES_ALIVE), deploy=(200, "{}"))
    engine = FakeEngine()
    running = cluster.up(built, engine, built.apps, timeout=5, dashboard_api=dashboard)

    assert [node.role for node in running.nodes] == ["gcs", "head", "worker", "worker", "front"]
    assert list(engine.containers) == [node.name for node in running.nodes]
    assert running.front == "service" and running.front_url.startswith("http://127.0.0.1:")
    assert cluster.load_cluster(built) == running
    probes = [call[-1] for call in engine.calls("exec", running.node("head").name)]
    assert probes == [kuberay.RAYLET_PROBE, kuberay.GCS_PROBE]
    assert dashboard.called("deploy") == [(running.dashboard, cluster.serve_body(built, built.apps), 60)]
    through = [*running.urls().values(), *running.front_urls().values()]
    assert sorted(routes) == sorted(url for urls in through for url in urls)


def test_a_refused_deploy_takes_the_cluster_down_again(built: LoadedConfig) -> None:
    dashboard = FakeDashboard(nodes=(200, NODES_ALIVE), deploy=(400, "invalid serve config"))
    engine = FakeEngine()
    with pytest.raises(ClusterError, match=r"^Serve deploy request returned 400: invalid serve config$"):
        cluster.up(built, engine, built.apps, timeout=5, dashboard_api=dashboard)
    assert engine.containers == {} and engine.networks == {}
    assert not cluster_record_path(built).exists()


def test_an_app_that_fails_to_deploy_is_named_and_the_cluster_taken_down(
    built: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "http", lambda *args, **kwargs: (0, "connection refused"))  # no route
    dashboard = FakeDashboard(
        nodes=(200, NODES_ALIVE),
        deploy=(200, "{}"),
        applications=(200, json.dumps(failed_status("other", constructor=False))),
    )
    engine = FakeEngine()
    with pytest.raises(ClusterError) as raised:
        cluster.up(built, engine, built.apps, timeout=60, dashboard_api=dashboard)
    assert str(raised.value) == (
        "app 'other': Serve could not deploy it: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere' (importfail_app.py, line 1)"
    )
    log = failure_log_path(built, "up", "other")
    assert f"are in {log}" in (raised.value.hint or "")
    assert "Deploying app 'imp' failed with exception" in log.read_text()
    assert len(dashboard.called("applications")) == 1, "stopped at the first status read"
    assert engine.containers == {} and engine.networks == {}


class SigtermDuringDeploy(FakeDashboard):
    """A dashboard whose deploy request is cut short by SIGTERM."""

    def deploy_applications(self, url: str, config: Mapping[str, Any], timeout: float) -> tuple[int, str]:
        raise Interrupted(15)


def test_an_interrupted_up_takes_its_half_started_cluster_down(built: LoadedConfig) -> None:
    engine = FakeEngine()
    engine.containers["unlabelled"] = {}
    with pytest.raises(Interrupted):
        cluster.up(
            built, engine, built.apps, timeout=5, dashboard_api=SigtermDuringDeploy(nodes=(200, NODES_ALIVE))
        )
    assert list(engine.containers) == ["unlabelled"] and engine.networks == {}
    assert not cluster_record_path(built).exists()


def test_up_warns_when_an_image_was_rebuilt_after_it_was_published(
    built: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "http", lambda *args, **kwargs: (200, "{}"))
    dashboard = FakeDashboard(nodes=(200, NODES_ALIVE), deploy=(200, "{}"))
    published = {
        key: PublishedImage(f"reg/{name}:0", "sha256:" + c * 64, 1, 1)
        for key, name, c in (("_head", "ray-head", "a"), ("demo", "demo", "b"), ("other", "other", "c"))
    }
    published["_head"] = PublishedImage("reg/ray-head:1", "sha256:" + "a" * 64, 1, 1)  # the build's tag
    PublishRecord(published).save(publish_record_path(built))
    said: list[str] = []
    cluster.up(built, FakeEngine(), built.apps, timeout=5, progress=said.append, dashboard_api=dashboard)
    assert [line for line in said if line.startswith("warning:")] == [
        "warning: built since the last publish: 'demo', 'other': using the new local tags; "
        "run `raybuild publish` to pin them by digest"
    ]


def test_switch_front_replaces_only_the_front_and_records_its_mode(
    built: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "http", lambda *args, **kwargs: (200, "ok"))
    planned = cluster.plan(built, IMAGES, REDIS, SUBNET, "pw", built.apps, "service", FRONT)
    running = started(planned)
    cluster_record_path(built).parent.mkdir(parents=True, exist_ok=True)
    cluster_record_path(built).write_text(running.to_json())
    engine = FakeEngine()
    for node in running.nodes:
        engine.containers[node.name] = dict(cluster.node_spec(project_id(built), running, node).labels)

    switched = cluster.switch_front(built, engine, "ingress", timeout=5)

    front = running.node("front")
    assert engine.removed == [front.name]
    [run] = docker_runs(engine)
    assert run[run.index("--name") + 1] == front.name
    assert run[run.index("-p") + 1] == f"127.0.0.1:{front.publish[8000]}:8000", "clients keep its URL"
    assert switched.front == "ingress" and switched.front_url == running.front_url
    assert "mode http" in switched.node("front").env["HAPROXY_CFG"]
    assert [n for n in switched.nodes if n.role != "front"] == [n for n in running.nodes if n.role != "front"]
    assert cluster.load_cluster(built) == switched
