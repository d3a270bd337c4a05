"""The smoke test's pure parts (KubeRay's command line, the Serve config, CPU sizing, status parsing) and its
container steps against the fake engine. The GPU mode is covered in test_gpu.py."""

from __future__ import annotations

import json
import resource
from typing import Any

import pytest

from raybuild.errors import SmokeTestError
from raybuild.verify import smoke
from tests.conftest import TmpProject
from tests.unit.fakes import FakeEngine, make_app

HEAD = (
    "ulimit -n 65536; ray start --head --block --dashboard-host=0.0.0.0 --dashboard-agent-listen-port=52365 "
    "--metrics-export-port=8080 --num-cpus="
)


def test_head_command_is_kuberays() -> None:
    assert smoke.kuberay_head_command(2) == HEAD + "2"
    assert smoke.kuberay_head_command(3.0) == HEAD + "3"
    assert smoke.kuberay_head_command(1.5) == HEAD + "1.5"
    assert smoke.kuberay_head_command(2, " --num-gpus=1") == HEAD + "2 --num-gpus=1"


# -- serve config -----------------------------------------------------------------------------------------

TWO_DEPLOYMENTS = [
    {
        "name": "Model",
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 1.5, "num_gpus": 0.5, "memory": 1_000_000},
    },
    {"name": "Ingress", "autoscaling": {"min_replicas": 1, "max_replicas": 4}},
]


def test_serve_application_mirrors_the_config() -> None:
    app = make_app("model", deployments=TWO_DEPLOYMENTS, env={"ZED": "1", "ALPHA": "a b"})
    assert smoke.serve_application(app) == {
        "name": "model",
        "import_path": "model_app:app",
        "route_prefix": "/model",
        "deployments": [
            {
                "name": "Model",
                "num_replicas": 2,
                "ray_actor_options": {"num_cpus": 1.5, "num_gpus": 0.5, "memory": 1_000_000},
            },
            {"name": "Ingress", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}},
        ],
        "runtime_env": {"env_vars": {"ALPHA": "a b", "ZED": "1"}},
    }


def test_serve_application_in_cpu_mode_asks_for_no_gpus() -> None:
    app = make_app("model", deployments=TWO_DEPLOYMENTS)
    application = smoke.serve_application(app, cpu_mode=True, label_selector={"raybuild.io/app": "model"})
    model, ingress = application["deployments"]
    assert model["ray_actor_options"] == {
        "num_cpus": 1.5,
        "num_gpus": 0.0,
        "memory": 1_000_000,
        "label_selector": {"raybuild.io/app": "model"},
    }
    assert ingress["ray_actor_options"] == {"label_selector": {"raybuild.io/app": "model"}}
    assert "runtime_env" not in application


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
    assert smoke.required_cpus(make_app(deployments=deployments)) == cpus


@pytest.mark.parametrize(
    ("hard", "expected"), [(resource.RLIM_INFINITY, 65536), (1_048_576, 65536), (4096, 4096)]
)
def test_nofile_limit_is_kuberays_within_the_hosts_hard_limit(
    monkeypatch: pytest.MonkeyPatch, hard: int, expected: int
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, hard))
    assert smoke.nofile_limit() == expected


def test_serve_status_names_the_apps_status_and_message() -> None:
    text = json.dumps(
        {"applications": {"demo": {"status": "DEPLOY_FAILED", "message": "ImportError: x" + "y" * 400}}}
    )
    status = smoke._serve_status(text, "demo")
    assert status.startswith("status DEPLOY_FAILED: ImportError: xy")
    assert len(status) == len("status DEPLOY_FAILED: ") + 300


def test_serve_status_falls_back_to_the_raw_text() -> None:
    assert smoke._serve_status('{"applications": {}}', "demo") == '{"applications": {}}'
    assert smoke._serve_status("<html>" + "x" * 500, "demo") == ("<html>" + "x" * 500)[:300]
    assert smoke._serve_status("null", "demo") == "null"


# -- inside the container, with the fake engine -----------------------------------------------------------

LDD_MISSING = "/opt/app/site-packages/torch/lib/libtorch_cuda.so: \tlibcudnn.so.9 => not found\n"


def test_unresolved_shared_libraries_name_the_library() -> None:
    engine = FakeEngine()
    engine.script("exec", "head", "bash", returncode=1, output=LDD_MISSING)
    with pytest.raises(SmokeTestError) as raised:
        smoke.check_cuda_libraries(engine, "head", make_app("cuda"))
    assert str(raised.value) == f"app 'cuda': unresolved shared libraries: {LDD_MISSING.strip()}"
    assert engine.calls("exec", "head", "python") == [], "no import attempt after a failed ldd check"


def test_a_failed_import_is_reported_with_its_last_lines() -> None:
    engine = FakeEngine()
    engine.script(
        "exec", "head", "python", returncode=1, output="Traceback ...\nImportError: libcudart.so.12"
    )
    with pytest.raises(SmokeTestError) as raised:
        smoke.check_cuda_libraries(engine, "head", make_app("cuda", import_path="serve_cuda.app:app"))
    assert str(raised.value) == (
        "app 'cuda': `import serve_cuda.app` failed: Traceback ...\nImportError: libcudart.so.12"
    )


def test_resolved_libraries_and_a_clean_import_pass() -> None:
    engine = FakeEngine()
    smoke.check_cuda_libraries(engine, "head", make_app("cuda"))
    ldd, imported = engine.calls("exec")
    assert ldd[:4] == ["exec", "head", "bash", "-c"] and "ldd" in ldd[4]
    assert imported == ["exec", "head", "python", "-c", "import cuda_app"]


def test_head_container_runs_kuberays_command_with_labels_and_is_always_removed() -> None:
    engine = FakeEngine()
    engine.script("port", output="127.0.0.1:49153\n")
    inside: list[tuple[str, int, bool]] = []

    def use_and_fail() -> None:
        with smoke.head_container(engine, "img:1", 3, env={"B": "2", "A": "1"}) as (name, port):
            inside.append((name, port, name in engine.containers))
            raise RuntimeError("the body failed")

    with pytest.raises(RuntimeError):
        use_and_fail()
    [(name, port, running)] = inside
    assert (port, running) == (49153, True)
    assert engine.calls("rm", "--force", "--volumes", name), "removed after the body failed"
    assert engine.containers == {}
    [run] = engine.calls("run")
    limit = smoke.nofile_limit()
    assert run[run.index("--ulimit") + 1] == f"nofile={limit}:{limit}"
    assert run[run.index("-p") + 1] == "127.0.0.1::8265"
    assert run[run.index("-e") : run.index("-e") + 4] == ["-e", "A=1", "-e", "B=2"]
    assert run[-5:] == ["img:1", "/bin/bash", "-c", "--", HEAD + "3"]
    assert "io.raybuild.managed=true" in run and "io.raybuild.purpose=smoke" in run


def test_probe_needs_both_of_kuberays_probes() -> None:
    engine = FakeEngine()
    assert smoke.probe(engine, "head")
    assert [c[4] for c in engine.calls("exec")] == [smoke.RAYLET_PROBE, smoke.GCS_PROBE]
    engine.script("exec", "head", "bash", "-c", smoke.GCS_PROBE, returncode=1)
    assert not smoke.probe(engine, "head")


def test_smoke_test_deploys_through_the_dashboard_and_reads_the_route(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_project.load()
    app = config.apps[0]
    engine = FakeEngine()
    engine.script("port", output="127.0.0.1:49153\n")
    fetch = "wget -q -S -O- http://localhost:8000/demo/ 2>&1"
    engine.script(
        "exec", "*", "bash", "-c", fetch, output="  HTTP/1.1 200 OK\n  content-type: text/plain\ndemo"
    )
    requests: list[tuple[str, str, Any]] = []

    def http(method: str, url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, str]:
        requests.append((method, url, payload))
        return 200, "{}"

    monkeypatch.setattr(smoke, "http", http)
    result = smoke.smoke_test(config, app, "img:1", engine, timeout=5)
    assert (result.app, result.status, result.body, result.gpu) == ("demo", 200, "demo", False)
    assert requests == [
        (
            "PUT",
            "http://127.0.0.1:49153/api/serve/applications/",
            {"applications": [smoke.serve_application(app)]},
        )
    ]
    assert engine.containers == {}


def test_smoke_test_reports_a_failed_deploy_and_removes_the_container(
    tmp_project: TmpProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_project.load()
    engine = FakeEngine()
    engine.script("port", output="127.0.0.1:49153\n")
    monkeypatch.setattr(smoke, "http", lambda *args, **kwargs: (500, "Internal Server Error"))
    with pytest.raises(SmokeTestError) as raised:
        smoke.smoke_test(config, config.apps[0], "img:1", engine, timeout=5)
    assert str(raised.value) == "app 'demo': Serve deploy request returned 500: Internal Server Error"
    assert engine.containers == {}
