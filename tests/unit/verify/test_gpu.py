"""GPU checks without a GPU: driver parsing, the driver table and its policy, detection with fake commands,
the GPU parts of the smoke test with a fake engine, and `raybuild test --gpu` where no GPU is present.

The real GPU run is tests/integration/test_gpu.py (marked `gpu`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast

import pytest

from raybuild import kuberay
from raybuild.config import load_config
from raybuild.config_apps import App
from raybuild.docker_verbs import DetachedContainer
from raybuild.engine import Engine, Result, run_detached_args
from raybuild.errors import EngineError, GpuUnavailable, SmokeTestError, UsageError
from raybuild.lock.cuda import CudaNeed
from raybuild.verify import gpu, smoke
from tests.conftest import REPO_ROOT, MainResult

BUNDLED = str(REPO_ROOT / "raybuild.toml")
SMI_TWO_GPUS = "570.86.15, NVIDIA H200\n570.86.15, NVIDIA H200\n"
RUNTIMES_NVIDIA = (
    '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"},'
    '"runc":{"path":"runc"}}'
)
RUNTIMES_PLAIN = '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}'
SMI_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
    "latest NVIDIA driver is installed and running.\n"
)


# -- versions and the driver table --------------------------------------------------------------------------


def test_parse_and_format_driver_versions() -> None:
    assert gpu.parse_version("570.86.15") == (570, 86, 15)
    assert gpu.parse_version("525.60.13") < gpu.parse_version("570.26")
    assert gpu.format_version((520, 61, 5)) == "520.61.05"
    assert gpu.format_version((570, 26)) == "570.26"


def test_driver_table_matches_nvidias_release_notes() -> None:
    # Table 3 of the CUDA Toolkit release notes: each toolkit's GA driver (Linux x86_64).
    assert gpu.MIN_DRIVER["12.0"] == (525, 60, 13)
    assert gpu.MIN_DRIVER["12.4"] == (550, 54, 14)
    assert gpu.MIN_DRIVER["12.8"] == (570, 26)
    assert gpu.MIN_DRIVER["12.9"] == (575, 51, 3)
    assert gpu.MIN_DRIVER["13.0"] == (580, 65, 6)
    assert "12.7" not in gpu.MIN_DRIVER, "CUDA 12.7 was never released"
    # Table 2: minor version compatibility, the first driver of each major.
    assert gpu.MIN_DRIVER_MAJOR == {"11": (450, 80, 2), "12": (525, 60, 13), "13": (580, 65, 6)}


def test_driver_table_rises_with_the_toolkit_and_starts_at_the_majors_minimum() -> None:
    versions = sorted(gpu.MIN_DRIVER, key=lambda v: tuple(map(int, v.split("."))))
    drivers = [gpu.MIN_DRIVER[v] for v in versions]
    assert drivers == sorted(drivers)
    for version, driver in gpu.MIN_DRIVER.items():
        assert driver >= gpu.MIN_DRIVER_MAJOR[version.split(".")[0]]


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [
        ("12.8", (570, 26)),
        ("11.8", (520, 61, 5)),
        ("12", (525, 60, 13)),
        ("12.10", (525, 60, 13)),  # a minor newer than the table: the major's minimum
        ("13", (580, 65, 6)),
        ("14.0", None),
    ],
)
def test_min_driver(cuda: str, driver: tuple[int, ...] | None) -> None:
    assert gpu.min_driver(cuda) == driver


def test_plain_cuda_wheels_need_the_majors_driver_and_torch_its_toolkits() -> None:
    cudart = CudaNeed("12.9", ("nvidia-cuda-runtime-cu12==12.9.79",))
    torch = CudaNeed("12.8", ("torch==2.9.0+cu128",), torch="12.8")
    assert gpu.required_driver(cudart) == (525, 60, 13)
    assert gpu.required_driver(torch) == (570, 26)
    gpu.check_driver("535.54.03", cudart)  # minor version compatibility
    gpu.check_driver("570.86.15", torch)
    gpu.check_driver("400.1", None)  # no CUDA wheels: any driver
    with pytest.raises(GpuUnavailable) as caught:
        gpu.check_driver("560.35.03", torch)
    assert caught.value.message == (
        "host driver 560.35.03 is too old for the app's torch built for CUDA 12.8: it needs 570.26 or newer"
    )
    with pytest.raises(GpuUnavailable) as caught:
        gpu.check_driver("520.61.05", cudart)
    assert caught.value.message == (
        "host driver 520.61.05 is too old for the app's CUDA 12.x wheels: it needs 525.60.13 or newer"
    )


def test_parse_nvidia_smi_reads_driver_and_name_per_gpu() -> None:
    assert gpu.parse_nvidia_smi(SMI_TWO_GPUS) == [("570.86.15", "NVIDIA H200")] * 2
    assert gpu.parse_nvidia_smi("No devices were found\n") == []


# -- detect() with fake commands ----------------------------------------------------------------------------


class FakeHost:
    """nvidia-smi, docker info and PATH lookups of a made-up host."""

    def __init__(
        self,
        smi: tuple[int, str] | None = (0, SMI_TWO_GPUS),
        runtimes: str = RUNTIMES_NVIDIA,
        hook: bool = False,
        nvml: gpu.GpuHost | None = None,
    ) -> None:
        self.smi = smi
        self.runtimes = runtimes
        self.hook = hook
        self.nvml_host = nvml
        self.commands: list[list[str]] = []

    def run(self, command: list[str]) -> tuple[int, str]:
        self.commands.append(command)
        if command[0] == "nvidia-smi":
            assert self.smi is not None, "nvidia-smi run although it is not installed"
            return self.smi
        raise AssertionError(f"unexpected command {command}")

    def docker_runtimes(self) -> tuple[int, str]:
        self.commands.append(["docker", "info"])
        return 0, self.runtimes

    def which(self, tool: str) -> str | None:
        if tool == "nvidia-smi":
            return "/usr/bin/nvidia-smi" if self.smi is not None else None
        return f"/usr/bin/{tool}" if tool == gpu.NVIDIA_HOOK and self.hook else None

    def detect(self) -> gpu.GpuHost:
        return gpu.detect(
            runner=self.run, runtimes=self.docker_runtimes, nvml=lambda: self.nvml_host, which=self.which
        )


def _unavailable(host: FakeHost) -> GpuUnavailable:
    with pytest.raises(GpuUnavailable) as caught:
        host.detect()
    return caught.value


def test_detect_without_nvidia_smi_or_nvml() -> None:
    error = _unavailable(FakeHost(smi=None))
    assert error.message == "no NVIDIA GPU here: no nvidia-smi, and NVML (libnvidia-ml.so.1) cannot be loaded"
    assert error.hint is not None


def test_detect_falls_back_to_nvml_without_nvidia_smi() -> None:
    host = FakeHost(smi=None, nvml=gpu.GpuHost("580.65.06", 1, source="NVML"))
    assert host.detect() == gpu.GpuHost("580.65.06", 1, source="NVML")
    assert [c[0] for c in host.commands] == ["docker"]


def test_detect_when_nvidia_smi_fails() -> None:
    error = _unavailable(FakeHost(smi=(9, SMI_NO_DRIVER)))
    assert error.message == (
        "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
        "driver. Make sure that the latest NVIDIA driver is installed and running."
    )


def test_detect_when_nvidia_smi_lists_no_gpu() -> None:
    assert _unavailable(FakeHost(smi=(0, "No devices were found\n"))).message == (
        "nvidia-smi lists no GPU: No devices were found"
    )


def test_detect_without_the_nvidia_container_runtime() -> None:
    error = _unavailable(FakeHost(runtimes=RUNTIMES_PLAIN))
    assert error.message == (
        "Docker cannot pass GPUs to containers: no nvidia runtime and no nvidia-container-runtime-hook"
    )
    assert error.hint is not None and "nvidia-ctk runtime configure" in error.hint


def test_detect_accepts_the_hook_that_dockerds_gpu_driver_calls() -> None:
    assert FakeHost(runtimes=RUNTIMES_PLAIN, hook=True).detect().gpus == 2


def test_detect_success() -> None:
    host = FakeHost()
    assert host.detect() == gpu.GpuHost("570.86.15", 2, ("NVIDIA H200", "NVIDIA H200"))
    assert host.commands[0] == gpu.NVIDIA_SMI_QUERY


def test_ensure_checks_the_driver_and_the_gpu_count() -> None:
    host = FakeHost(smi=(0, "560.35.03, NVIDIA L4\n"))
    kwargs: dict[str, Any] = {
        "runner": host.run,
        "runtimes": host.docker_runtimes,
        "which": host.which,
        "nvml": lambda: None,
    }
    assert gpu.ensure(CudaNeed("12.9", ()), 1, **kwargs).driver == "560.35.03"
    with pytest.raises(GpuUnavailable, match=r"too old for the app's torch built for CUDA 12\.8"):
        gpu.ensure(CudaNeed("12.8", (), torch="12.8"), 1, **kwargs)
    with pytest.raises(GpuUnavailable) as caught:
        gpu.ensure(None, 2, **kwargs)
    assert caught.value.message == "the app needs 2 GPUs at its minimum replicas; this host has 1"


# -- the smoke test's GPU mode, with a fake engine ----------------------------------------------------------


PROJECT = "0123456789abcdef"


class FakeEngine:
    def __init__(self, exec_output: tuple[int, str] = (0, ""), run_error: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.removed: list[str] = []
        self.exec_output = exec_output
        self.run_error = run_error

    def run_detached(self, container: DetachedContainer, *, what: str) -> None:
        self.calls.append(run_detached_args(container))
        if self.run_error is not None:
            raise EngineError("docker run failed (exit 125)", output_tail=self.run_error)

    def published_port(self, container: str, port: int) -> int:
        return 49153

    def release(self, labels: dict[str, str], *, name: str | None = None) -> None:
        assert labels["io.raybuild.project"] == PROJECT and name is not None
        self.removed.append(name)

    def exec(self, container: str, command: list[str], **_: Any) -> Result:
        return Result(command, *self.exec_output)


def _engine(fake: FakeEngine) -> Engine:
    return cast(Engine, fake)


def _bundled_cuda() -> App:
    return load_config(REPO_ROOT / "raybuild.toml").select(("cuda",))[0]


def test_the_head_requests_gpus_and_gives_ray_their_number() -> None:
    fake = FakeEngine()
    with kuberay.running(_engine(fake), smoke.head_spec("img:1", 2, PROJECT, gpus=2)) as head:
        pass
    run = fake.calls[0]
    assert run[run.index("--gpus") + 1] == "count=2"
    assert run[-1].endswith("--num-cpus=2 --num-gpus=2")
    assert fake.removed == [head.name]


def test_a_head_without_gpus_requests_none() -> None:
    fake = FakeEngine()
    with kuberay.running(_engine(fake), smoke.head_spec("img:1", 2, PROJECT)):
        pass
    assert "--gpus" not in fake.calls[0] and "--num-gpus" not in fake.calls[0][-1]


def test_docker_without_a_gpu_driver_is_gpu_unavailable() -> None:
    fake = FakeEngine(run_error='docker: Error response from daemon: could not select device driver "" '
                                "with capabilities: [[gpu]].")  # fmt: skip
    with (
        pytest.raises(GpuUnavailable) as caught,
        kuberay.running(_engine(fake), smoke.head_spec("img:1", 2, PROJECT, 1)),
    ):
        pass
    assert caught.value.message.startswith("Docker could not give the container a GPU")
    assert len(fake.removed) == 1


def test_required_gpus_counts_every_replica_at_its_minimum() -> None:
    app = _bundled_cuda()
    assert kuberay.required_gpus(app) == 1
    two = app.deployments[0].model_copy(update={"num_replicas": 3})
    assert kuberay.required_gpus(app.model_copy(update={"deployments": [two]})) == 3
    assert smoke.serve_application(app)["deployments"][0]["ray_actor_options"]["num_gpus"] == 1.0
    assert smoke.serve_application(app, cpu_mode=True)["deployments"][0]["ray_actor_options"]["num_gpus"] == 0


def test_gpu_resources_are_read_from_ray() -> None:
    resources = {"CPU": 3.0, "GPU": 1.0, "memory": 1e9}
    fake = FakeEngine((0, "2026 INFO connecting\nraybuild-cluster-resources=" + json.dumps(resources)))
    assert smoke.check_gpu_resources(_engine(fake), "head", _bundled_cuda(), 1) == 1.0


def test_ray_without_the_gpus_it_was_given_fails() -> None:
    fake = FakeEngine((0, 'raybuild-cluster-resources={"CPU": 3.0}'))
    with pytest.raises(SmokeTestError) as caught:
        smoke.check_gpu_resources(_engine(fake), "head", _bundled_cuda(), 1)
    assert caught.value.message == "app 'cuda': Ray reports 0 GPUs, the head was given 1"
    with pytest.raises(SmokeTestError, match=r"cannot read ray\.cluster_resources"):
        smoke.check_gpu_resources(_engine(FakeEngine((1, "ConnectionError"))), "head", _bundled_cuda(), 1)


# What torch's CUDA build links but the node provides (found in a real torch 2.9.1 image: NVSHMEM's and
# cuFile's transport plugins), and what the image itself must carry.
@pytest.mark.parametrize(
    "lib",
    ["libcuda.so.1", "libnvidia-ml.so.1", "libmlx5.so.1", "libibverbs.so.1", "librdmacm.so.1",
     "libucs.so.0", "libucp.so.0", "libfabric.so.1", "libpmix.so.2", "libmpi.so.40", "liboshmem.so.40"],
)  # fmt: skip
def test_node_provided_libraries_may_be_missing_from_the_image(lib: str) -> None:
    assert re.search(smoke.NODE_PROVIDED_LIBS, f"\t{lib} => not found")


@pytest.mark.parametrize("lib", ["libcudart.so.12", "libcublas.so.12", "libcudnn.so.9", "libnccl.so.2",
                                 "libstdc++.so.6", "libgomp.so.1"])  # fmt: skip
def test_the_images_own_libraries_must_resolve(lib: str) -> None:
    assert not re.search(smoke.NODE_PROVIDED_LIBS, f"\t{lib} => not found")


# -- `raybuild test --gpu` ----------------------------------------------------------------------------------


def _reason_here() -> str:
    try:
        gpu.detect()
    except GpuUnavailable as exc:
        return exc.message
    pytest.skip("this machine has a GPU; tests/integration/test_gpu.py runs `raybuild test cuda --gpu` here")


def test_gpu_test_without_a_gpu_is_one_error_line(run_main: Callable[..., MainResult]) -> None:
    reason = _reason_here()
    result = run_main("--config", BUNDLED, "test", "cuda", "--gpu")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {reason}"
    assert all(line.startswith("hint: ") for line in lines[1:]) and len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_gpu_test_can_skip_when_no_gpu_is_present(run_main: Callable[..., MainResult]) -> None:
    reason = _reason_here()
    result = run_main("--config", BUNDLED, "test", "cuda", "--gpu", "--skip-if-unavailable")
    assert result.exit_code == 0
    assert result.stdout == f"skipped: {reason}\n"
    result = run_main("--config", BUNDLED, "test", "cuda", "--gpu", "--skip-if-unavailable", "--json")
    assert json.loads(result.stdout) == {"app": "cuda", "skipped": reason}


def test_gpu_test_with_a_driver_too_old_for_the_lock(
    run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu, "detect", lambda *a, **k: gpu.GpuHost("520.61.05", 1))
    result = run_main("--config", BUNDLED, "test", "cuda", "--gpu")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "error: host driver 520.61.05 is too old for the app's CUDA 12.x wheels: it needs 525.60.13 or newer"
    )


def test_gpu_test_of_a_cpu_app_is_a_usage_error(run_main: Callable[..., MainResult]) -> None:
    result = run_main("--config", BUNDLED, "test", "hello", "--gpu")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "error: app 'hello' is a CPU app; --gpu is for apps with device = \"gpu\""
    )


# -- the GPU test's gate: run, skip or fail -----------------------------------------------------------------


def _cuda_app() -> App:
    (app,) = load_config(REPO_ROOT / "raybuild.toml").select(("cuda",))
    return app


NEED_12 = CudaNeed("12", ("nvidia-cuda-runtime-cu12==12.9.79",))


def test_ready_for_returns_the_host_that_can_run_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "detect", lambda *a, **k: gpu.GpuHost("570.86.15", 2))
    for skip in (False, True):
        host = gpu.ready_for(_cuda_app(), NEED_12, 2, Engine(), skip_if_unavailable=skip)
        assert host == gpu.GpuHost("570.86.15", 2)


def test_ready_for_skips_with_the_reason_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "detect", lambda *a, **k: gpu.GpuHost("570.86.15", 1))
    reason = "the app needs 2 GPUs at its minimum replicas; this host has 1"
    assert gpu.ready_for(_cuda_app(), NEED_12, 2, Engine(), skip_if_unavailable=True) == gpu.Skip(reason)
    with pytest.raises(GpuUnavailable, match=reason):
        gpu.ready_for(_cuda_app(), NEED_12, 2, Engine())


def test_ready_for_a_cpu_app_is_a_usage_error_even_when_skipping() -> None:
    (hello,) = load_config(REPO_ROOT / "raybuild.toml").select(("hello",))
    with pytest.raises(UsageError, match="'hello' is a CPU app"):
        gpu.ready_for(hello, None, 1, Engine(), skip_if_unavailable=True)
