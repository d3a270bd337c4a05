"""Cold starts against the fake engine: the warm node's phases, its failure messages and its cleanup, and the
cold node's head. A fake `http`, the fake dashboard and a fake clock stand in for Ray; nothing here starts a
container."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raybuild import kuberay
from raybuild.errors import EngineError, SmokeTestError
from raybuild.verify import coldstart
from raybuild.verify.coldstart import ColdNode, WarmStart, warm_start
from tests.unit.fakes import FakeDashboard, FakeEngine, docker_runs, make_app
from tests.unit.serve_failures import failed_status

PROJECT = "0123456789abcdef"

AGENT, DASHBOARD, SERVE = "http://127.0.0.1:40001", "http://127.0.0.1:40002", "http://127.0.0.1:40003"
HEALTHZ = f"{AGENT}/api/healthz"
GCS = f"{DASHBOARD}/api/gcs_healthz"
NODES = f"{DASHBOARD}/api/v0/nodes?limit=100"
APPS = f"{DASHBOARD}/api/serve/applications/"
ROUTE = f"{SERVE}/demo/"
TWO_ALIVE = json.dumps({"data": {"result": {"result": [{"state": "ALIVE"}, {"state": "ALIVE"}]}}})
HEALTHY = "raylet: success\ngcs: success"


# The dashboard's calls as they go on the wire, for the one request log of the warm node.
WIRE = {"nodes": ("GET", NODES), "applications": ("GET", APPS), "deploy": ("PUT", APPS)}
REFUSED = (0, "connection refused")


class ClockedDashboard(FakeDashboard):
    """The fake dashboard, its answers taking their time on the Ray fake's clock."""

    def __init__(self, ray: Ray) -> None:
        super().__init__(
            nodes=(200, TWO_ALIVE),
            deploy=(200, "{}"),
            applications=(200, '{"applications": {"demo": {"status": "DEPLOYING", "message": "waiting"}}}'),
        )
        self.ray = ray

    def answer(
        self, call: str, url: str, config: Any = None, timeout: float | None = None
    ) -> tuple[int, str]:
        assert url == DASHBOARD
        self.ray.requests.append(WIRE[call])
        self.ray.now += self.ray.delays.get(WIRE[call][1], 0.0)
        return super().answer(call, url, config, timeout)


class Ray:
    """Answers the warm node's requests, and moves a clock on by how long each answer took to come."""

    def __init__(self) -> None:
        self.now = 100.0
        self.requests: list[tuple[str, str]] = []
        self.answers: dict[tuple[str, str], tuple[int, str]] = {
            ("GET", HEALTHZ): (200, HEALTHY),
            ("GET", GCS): (200, "success"),
            ("GET", ROUTE): (200, "hello"),
        }
        self.dashboard = ClockedDashboard(self)
        # Seconds until each answer: the head is healthy after 3 s, the worker joins after 2 s, the route
        # answers 1.25 s after the deploy request was sent; the dashboard's 0.5 s is timed by no phase.
        self.delays = {HEALTHZ: 3.0, GCS: 0.5, NODES: 2.0, APPS: 1.0, ROUTE: 0.25}

    def monotonic(self) -> float:
        return self.now

    def http(self, method: str, url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, str]:
        self.requests.append((method, url))
        self.now += self.delays.get(url, 0.0)
        return self.answers.get((method, url), (0, "connection refused"))


@pytest.fixture
def ray(monkeypatch: pytest.MonkeyPatch) -> Ray:
    fake = Ray()
    monkeypatch.setattr(coldstart, "http", fake.http)
    monkeypatch.setattr(coldstart, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def engine() -> FakeEngine:
    engine = FakeEngine()
    for port, url in ((52365, AGENT), (8265, DASHBOARD), (8000, SERVE)):
        engine.script("published_port", "*", port, returns=int(url.rsplit(":", 1)[1]))
    engine.script("logs", output="last log line")
    return engine


def test_warm_start_times_head_worker_and_serve_each_from_its_own_start(ray: Ray, engine: FakeEngine) -> None:
    assert warm_start(
        engine, make_app(), "img:1", project=PROJECT, dashboard_api=ray.dashboard, cpu_mode=False, timeout=5
    ) == WarmStart(3.0, 2.0, 1.25)
    assert ray.requests == [
        ("GET", HEALTHZ),
        ("GET", GCS),
        ("GET", NODES),
        ("PUT", APPS),
        ("GET", ROUTE),
    ]


def test_warm_start_runs_kuberays_head_and_worker_on_a_network_of_their_own(
    ray: Ray, engine: FakeEngine
) -> None:
    warm_start(
        engine, make_app(), "img:1", project=PROJECT, dashboard_api=ray.dashboard, cpu_mode=False, timeout=5
    )
    [create] = engine.calls("create_network")
    network = create[1]
    assert network.startswith("raybuild-measure-")
    head, worker = docker_runs(engine)
    assert head[head.index("--network") + 1] == worker[worker.index("--network") + 1] == network
    assert head[-1] == kuberay.head_command(kuberay.required_cpus(make_app()))
    assert worker[-1] == kuberay.worker_command(f"{network}-head", 1), "the worker finds the head by name"
    published = [head[i + 1] for i, arg in enumerate(head) if arg == "-p"]
    assert published == ["127.0.0.1::8000", "127.0.0.1::8265", "127.0.0.1::52365"]
    assert "-p" not in worker and "--gpus" not in head + worker
    assert engine.containers == {} and engine.networks == {}
    expected = [f"{network}-worker", f"{network}-head", network]
    assert engine.removed == expected, "containers before their network"
    for run in (head, worker):
        assert f"io.raybuild.project={PROJECT}" in run and "io.raybuild.purpose=measure" in run


def test_warm_start_in_gpu_mode_gives_every_node_all_gpus(ray: Ray, engine: FakeEngine) -> None:
    warm_start(
        engine,
        make_app(),
        "img:1",
        project=PROJECT,
        dashboard_api=ray.dashboard,
        cpu_mode=False,
        gpu=True,
        timeout=5,
    )
    for run in docker_runs(engine):
        assert run[run.index("--gpus") + 1] == "all"


def test_warm_start_deploys_the_app_with_a_reachable_proxy(ray: Ray, engine: FakeEngine) -> None:
    app = make_app("demo", device="gpu")
    warm_start(engine, app, "img:1", project=PROJECT, dashboard_api=ray.dashboard, cpu_mode=True, timeout=5)
    assert [config for _, config, _ in ray.dashboard.called("deploy")] == [
        {
            "http_options": {"host": "0.0.0.0", "port": 8000},
            "applications": [coldstart.serve_application(app, cpu_mode=True)],
        }
    ]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (("GET", HEALTHZ), "app 'demo': head not healthy within 0s: last log line"),
        (("GET", GCS), "app 'demo': dashboard never answered: last log line"),
        (("GET", NODES), "app 'demo': worker never joined: last log line"),
        (("PUT", APPS), "app 'demo': Serve deploy request returned 0: connection refused"),
        (("GET", ROUTE), f"app 'demo': no HTTP 200 on {ROUTE} within 0s: status DEPLOYING: waiting"),
    ],
)
def test_a_failed_phase_says_which_and_leaves_nothing_behind(
    ray: Ray, engine: FakeEngine, answer: tuple[str, str], message: str
) -> None:
    dashboard_call = next((call for call, wire in WIRE.items() if wire == answer), None)
    if dashboard_call is not None:
        ray.dashboard.answers[dashboard_call] = [REFUSED]
    else:
        del ray.answers[answer]
    with pytest.raises(SmokeTestError) as raised:
        warm_start(
            engine,
            make_app(),
            "img:1",
            project=PROJECT,
            dashboard_api=ray.dashboard,
            cpu_mode=False,
            timeout=0.05,
        )
    assert str(raised.value) == message
    assert engine.containers == {} and engine.networks == {}


def test_a_worker_that_cannot_start_leaves_nothing_behind(
    ray: Ray, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coldstart, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex="0123456789")))
    worker = "raybuild-measure-01234567-worker"
    failed = EngineError(f"docker run {worker} (img:1) failed (exit 125)", output_tail="No such image: img:1")
    engine.script("run_detached", worker, raises=failed)
    with pytest.raises(EngineError) as raised:
        warm_start(
            engine,
            make_app(),
            "img:1",
            project=PROJECT,
            dashboard_api=ray.dashboard,
            cpu_mode=False,
            timeout=5,
        )
    assert str(raised.value) == f"docker run {worker} (img:1) failed (exit 125)"
    assert engine.containers == {} and engine.networks == {}
    assert "raybuild-measure-01234567-head" in engine.removed


# -- the cold node ----------------------------------------------------------------------------------------


@pytest.fixture
def cold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ColdNode, FakeEngine]:
    """A cold node whose daemon is the fake engine."""
    node_engine = FakeEngine()
    monkeypatch.setattr(ColdNode, "node", property(lambda self: node_engine))
    return ColdNode(FakeEngine(), PROJECT, root=tmp_path), node_engine


def test_the_cold_head_runs_without_a_network_until_kuberays_probes_pass(
    cold: tuple[ColdNode, FakeEngine],
) -> None:
    node, engine = cold
    assert node.head(make_app(), "127.0.0.1:5000/m/demo:1", timeout=5) >= 0
    [run] = docker_runs(engine)
    assert run[run.index("--network") + 1] == "none"
    assert "-p" not in run and "--gpus" not in run
    assert run[-1] == kuberay.head_command(kuberay.required_cpus(make_app()))
    assert dict(engine.containers) == {}
    probes = [call[2:] for call in engine.calls("exec")]
    assert probes == [
        ["timeout", "2", "bash", "-c", kuberay.RAYLET_PROBE],
        ["timeout", "2", "bash", "-c", kuberay.GCS_PROBE],
    ]


def test_a_cold_head_that_never_passes_its_probes_is_removed(cold: tuple[ColdNode, FakeEngine]) -> None:
    node, engine = cold
    engine.script("exec", "*", "timeout", returncode=124)
    engine.script("logs", output="GCS failed to start")
    with pytest.raises(SmokeTestError) as raised:
        node.head(make_app(), "ref:1", gpu=True, timeout=0.05)
    assert str(raised.value) == (
        "app 'demo': cold-node head never passed KubeRay's probes within 0s: GCS failed to start"
    )
    [run] = docker_runs(engine)
    assert run[run.index("--gpus") + 1] == "all"
    assert engine.containers == {}


def test_clearing_the_cold_node_sweeps_this_projects_leftovers_and_every_image(
    cold: tuple[ColdNode, FakeEngine],
) -> None:
    node, engine = cold
    engine.containers["left"] = coldstart.measure_labels(PROJECT)
    engine.containers["another-projects"] = coldstart.measure_labels("f" * 16)
    a, b = "a" * 64, "b" * 64
    engine.script("image_ids", returns=[f"sha256:{a}", f"sha256:{b}", f"sha256:{a}"])
    node.clear()
    assert list(engine.containers) == ["another-projects"]
    assert [c.args for c in engine.calls("remove_images")] == [([a, b],)]


def test_clearing_the_cold_node_removes_no_image_on_an_answer_it_cannot_read(
    cold: tuple[ColdNode, FakeEngine],
) -> None:
    node, engine = cold
    engine.script("image_ids", returns=["Error", "response", "from", "daemon"])
    with pytest.raises(EngineError, match="not an object ID"):
        node.clear()
    assert engine.calls("remove_images") == []


def test_the_cold_node_pulls_within_the_deadline(cold: tuple[ColdNode, FakeEngine]) -> None:
    node, engine = cold
    engine.remote["127.0.0.1:5000/ns/demo-measure:1"] = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    node.pull("127.0.0.1:5000/ns/demo-measure:1", deadline=42)
    (pulled,) = engine.calls("pull")
    assert pulled.args == ("127.0.0.1:5000/ns/demo-measure:1",) and pulled["timeout"] == 42


def test_a_failed_deploy_stops_the_warm_start_and_keeps_the_traceback(
    ray: Ray, engine: FakeEngine, tmp_path: Path
) -> None:
    ray.dashboard.answers["applications"] = [(200, json.dumps(failed_status()))]
    del ray.answers[("GET", ROUTE)]
    engine.script("exec", "*", "tail", output="replica log line")
    log = tmp_path / "measure-demo.log"
    with pytest.raises(SmokeTestError) as raised:
        warm_start(
            engine,
            make_app(),
            "img:1",
            project=PROJECT,
            dashboard_api=ray.dashboard,
            cpu_mode=False,
            timeout=60,
            log_path=log,
        )
    assert str(raised.value) == (
        "app 'demo': Serve could not deploy it: "
        "FileNotFoundError: model file /models/m.bin is missing (broken_app.py, line 5, in load_model)"
    )
    assert ray.requests.count(("GET", APPS)) == 1, "stopped at the first status read"
    assert "replica log line" in log.read_text()
    assert engine.containers == {} and engine.networks == {}
