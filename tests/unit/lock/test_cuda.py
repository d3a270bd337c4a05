"""CUDA-aware locking: which CUDA the locked wheels need, the lockfile's CUDA line, torch variants.

Resolvers are faked (they write a given lock body); the `network` tests at the end run the real uv.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from raybuild.config import LoadedConfig
from raybuild.errors import ConfigError, LockError
from raybuild.lock import cuda
from raybuild.lock import resolve as locking
from raybuild.runner import Result
from tests.conftest import MainResult, TmpProject

CUDA12_LOCK = """\
numpy==2.4.6 \\
    --hash=sha256:aaaa
nvidia-cublas-cu12==12.9.1.4 \\
    --hash=sha256:bbbb
nvidia-cuda-runtime-cu12==12.9.79 \\
    --hash=sha256:cccc
    # via -r cuda.in
ray==2.60.0 \\
    --hash=sha256:1111
"""
MIXED_LOCK = "nvidia-cuda-runtime-cu12==12.9.79 \\\n    --hash=sha256:cc\ncupy-cuda11x==13.6.0\nray==2.60.0\n"
GPU_APP = """
[[apps]]
name = "gpu"
path = "apps/gpu"
requirements = "apps/gpu/requirements.in"
device = "gpu"
import_path = "gpu_app:app"
route_prefix = "/gpu"

[[apps.deployments]]
name = "Gpu"
ray_actor_options = { num_gpus = 1 }
"""
# What uv 0.13.9 prints when --torch-backend needs the PyTorch index and it does not resolve (checked here).
UV_TORCH_INDEX_DOWN = """\
error: Request failed after 3 retries in 8.7s
  cause: Failed to fetch: https://download.pytorch.org/whl/cpu/torch/
  cause: error sending request for url (https://download.pytorch.org/whl/cpu/torch/)
  cause: client error (Connect)
  cause: dns error
"""


def pins(text: str) -> dict[str, str]:
    return locking.parse_pins(text)


# -- what the wheels say ------------------------------------------------------------------------------------


def majors(text: str) -> set[str]:
    return {evidence.major for evidence in cuda.cuda_evidence(pins(text))}


def test_cuda_evidence_reads_nvidia_cupy_jax_and_torch_wheels() -> None:
    text = (
        "nvidia-cublas-cu12==12.9.1.4\n"
        "nvidia-cuda-runtime-cu12==12.9.79\n"
        "cupy-cuda12x==13.6.0\n"
        "jax-cuda12-plugin==0.7.2\n"
        "torch==2.9.0+cu128\n"
        "numpy==2.4.6\n"
    )
    assert majors(text) == {"12"}
    assert [e.pin for e in cuda.cuda_evidence(pins(text))] == [
        "cupy-cuda12x==13.6.0",
        "jax-cuda12-plugin==0.7.2",
        "nvidia-cublas-cu12==12.9.1.4",
        "nvidia-cuda-runtime-cu12==12.9.79",
        "torch==2.9.0+cu128",
    ]
    assert majors("nvidia-cudnn-cu11==8.9.6\ntorch==2.9.0+cu118\n") == {"11"}
    assert majors("numpy==2.4.6\ntorch==2.9.0+cpu\n") == set()


@pytest.mark.parametrize(
    ("text", "version", "torch"),
    [
        # the runtime wheel's version is the toolkit's: 12.9.79 is CUDA 12.9
        ("nvidia-cuda-runtime-cu12==12.9.79\nnvidia-cublas-cu12==12.9.1.4\n", "12.9", None),
        # torch's local version names major and minor
        ("torch==2.9.0+cu128\n", "12.8", "12.8"),
        ("torch==2.9.0+cu130\ntorchvision==0.24.0+cu130\n", "13.0", "13.0"),
        ("torch==2.7.1+cu118\n", "11.8", "11.8"),
        # PyPI's torch has no local version: its CUDA is that of the runtime wheel it pins
        ("torch==2.9.1\nnvidia-cuda-runtime-cu12==12.8.90\nnvidia-cudnn-cu12==9.10.2.21\n", "12.8", "12.8"),
        # a newer runtime than torch's own: the newest minor is recorded, torch keeps its own
        ("torch==2.9.0+cu128\nnvidia-cuda-runtime-cu12==12.9.79\n", "12.9", "12.8"),
        # only the major is known
        ("cupy-cuda12x==13.6.0\n", "12", None),
        ("nvidia-cublas-cu12==12.9.1.4\nnvidia-nccl-cu12==2.27.3\n", "12", None),
        # CUDA 13 wheels drop the suffix; library wheels (cuFFT 12.2 here) carry versions of their own
        (
            "cuda-toolkit==13.2.2\nnvidia-cuda-runtime==13.2.86\nnvidia-cufft==12.2.0.57\n"
            "nvidia-cublas==13.4.1.3\nnvidia-cudnn-cu13==9.26.0.51\ncuda-bindings==13.5.0\n",
            "13.2",
            None,
        ),
    ],
)
def test_cuda_need_reads_major_and_minor(text: str, version: str, torch: str | None) -> None:
    need = cuda.cuda_need(pins(text), "demo")
    assert need is not None
    assert (need.version, need.torch) == (version, torch)
    assert need.major == version.split(".")[0]


def test_cuda_need_names_the_wheels_that_set_the_version() -> None:
    need = cuda.cuda_need(pins(CUDA12_LOCK), "demo")
    assert need == cuda.CudaNeed(version="12.9", pins=("nvidia-cuda-runtime-cu12==12.9.79",))


def test_cuda_need_without_cuda_wheels_is_none() -> None:
    assert cuda.cuda_need(pins("numpy==2.4.6\ntorch==2.9.0+cpu\nnvidia-ml-py==13.580.82\n"), "demo") is None


def test_mixed_majors_are_refused_naming_a_wheel_of_each() -> None:
    with pytest.raises(LockError) as caught:
        cuda.cuda_need(pins(MIXED_LOCK), "demo")
    assert caught.value.message == (
        "app 'demo': its locked wheels mix CUDA majors 11, 12 "
        "(cupy-cuda11x==13.6.0, nvidia-cuda-runtime-cu12==12.9.79)"
    )
    assert caught.value.hint is not None


def test_recorded_reads_the_header_only() -> None:
    assert cuda.recorded("# one\n# CUDA: 12.9\n# raybuild-inputs-sha256: x\nnumpy==1\n") == "12.9"
    assert cuda.recorded("# one\nnumpy==1\n# CUDA: 12.9\n") is None
    assert cuda.header_line(None) == "# CUDA: none\n"


# -- lockfiles of a GPU app ---------------------------------------------------------------------------------


class BodyResolver:
    """Stands in for uv: writes ``body`` as the compiled lock, and remembers each command."""

    def __init__(self, body: str = CUDA12_LOCK) -> None:
        self.body = body
        self.commands: list[list[str]] = []
        self.fail_with: str | None = None

    def __call__(self, command: list[str]) -> Result:
        self.commands.append(command)
        if self.fail_with is not None:
            return Result(command, 1, "", self.fail_with)
        Path(command[command.index("-o") + 1]).write_text(self.body)
        return Result(command, 0, "", "")


@pytest.fixture
def gpu_project(tmp_project: TmpProject) -> TmpProject:
    tmp_project.add_app("gpu", "nvidia-cuda-runtime-cu12\n")
    tmp_project.append_config(GPU_APP)
    return tmp_project


def lock_all(project: TmpProject, body: str = CUDA12_LOCK) -> tuple[LoadedConfig, list[locking.LockResult]]:
    config = project.load()
    return config, locking.lock(config, config.apps, runner=BodyResolver(body))


def test_gpu_lockfile_records_its_cuda_between_target_and_hash(gpu_project: TmpProject) -> None:
    config, results = lock_all(gpu_project)
    gpu = config.select(("gpu",))[0]
    lines = config.lockfile(gpu).read_text().splitlines()
    assert lines[2] == "# Target: Python 3.11, x86_64-manylinux_2_36, Ray 2.60.0, resolver uv"
    assert lines[3] == "# CUDA: 12.9"
    assert lines[4] == f"# raybuild-inputs-sha256: {locking.app_target(config, gpu).inputs_hash(config)}"
    assert lines[5].startswith("# raybuild-body-sha256: ")
    assert lines[6] == "numpy==2.4.6 \\"
    assert {r.name: r.cuda for r in results} == {"ray": None, "demo": None, "gpu": "12.9"}
    assert locking.check_cuda(config, gpu) == "12.9"


def test_cpu_lockfiles_have_no_cuda_line(gpu_project: TmpProject) -> None:
    config, _ = lock_all(gpu_project)
    for path in (config.ray_lockfile(), config.lockfile(config.apps[0])):
        assert "# CUDA:" not in path.read_text()


def test_gpu_app_without_cuda_wheels_records_none(gpu_project: TmpProject) -> None:
    config, results = lock_all(gpu_project, "numpy==2.4.6\nray==2.60.0\n")
    assert "\n# CUDA: none\n" in config.lockfile(config.apps[1]).read_text()
    assert results[-1].cuda == "none"


def test_mixed_cuda_resolution_keeps_the_previous_lockfile(gpu_project: TmpProject) -> None:
    config, _ = lock_all(gpu_project)
    lockfile = config.lockfile(config.apps[1])
    before = lockfile.read_text()
    gpu_project.root.joinpath("apps/gpu/requirements.in").write_text(
        "nvidia-cuda-runtime-cu12\ncupy-cuda11x\n"
    )
    config = gpu_project.load()
    with pytest.raises(LockError) as caught:
        locking.lock(config, config.select(("gpu",)), runner=BodyResolver(MIXED_LOCK))
    assert caught.value.message.startswith("app 'gpu': its locked wheels mix CUDA majors 11, 12")
    assert lockfile.read_text() == before
    assert sorted(p.name for p in config.lock_dir().iterdir()) == ["demo.txt", "gpu.txt", "ray.txt"]


def test_cuda_line_does_not_change_the_inputs_hash(gpu_project: TmpProject) -> None:
    config, _ = lock_all(gpu_project)
    gpu = config.apps[1]
    stored = locking.stored_hash(config.lockfile(gpu))
    assert stored == locking.app_target(config, gpu).inputs_hash(config)
    assert locking.stale(config, config.apps) == []


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda text: text.replace("# CUDA: 12.9\n", ""), "a lockfile from before CUDA lines"),
        (lambda text: text.replace("# CUDA: 12.9", "# CUDA: 12.4"), "a hand-edited CUDA line"),
        (lambda text: text.replace("12.9.79", "12.4.127"), "pins edited under the CUDA line"),
    ],
)
def test_a_cuda_line_that_disagrees_with_the_pins_is_stale(
    gpu_project: TmpProject, edit: Callable[[str], str], why: str
) -> None:
    config, _ = lock_all(gpu_project)
    lockfile = config.lockfile(config.apps[1])
    lockfile.write_text(edit(lockfile.read_text()))
    assert locking.stale(config, config.apps) == ["lockfiles/gpu.txt"], why


def test_a_cuda_line_in_a_cpu_lockfile_is_stale(gpu_project: TmpProject) -> None:
    config, _ = lock_all(gpu_project)
    lockfile = config.lockfile(config.apps[0])
    lockfile.write_text(lockfile.read_text().replace("# raybuild-inputs", "# CUDA: 12.9\n# raybuild-inputs"))
    assert locking.stale(config, config.apps) == ["lockfiles/demo.txt"]


# -- torch variants: uv's --torch-backend -----------------------------------------------------------------


def _backend(command: list[str]) -> str | None:
    return command[command.index("--torch-backend") + 1] if "--torch-backend" in command else None


def test_cpu_apps_get_cpu_torch_and_gpu_apps_the_cuda_build(gpu_project: TmpProject) -> None:
    resolver = BodyResolver()
    config = gpu_project.load()
    locking.lock(config, config.apps, runner=resolver)
    assert [_backend(c) for c in resolver.commands] == ["cpu", "cpu", "cu128"]  # ray, demo, gpu


def test_torch_backends_come_from_the_project(gpu_project: TmpProject) -> None:
    gpu_project.write_config(
        gpu_project.config_path.read_text().replace(
            'registry = "127.0.0.1:5000/demo"\n',
            'registry = "127.0.0.1:5000/demo"\ntorch_backend = "none"\ngpu_torch_backend = "cu126"\n',
        )
    )
    config = gpu_project.load()
    resolver = BodyResolver()
    locking.lock(config, config.apps, runner=resolver)
    # "none": no flag at all, so torch comes from the index like any other package. The shared Ray lock
    # (no torch in it) keeps its fixed "cpu", so that its inputs never change with the apps' settings.
    assert [_backend(c) for c in resolver.commands] == ["cpu", None, "cu126"]


def test_the_torch_backend_is_an_input_of_the_lock(gpu_project: TmpProject) -> None:
    config, _ = lock_all(gpu_project)
    registry = 'registry = "127.0.0.1:5000/demo"\n'
    text = gpu_project.config_path.read_text()
    gpu_project.write_config(text.replace(registry, registry + 'gpu_torch_backend = "cu130"\n'))
    assert locking.stale(gpu_project.load(), config.apps) == ["lockfiles/gpu.txt"]


def test_an_unknown_torch_backend_is_a_config_error(gpu_project: TmpProject) -> None:
    registry = 'registry = "127.0.0.1:5000/demo"\n'
    text = gpu_project.config_path.read_text()
    gpu_project.write_config(text.replace(registry, registry + 'torch_backend = "cuda12"\n'))
    with pytest.raises(ConfigError) as caught:
        gpu_project.load()
    assert "torch_backend" in caught.value.message and "'cuda12'" in caught.value.message


def test_an_unreachable_pytorch_index_is_one_clear_error(tmp_project: TmpProject) -> None:
    config, _ = lock_all(tmp_project)
    lockfile = config.lockfile(config.apps[0])
    before = lockfile.read_text()
    tmp_project.requirements.write_text("torch\n")
    config = tmp_project.load()
    resolver = BodyResolver()
    resolver.fail_with = UV_TORCH_INDEX_DOWN
    with pytest.raises(LockError) as caught:
        locking.lock(config, config.apps, runner=resolver)
    assert caught.value.message == (
        "app 'demo': --torch-backend cpu takes torch from the PyTorch index, and "
        "https://download.pytorch.org/whl/cpu/torch was not reachable"
    )
    assert caught.value.hint is not None and '[project].torch_backend = "none"' in caught.value.hint
    assert lockfile.read_text() == before


# -- the command line ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_uv(monkeypatch: pytest.MonkeyPatch) -> BodyResolver:
    """Replaces the runner of uv with a resolver writing CUDA12_LOCK."""
    resolver = BodyResolver()
    monkeypatch.setattr(locking, "_run", resolver)
    return resolver


@pytest.mark.usefixtures("fake_uv")
def test_lock_table_and_json_show_the_cuda_of_gpu_apps(
    gpu_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    result = run_main("--config", str(gpu_project.config_path), "lock")
    assert result.exit_code == 0, result.stderr
    rows = [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()]
    assert rows[0] == ["LOCK", "PACKAGES", "CUDA", "STATUS", "PATH"]
    assert [row[:3] for row in rows[1:]] == [["ray", "4", "-"], ["demo", "4", "-"], ["gpu", "4", "12.9"]]

    result = run_main("--config", str(gpu_project.config_path), "lock", "--json")
    assert result.exit_code == 0, result.stderr
    assert {row["name"]: row["cuda"] for row in json.loads(result.stdout)} == {"demo": None, "gpu": "12.9"}
    assert run_main("--config", str(gpu_project.config_path), "lock", "--check").exit_code == 0


# -- real uv against PyPI -----------------------------------------------------------------------------------


@pytest.mark.network
def test_real_gpu_lock_records_the_runtime_wheels_cuda(
    gpu_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    result = run_main("--config", str(gpu_project.config_path), "lock", "gpu")
    assert result.exit_code == 0, result.stderr
    config = gpu_project.load()
    text = config.lockfile(config.apps[1]).read_text()
    runtime = locking.parse_pins(text)["nvidia-cuda-runtime-cu12"]
    assert text.splitlines()[3] == f"# CUDA: {'.'.join(runtime.split('.')[:2])}"
    assert locking.stale(config, config.apps[1:]) == []


@pytest.mark.network
def test_real_cpu_torch_is_the_cpu_build_or_a_clear_error(
    tmp_project: TmpProject, run_main: Callable[..., MainResult]
) -> None:
    """With download.pytorch.org reachable, torch is +cpu and brings no NVIDIA wheels; without, one line."""
    tmp_project.requirements.write_text("torch\n")
    result = run_main("--config", str(tmp_project.config_path), "lock")
    if result.exit_code == 0:
        locked = locking.parse_pins(tmp_project.load().lockfile(tmp_project.load().apps[0]).read_text())
        assert locked["torch"].endswith("+cpu")
        assert not [name for name in locked if name.startswith("nvidia-")]
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: app 'demo': --torch-backend cpu takes torch from the PyTorch index, and "
        "https://download.pytorch.org/whl/cpu/torch was not reachable"
    ], result.stderr
