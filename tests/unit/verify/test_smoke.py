"""The smoke test's Serve config and head, and its container steps against the fake engine. KubeRay's command
lines, probes and REST calls are covered in test_kuberay.py, the GPU mode in test_gpu.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from raybuild import kuberay, platforms
from raybuild.config_apps import App
from raybuild.engine import Engine, run_detached_args
from raybuild.errors import SmokeTestError
from raybuild.records import BuiltImage, save_build_record
from raybuild.state import project_id
from raybuild.verify import smoke
from tests.unit.fakes import FakeDashboard, FakeEngine, make_app
from tests.unit.serve_failures import REPLICA_LOG, failed_status

if TYPE_CHECKING:  # only for annotations: "conftest" is ambiguous when unit and integration run together
    from tests.conftest import MainResult, TmpProject

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
    engine.containers["head"] = {}
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
    engine.containers["head"] = {}
    smoke.check_cuda_libraries(engine, "head", make_app("cuda"))
    ldd, imported = engine.calls("exec")
    assert ldd[:4] == ["exec", "head", "bash", "-c"] and "ldd" in ldd[4]
    assert imported == ["exec", "head", "python", "-c", "import cuda_app"]


PROJECT = "0123456789abcdef"


def test_the_head_is_kuberays_with_smoke_labels_and_its_dashboard_published() -> None:
    spec = smoke.head_spec("img:1", 3, PROJECT)
    assert spec.name.startswith("raybuild-smoke-")
    assert spec.command == kuberay.head_command(3)
    assert dict(spec.labels) == {
        "io.raybuild.managed": "true",
        "io.raybuild.project": PROJECT,
        "io.raybuild.purpose": "smoke",
    }
    assert dict(spec.publish) == {8265: 0}
    assert (spec.gpus, spec.network, spec.restart) == (0, None, None)
    assert smoke.head_spec("img:1", 3, PROJECT).name != spec.name, (
        "each smoke test has a container of its own"
    )


def test_a_gpu_head_asks_docker_and_ray_for_the_same_gpus() -> None:
    spec = smoke.head_spec("img:1", 2, PROJECT, gpus=2)
    assert spec.gpus == 2
    assert spec.command == kuberay.head_command(2, num_gpus=2)


FETCH = "wget -q -S -O- http://localhost:8000/demo/ 2>&1"


def test_smoke_test_deploys_through_the_dashboard_and_reads_the_route(tmp_project: TmpProject) -> None:
    app = tmp_project.load().apps[0]
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script(
        "exec", "*", "bash", "-c", FETCH, output="  HTTP/1.1 200 OK\n  content-type: text/plain\ndemo"
    )
    dashboard = FakeDashboard(deploy=(200, "{}"))  # the route answers at once: no status read
    result = smoke.smoke_test(app, "img:1", engine, project=PROJECT, timeout=5, dashboard_api=dashboard)
    assert (result.app, result.status, result.body, result.gpu) == ("demo", 200, "demo", False)
    body = {"applications": [smoke.serve_application(app)]}
    assert dashboard.calls == [("deploy", "http://127.0.0.1:49153", body, 60)]
    [run] = engine.calls("run_detached")
    assert run.args[0].command == kuberay.head_command(kuberay.required_cpus(app))
    probes = [call[-1] for call in engine.calls("exec") if call[2] == "timeout"]
    assert probes == [kuberay.RAYLET_PROBE, kuberay.GCS_PROBE], "KubeRay's probes, bounded, before the deploy"
    assert engine.containers == {}


def test_smoke_test_reports_a_failed_deploy_and_removes_the_container(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    dashboard = FakeDashboard(deploy=(500, "Internal Server Error"))
    with pytest.raises(SmokeTestError) as raised:
        smoke.smoke_test(config.apps[0], "img:1", engine, project=PROJECT, timeout=5, dashboard_api=dashboard)
    assert str(raised.value) == "app 'demo': Serve deploy request returned 500: Internal Server Error"
    assert engine.containers == {}


def test_smoke_test_names_the_apps_serve_status_when_the_route_never_answers(tmp_project: TmpProject) -> None:
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script("exec", "*", "bash", "-c", FETCH, returncode=1, output="HTTP/1.1 404 Not Found")
    dashboard = FakeDashboard.serving({"demo": {"status": "DEPLOYING", "message": "Deploying app 'demo'."}})
    with pytest.raises(SmokeTestError) as raised:
        smoke.smoke_test(
            tmp_project.load().apps[0], "img:1", engine, project=PROJECT, timeout=0.1, dashboard_api=dashboard
        )
    assert str(raised.value) == (
        "app 'demo': no HTTP 200 on /demo/ within 0s: status DEPLOYING: Deploying app 'demo'."
    )
    assert engine.containers == {}


@pytest.mark.parametrize(
    ("constructor", "expected"),
    [
        (
            True,
            "FileNotFoundError: model file /models/m.bin is missing (broken_app.py, line 5, in load_model)",
        ),
        (False, "ModuleNotFoundError: No module named 'not_a_module_anywhere' (importfail_app.py, line 1)"),
    ],
    ids=["exception in a constructor", "import error"],
)
def test_a_failed_deploy_stops_the_test_at_the_first_status_poll(
    tmp_project: TmpProject, constructor: bool, expected: str
) -> None:
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script("exec", "*", "bash", "-c", FETCH, returncode=1, output="wget: can't connect")
    engine.script("exec", "*", "tail", output="INFO replica -- Started initializing replica.")
    dashboard = FakeDashboard.serving(failed_status(constructor=constructor)["applications"])
    log = tmp_project.root / ".raybuild" / "logs" / "test-demo.log"
    with pytest.raises(SmokeTestError) as raised:
        # The call counts below check that it stopped at the first poll; the timeout bounds a regression.
        smoke.smoke_test(
            tmp_project.load().apps[0],
            "img:1",
            engine,
            project=PROJECT,
            timeout=60,
            log_path=log,
            dashboard_api=dashboard,
        )
    assert str(raised.value) == f"app 'demo': Serve could not deploy it: {expected}"
    assert f"are in {log}" in (raised.value.hint or "")
    assert "fix the app under apps/demo" in (raised.value.hint or "")
    assert len(dashboard.called("applications")) == 1, "one status read: the first one showed the failure"
    assert len([c for c in engine.calls("exec") if FETCH in c]) == 1
    saved = log.read_text()
    assert expected.split(" (")[0] in saved  # Serve's whole message, untruncated
    if constructor:
        assert f"{kuberay.RAY_LOGS_DIR}{REPLICA_LOG}" in saved
        assert "Started initializing replica." in saved
    assert engine.containers == {}


def test_a_head_that_never_passes_its_probes_is_reported_with_its_logs(tmp_project: TmpProject) -> None:
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script("exec", "*", "timeout", returncode=124)
    engine.script("logs", output="raylet died")
    with pytest.raises(SmokeTestError) as raised:
        smoke.smoke_test(tmp_project.load().apps[0], "img:1", engine, project=PROJECT, timeout=0.1)
    assert str(raised.value) == (
        "app 'demo': head never passed KubeRay's probes within 0s; last logs: 'raylet died'"
    )
    assert engine.containers == {}


def test_the_test_command_smoke_tests_the_given_image(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from raybuild.cli import test as test_command

    calls: list[tuple[str, str, bool, float, str]] = []

    def fake_smoke_test(app: App, image: str, engine: Engine, **options: Any) -> smoke.SmokeResult:
        calls.append((app.name, image, options["gpu"], options["timeout"], options["project"]))
        return smoke.SmokeResult(app.name, image, False, 1.5, 0.5, 200, "hi")

    monkeypatch.setattr(test_command, "smoke_test", fake_smoke_test)
    result = run_main("--config", str(tmp_project.config_path), "test", "demo", "--image", "img:1", "--json")
    assert result.exit_code == 0, result.stderr
    assert calls == [("demo", "img:1", False, 180.0, project_id(tmp_project.load()))]
    assert json.loads(result.stdout)["body"] == "hi"


def test_another_platforms_head_runs_under_emulation_with_its_platform() -> None:
    emulated = "linux/arm64" if platforms.native("linux/amd64") else "linux/amd64"
    spec = smoke.head_spec("img:1", 2, PROJECT, platform=emulated)
    assert run_detached_args(spec)[:6] == ["run", "-d", "--name", spec.name, "--platform", emulated]
    native = smoke.head_spec("img:1", 2, PROJECT)
    assert "--platform" not in run_detached_args(native)


def test_the_test_command_tests_every_platform_the_app_was_built_for(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from raybuild.cli import test as test_command

    config = tmp_project.load()
    refs = (("linux/amd64", "r/demo:a"), ("linux/arm64", "r/demo:b-arm64"))
    save_build_record(config, [BuiltImage("demo", "r/demo:ab", "sha256:2", "cpu", False, (), False, refs)])
    calls: list[tuple[str, str]] = []

    def fake_smoke_test(app: App, image: str, engine: Engine, **options: Any) -> smoke.SmokeResult:
        calls.append((image, options["platform"]))
        emulated = not platforms.native(options["platform"])
        return smoke.SmokeResult(
            app.name, image, False, 1.5, 0.5, 200, "hi", 0.0, options["platform"], emulated
        )

    monkeypatch.setattr(test_command, "smoke_test", fake_smoke_test)
    monkeypatch.setattr(platforms, "emulation_problem", lambda name: None)
    monkeypatch.setattr(FakeEngine, "ping", lambda self: None, raising=False)
    monkeypatch.setattr(test_command, "engine_for", lambda state: FakeEngine())
    result = run_main("--config", str(tmp_project.config_path), "test", "demo")
    assert result.exit_code == 0, result.stderr
    assert calls == [("r/demo:a", "linux/amd64"), ("r/demo:b-arm64", "linux/arm64")]
    assert "[linux/arm64, emulated]" in result.stdout.splitlines()[1]
    calls.clear()
    result = run_main(
        "--config", str(tmp_project.config_path), "test", "demo", "--platform", "linux/arm64", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert calls == [("r/demo:b-arm64", "linux/arm64")]
    assert json.loads(result.stdout)["emulated"] is True


def test_testing_a_platform_the_app_was_not_built_for_is_one_error(
    tmp_project: TmpProject, run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    from raybuild.cli import test as test_command

    config = tmp_project.load()
    save_build_record(config, [BuiltImage("demo", "r/demo:a", "sha256:2", "cpu", False)])
    monkeypatch.setattr(test_command, "engine_for", lambda state: FakeEngine())
    result = run_main("--config", str(tmp_project.config_path), "test", "demo", "--platform", "linux/arm64")
    assert result.exit_code != 0
    assert "app 'demo' was not built for linux/arm64 (built for linux/amd64)" in result.stderr


def test_a_head_that_exits_fails_at_once_not_at_the_timeout(tmp_project: TmpProject) -> None:
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script("exec", "*", "timeout", returncode=1)
    engine.script("container_state", returns={"Running": False})
    engine.script("logs", output="RuntimeError: Failed to start GCS.")
    with pytest.raises(SmokeTestError) as raised:
        # A timeout the test would never reach: the exit is noticed at the first poll.
        smoke.smoke_test(tmp_project.load().apps[0], "img:1", engine, project=PROJECT, timeout=3600)
    assert "the head exited before it passed KubeRay's probes" in str(raised.value)
    assert "Failed to start GCS" in str(raised.value)
    assert engine.containers == {}


def test_an_emulated_head_gives_its_gcs_longer_to_start() -> None:
    emulated = "linux/arm64" if platforms.native("linux/amd64") else "linux/amd64"
    assert dict(smoke.head_spec("img:1", 2, PROJECT, platform=emulated).env) == smoke.EMULATED_HEAD_ENV
    assert dict(smoke.head_spec("img:1", 2, PROJECT).env) == {}


def test_an_emulated_head_that_exits_during_start_up_is_started_again(tmp_project: TmpProject) -> None:
    emulated = "linux/arm64" if platforms.native("linux/amd64") else "linux/amd64"
    engine = FakeEngine()
    engine.script("published_port", returns=49153)
    engine.script("exec", "*", "timeout", returncode=1)
    engine.script("container_state", returns={"Running": False})
    engine.script("logs", output="Exception: The current node timed out during startup.")
    with pytest.raises(smoke.HeadExited):
        smoke.smoke_test(
            tmp_project.load().apps[0], "img:1", engine, project=PROJECT, timeout=3600, platform=emulated
        )
    # Ray's fixed 30 s raylet window: an emulated head gets its attempts, each in a new container.
    runs = engine.calls("run_detached")
    assert len(runs) == smoke.EMULATED_HEAD_ATTEMPTS
    assert len({run.args[0].name for run in runs}) == smoke.EMULATED_HEAD_ATTEMPTS
    assert engine.containers == {}
