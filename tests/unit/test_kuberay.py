"""The KubeRay node contract: command lines, node sizing, `docker run` arguments, probes and the dashboard's
REST API, against the fake engine and a fake `http`. Nothing here starts a container or opens a socket."""

from __future__ import annotations

import json
import resource
from typing import Any

import pytest

from raybuild import kuberay
from raybuild.engine import run_detached_args
from raybuild.errors import ClusterError, EngineError, GpuUnavailable, RaybuildError, SmokeTestError
from raybuild.interrupts import Interrupted
from raybuild.kuberay import NodeSpec
from raybuild.labels import object_labels
from tests.unit.fakes import FakeDashboard, FakeEngine, make_app
from tests.unit.serve_failures import CONSTRUCTOR_TRACEBACK, REPLICA_LOG, failed_status

LABELS = object_labels("a" * 16, "smoke")

# -- command lines ----------------------------------------------------------------------------------------

HEAD = (
    "ulimit -n 65536; ray start --head --block --dashboard-agent-listen-port=52365 "
    "--dashboard-host=0.0.0.0 --metrics-export-port=8080 --num-cpus="
)


def test_head_command_is_kuberays_in_rayStartParams_key_order() -> None:
    assert kuberay.head_command(2) == HEAD + "2"
    assert kuberay.head_command(3.0) == HEAD + "3"
    assert kuberay.head_command(1.5) == HEAD + "1.5"


def test_a_heads_gpus_become_num_gpus() -> None:
    assert kuberay.head_command(2, num_gpus=1) == HEAD + "2 --num-gpus=1"


def test_a_fault_tolerant_head_takes_the_redis_password_from_the_environment() -> None:
    assert kuberay.head_command(0, gcs_fault_tolerance=True, usage_stats=False) == (
        "ulimit -n 65536; ray start --head --block --dashboard-agent-listen-port=52365 "
        "--dashboard-host=0.0.0.0 --disable-usage-stats --metrics-export-port=8080 --num-cpus=0 "
        "--redis-password=$REDIS_PASSWORD"
    )


def test_worker_command_joins_the_gcs_on_the_head() -> None:
    assert kuberay.worker_command("head", 1) == (
        "ulimit -n 65536; ray start --address=head:6379 --block --dashboard-agent-listen-port=52365 "
        "--metrics-export-port=8080 --num-cpus=1"
    )


def test_worker_command_carries_its_groups_node_labels() -> None:
    command = kuberay.worker_command(
        "172.29.213.11", 4, labels={"raybuild.io/app": "demo", "a.io/zone": "z1"}, usage_stats=False
    )
    assert command == (
        "ulimit -n 65536; ray start --address=172.29.213.11:6379 --block --dashboard-agent-listen-port=52365 "
        "--disable-usage-stats --labels=a.io/zone=z1,raybuild.io/app=demo --metrics-export-port=8080 "
        "--num-cpus=4"
    )


def test_gcs_head_env_matches_the_password_the_command_reads() -> None:
    env = kuberay.gcs_head_env("10.0.0.10:6379", "s3cret", "serve")
    assert env == {
        "RAY_REDIS_ADDRESS": "10.0.0.10:6379",
        "REDIS_PASSWORD": "s3cret",
        "RAY_external_storage_namespace": "serve",
    }
    assert f"--redis-password=${kuberay.REDIS_PASSWORD_ENV}" in kuberay.head_command(
        0, gcs_fault_tolerance=True
    )


# -- sizing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployments", "cpus"),
    [
        ([{"name": "A", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}], 2),  # at least 2
        ([{"name": "A", "num_replicas": 2, "ray_actor_options": {"num_cpus": 1.5}}], 4),  # 3 + Serve's own
        ([{"name": "A", "num_replicas": 1, "ray_actor_options": {"num_cpus": 2.2}}], 4),  # rounded up
        ([{"name": "A", "autoscaling": {"min_replicas": 3, "max_replicas": 9}}], 4),  # minimum, 1 CPU each
        ([{"name": "A", "autoscaling": {"min_replicas": 0, "max_replicas": 2}}], 2),  # one replica at least
        (
            [
                {"name": "A", "num_replicas": 2, "ray_actor_options": {"num_cpus": 1}},
                {"name": "B", "num_replicas": 3, "ray_actor_options": {"num_cpus": 1}},
            ],
            6,
        ),
    ],
)
def test_required_cpus_fits_every_replica_at_its_minimum(
    deployments: list[dict[str, Any]], cpus: int
) -> None:
    assert kuberay.required_cpus(make_app(deployments=deployments)) == cpus


def test_required_gpus_counts_every_replica_at_its_minimum() -> None:
    one = {"name": "A", "num_replicas": 1, "ray_actor_options": {"num_gpus": 0.5}}
    three = {"name": "B", "num_replicas": 3, "ray_actor_options": {"num_gpus": 1}}
    assert kuberay.required_gpus(make_app(deployments=[one])) == 1
    assert kuberay.required_gpus(make_app(deployments=[one, three])) == 4
    assert kuberay.required_gpus(make_app()) == 1, "a GPU test gives the head one GPU at least"


@pytest.mark.parametrize(
    ("hard", "expected"), [(resource.RLIM_INFINITY, 65536), (1_048_576, 65536), (4096, 4096)]
)
def test_nofile_limit_is_kuberays_within_the_hosts_hard_limit(
    monkeypatch: pytest.MonkeyPatch, hard: int, expected: int
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, hard))
    assert kuberay.nofile_limit() == expected


# -- docker run -------------------------------------------------------------------------------------------


def test_a_ray_node_with_ephemeral_loopback_ports_and_gpus() -> None:
    spec = NodeSpec(
        "raybuild-smoke-1",
        "img:1",
        "ray start",
        labels={"io.raybuild.purpose": "smoke", "io.raybuild.managed": "true"},
        env={"B": "2", "A": "1"},
        publish={8265: 0, 8000: 0},
        gpus=2,
        nofile=4096,
    )
    assert run_detached_args(spec) == [
        "run", "-d", "--name", "raybuild-smoke-1",
        "--label", "io.raybuild.managed=true", "--label", "io.raybuild.purpose=smoke",
        "--ulimit", "nofile=4096:4096", "--shm-size=1g",
        "--gpus", "count=2",
        "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8265",
        "-e", "A=1", "-e", "B=2",
        "img:1", "/bin/bash", "-c", "--", "ray start",
    ]  # fmt: skip


def test_a_cluster_node_with_a_fixed_ip_and_host_port_that_restarts() -> None:
    spec = NodeSpec(
        "c-head",
        "reg/ray-head:1",
        "ray start --head",
        network="c",
        ip="172.29.213.11",
        hostname="c-head",
        publish={8265: 40001},
        restart="on-failure",
        nofile=65536,
    )
    assert run_detached_args(spec) == [
        "run", "-d", "--name", "c-head", "--hostname", "c-head", "--network", "c", "--ip", "172.29.213.11",
        "--ulimit", "nofile=65536:65536", "--shm-size=1g", "--restart", "on-failure",
        "-p", "127.0.0.1:40001:8265",
        "reg/ray-head:1", "/bin/bash", "-c", "--", "ray start --head",
    ]  # fmt: skip


def test_a_container_with_the_images_own_command_and_no_network() -> None:
    spec = NodeSpec("store", "redis:1", shm_size=None, nofile=None, network="none", gpus="all")
    assert run_detached_args(spec) == [
        "run",
        "-d",
        "--name",
        "store",
        "--network",
        "none",
        "--gpus",
        "all",
        "redis:1",
    ]


def test_the_nofile_ulimit_defaults_to_the_hosts_share_of_kuberays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert NodeSpec("n", "img").nofile == 4096


def test_start_is_one_docker_run() -> None:
    engine = FakeEngine()
    spec = NodeSpec("n", "img:1", "ray start", labels=LABELS, nofile=1024)
    kuberay.start(engine, spec)
    assert [(c.verb, c.args) for c in engine.calls()] == [("run_detached", (spec,))]
    assert engine.containers == {"n": LABELS}


NO_DRIVER = (
    'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].'
)


def _created_then_failed(engine: FakeEngine, name: str, output: str = NO_DRIVER) -> None:
    """`docker run` that creates the container, then fails to start it (as a missing GPU driver does)."""
    engine.containers[name] = dict(LABELS)
    error = EngineError(f"docker run {name} (img:1) failed (exit 125)", returncode=125, output_tail=output)
    engine.script("run_detached", raises=error)


def test_a_gpu_request_without_the_nvidia_toolkit_is_gpu_unavailable() -> None:
    engine = FakeEngine()
    _created_then_failed(engine, "n")
    with pytest.raises(GpuUnavailable) as raised:
        kuberay.start(engine, NodeSpec("n", "img:1", labels=LABELS, gpus=1))
    assert (
        raised.value.message
        == "Docker could not give the container a GPU (no NVIDIA device driver in dockerd)"
    )
    assert raised.value.hint is not None and "nvidia-ctk runtime configure" in raised.value.hint
    assert engine.containers == {}, "a failed start leaves no container"


def test_a_failed_start_without_gpus_is_the_engines_error() -> None:
    engine = FakeEngine()
    _created_then_failed(engine, "n")
    with pytest.raises(EngineError) as raised:
        kuberay.start(engine, NodeSpec("n", "img:1", labels=LABELS))
    assert not isinstance(raised.value, GpuUnavailable)
    assert str(raised.value) == "docker run n (img:1) failed (exit 125)"
    assert engine.containers == {}


def test_a_name_conflict_never_removes_the_other_container() -> None:
    engine = FakeEngine()
    engine.containers["n"] = object_labels("b" * 16, "smoke")  # another checkout's, same name
    conflict = 'docker: Error response from daemon: Conflict. The container name "/n" is already in use.'
    engine.script("run_detached", raises=EngineError("docker run failed (exit 125)", output_tail=conflict))
    with pytest.raises(EngineError):
        kuberay.start(engine, NodeSpec("n", "img:1", labels=LABELS))
    assert list(engine.containers) == ["n"]
    assert engine.calls("remove_containers")[0].args == (LABELS,)  # by this checkout's labels only


def test_an_interrupted_start_removes_what_docker_run_had_created() -> None:
    engine = FakeEngine()
    engine.containers["n"] = dict(LABELS)  # created, then SIGTERM while `docker run` waited
    engine.script("run_detached", raises=Interrupted(15))
    with pytest.raises(Interrupted):
        kuberay.start(engine, NodeSpec("n", "img:1", labels=LABELS))
    assert engine.containers == {}


def test_running_removes_the_container_when_the_body_fails() -> None:
    engine = FakeEngine()
    with pytest.raises(RuntimeError), kuberay.running(engine, NodeSpec("n", "img:1", labels=LABELS)) as spec:
        assert "n" in engine.containers
        assert spec.name == "n"
        raise RuntimeError("the body failed")
    assert engine.containers == {}


def test_a_node_without_a_project_is_never_started() -> None:
    engine = FakeEngine()
    with (
        pytest.raises(ValueError, match=r"io\.raybuild\.project"),
        kuberay.running(engine, NodeSpec("n", "i")),
    ):
        pass
    assert engine.calls() == []


# -- probes -----------------------------------------------------------------------------------------------


RAYLET = "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
GCS = "wget -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success"


def test_a_head_passes_both_of_kuberays_probes_each_bounded_like_kubelet() -> None:
    engine = FakeEngine()
    engine.containers["head"] = {}
    assert kuberay.probe(engine, "head")
    assert [c.args for c in engine.calls()] == [
        ("head", "timeout", "2", "bash", "-c", RAYLET),
        ("head", "timeout", "2", "bash", "-c", GCS),
    ]
    assert [c["timeout"] for c in engine.calls()] == [10, 10], "docker exec itself has a deadline too"


def test_a_worker_has_the_raylet_probe_only() -> None:
    engine = FakeEngine()
    engine.containers["w"] = {}
    assert kuberay.probe(engine, "w", "worker")
    assert [c.args for c in engine.calls()] == [("w", "timeout", "2", "bash", "-c", RAYLET)]


def test_a_probe_that_times_out_fails() -> None:
    engine = FakeEngine()
    engine.containers["head"] = {}
    engine.script("exec", "head", "timeout", "2", "bash", "-c", GCS, returncode=124, output="")
    assert not kuberay.probe(engine, "head")
    assert kuberay.probe(engine, "head", "worker")


def test_healthz_needs_raylet_and_gcs_success() -> None:
    assert kuberay.healthz_ok(200, "raylet: success\ngcs: success")
    assert not kuberay.healthz_ok(503, "raylet: success\ngcs: GCS health check failed.")
    assert not kuberay.healthz_ok(200, "raylet: success")
    assert not kuberay.healthz_ok(0, "connection refused")


# -- the dashboard's REST API -----------------------------------------------------------------------------


DASHBOARD = "http://127.0.0.1:40001"
STATE = {
    "result": True,
    "data": {
        "result": {
            "total": 3,
            "result": [
                {"node_id": "a", "state": "ALIVE"},
                {"node_id": "b", "state": "ALIVE"},
                {"node_id": "c", "state": "DEAD"},
                "garbage",
            ],
        }
    },
}


@pytest.mark.parametrize(
    ("answer", "alive"),
    [
        ((200, json.dumps(STATE)), 2),
        ((200, "not json"), 0),
        ((500, json.dumps(STATE)), 0),
        ((0, "refused"), 0),
    ],
)
def test_alive_nodes_from_the_state_api(answer: tuple[int, str], alive: int) -> None:
    dashboard = FakeDashboard(nodes=answer)
    assert kuberay.alive_nodes(DASHBOARD, dashboard) == alive
    assert dashboard.calls == [("nodes", DASHBOARD, None, None)]


def test_deploy_puts_the_serve_config_like_kuberay() -> None:
    dashboard = FakeDashboard(deploy=(200, "{}"))
    body = {"applications": [{"name": "demo"}]}
    kuberay.deploy(DASHBOARD, body, ClusterError, api=dashboard)
    assert dashboard.calls == [("deploy", DASHBOARD, body, 60)]


@pytest.mark.parametrize("error", [ClusterError, SmokeTestError])
def test_a_refused_deploy_raises_the_callers_error(error: type[RaybuildError]) -> None:
    dashboard = FakeDashboard(deploy=(400, "bad config " + "x" * 400))
    with pytest.raises(error) as raised:
        kuberay.deploy(DASHBOARD, {}, error, "app 'demo': ", api=dashboard)
    assert type(raised.value) is error
    assert (
        str(raised.value)
        == "app 'demo': Serve deploy request returned 400: " + ("bad config " + "x" * 400)[:300]
    )


SERVE = {"applications": {"demo": {"status": "DEPLOY_FAILED", "message": "ImportError: x" + "y" * 400}}}


def test_serve_status_is_each_applications_status() -> None:
    dashboard = FakeDashboard.serving(SERVE["applications"])
    assert kuberay.serve_status(DASHBOARD, dashboard) == SERVE["applications"]
    status = kuberay.app_status(DASHBOARD, "demo", dashboard)
    assert status.startswith("status DEPLOY_FAILED: ImportError: xy")
    assert len(status) == len("status DEPLOY_FAILED: ") + 300
    assert kuberay.app_status(DASHBOARD, "other", dashboard) == "Serve reports no status for 'other'"
    assert [url for url, _, _ in dashboard.called("applications")] == [DASHBOARD] * 3


@pytest.mark.parametrize(
    "answer", [(503, "{}"), (200, "<html>"), (200, "null"), (200, '{"applications": []}'), (0, "refused")]
)
def test_serve_status_is_empty_when_the_dashboard_does_not_answer_it(answer: tuple[int, str]) -> None:
    dashboard = FakeDashboard(applications=answer)
    assert kuberay.serve_status(DASHBOARD, dashboard) == {}
    assert kuberay.app_status(DASHBOARD, "demo", dashboard) == "Serve reports no status for 'demo'"


def test_deploy_failures_take_the_failed_deployments_message_and_replica_log() -> None:
    body = failed_status()
    body["applications"]["fine"] = {"status": "RUNNING", "message": ""}
    dashboard = FakeDashboard(applications=(200, json.dumps(body)))
    [failure] = kuberay.deploy_failures("http://d", ["demo", "fine", "absent"], dashboard)
    assert (failure.app, failure.log_file) == ("demo", REPLICA_LOG)
    assert failure.message == CONSTRUCTOR_TRACEBACK  # the deployment's message, not the app's summary
    assert failure.describe().startswith("FileNotFoundError: model file /models/m.bin is missing")


def test_a_failure_without_a_traceback_is_described_by_serves_first_line() -> None:
    body = {
        "applications": {"demo": {"status": "DEPLOY_FAILED", "message": "Resources cannot be met.\nmore"}}
    }
    dashboard = FakeDashboard(applications=(200, json.dumps(body)))
    [failure] = kuberay.deploy_failures("http://d", ["demo"], dashboard)
    assert (failure.describe(), failure.log_file) == ("Resources cannot be met.", None)


def test_waiting_for_serve_stops_when_the_route_answers() -> None:
    dashboard = FakeDashboard(applications=(200, "{}"))
    answers = iter([False, False, True])
    outcome = kuberay.wait_for_serve(
        "http://d", ["demo"], lambda: next(answers), timeout=60, interval=0.01, api=dashboard
    )
    assert outcome == kuberay.ServeWait(answered=True)
    assert len(dashboard.called("applications")) == 2, "the status is read after every unanswered try"


def test_the_drain_hook_drains_through_ray_waits_for_serve_then_stops_ray() -> None:
    hook = kuberay.DRAIN_HOOK
    drain, wait, stop = hook.index("ray drain-node "), hook.index("for _ in"), hook.index("ray stop")
    assert drain < wait < stop and hook.endswith("ray stop")
    assert "--reason DRAIN_NODE_REASON_PREEMPTION" in hook
    assert f"--deadline-remaining-seconds {kuberay.DRAIN_DEADLINE_S}" in hook
    assert f"$(seq {kuberay.DRAIN_WAIT_S})" in hook
    # One bounded try at 127.0.0.1: wget's retries against localhost once outlasted the grace period.
    assert "wget -t 1 -T 2 -q -O /dev/null http://127.0.0.1:8000/-/healthz" in hook
    # The wait ends only when the proxy's port refuses and no replica is left on the node.
    assert "[ $? -eq 4 ] && ! grep -qs 'ServeReplic[a]' /proc/[0-9]*/cmdline && break" in hook
    assert kuberay.DRAIN_WAIT_S < kuberay.TERMINATION_GRACE_S


def test_a_local_worker_runs_the_hook_on_sigterm_then_ends_ray_start() -> None:
    command = kuberay.draining_command("ulimit -n 65536; ray start --block")
    assert command == (
        f"drain() {{ {kuberay.DRAIN_HOOK}; kill -TERM $ray 2>/dev/null; }}; trap drain TERM; "
        "ulimit -n 65536; ray start --block & ray=$!; wait $ray; wait $ray"
    )
