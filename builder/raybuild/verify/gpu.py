"""GPU availability for `raybuild test --gpu`: the host driver, its CUDA support, Docker's device request.

The driver is read with nvidia-smi, or through NVML (libnvidia-ml.so.1, installed with every driver) where
nvidia-smi is missing. Docker can hand a container GPUs (`--gpus`) only with the NVIDIA container toolkit:
an `nvidia` runtime in `docker info`, or the `nvidia-container-runtime-hook` that dockerd's built-in GPU
device driver calls. Every failure is a ``GpuUnavailable`` whose message is the one line users see.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.errors import EngineError, GpuUnavailable, UsageError
from raybuild.lock.cuda import CudaNeed

# Minimum Linux x86_64 driver of each CUDA toolkit: the GA driver NVIDIA's CUDA Toolkit release notes list
# ("CUDA Toolkit and Corresponding Driver Versions", table 3). CUDA 12.7 was never released.
MIN_DRIVER: dict[str, tuple[int, ...]] = {
    "11.8": (520, 61, 5),
    "12.0": (525, 60, 13),
    "12.1": (530, 30, 2),
    "12.2": (535, 54, 3),
    "12.3": (545, 23, 6),
    "12.4": (550, 54, 14),
    "12.5": (555, 42, 2),
    "12.6": (560, 28, 3),
    "12.8": (570, 26),
    "12.9": (575, 51, 3),
    "13.0": (580, 65, 6),
}
# CUDA minor version compatibility (the same notes, table 2): any runtime of a major runs on the major's
# first driver, except for PTX JIT compilation and the few APIs that need a newer driver.
MIN_DRIVER_MAJOR: dict[str, tuple[int, ...]] = {"11": (450, 80, 2), "12": (525, 60, 13), "13": (580, 65, 6)}
# Which minimum applies is a choice, made here:
# - Plain CUDA library wheels (cudart, cuBLAS, cuDNN, NCCL, CuPy) ship machine code (SASS) for the GPUs
#   they support and run through minor version compatibility, so an app that locks only those needs the
#   major's first driver: nvidia-cuda-runtime-cu12==12.9.x runs on >= 525.60.13.
# - An app that locks torch needs its toolkit's own driver (torch +cu128 -> 570.26). PyTorch's release
#   matrix lists that driver; its binaries JIT-compile PTX for GPUs newer than their SASS targets (PTX from
#   a newer toolkit cannot be compiled by an older driver), and cu128's Blackwell support needs 570 anyway.
#   A minor not in MIN_DRIVER (a newer toolkit than this table) falls back to the major's minimum.

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]
NVIDIA_HOOK = "nvidia-container-runtime-hook"
TOOLKIT_HINT = (
    "install the NVIDIA container toolkit, run `nvidia-ctk runtime configure --runtime=docker` and "
    "restart dockerd"
)


@dataclass(frozen=True)
class GpuHost:
    driver: str
    gpus: int
    names: tuple[str, ...] = ()
    source: str = "nvidia-smi"


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(f"{part:02d}" if i else str(part) for i, part in enumerate(version))


def min_driver(cuda: str) -> tuple[int, ...] | None:
    """The toolkit's minimum driver for a CUDA major.minor; for a major or an unknown minor, the major's."""
    return MIN_DRIVER.get(cuda) or MIN_DRIVER_MAJOR.get(cuda.split(".")[0])


def required_driver(need: CudaNeed) -> tuple[int, ...] | None:
    """The driver an app's wheels need, by the policy above."""
    if need.torch:
        return min_driver(need.torch)
    return MIN_DRIVER_MAJOR.get(need.major) or min_driver(need.version)


def check_driver(driver: str, need: CudaNeed | None) -> None:
    if need is None:
        return
    needed = required_driver(need)
    if needed is not None and parse_version(driver) < needed:
        what = f"torch built for CUDA {need.torch}" if need.torch else f"CUDA {need.major}.x wheels"
        raise GpuUnavailable(
            f"host driver {driver} is too old for the app's {what}: "
            f"it needs {format_version(needed)} or newer",
            hint="update the NVIDIA driver, or lock the app against an older CUDA",
        )


def parse_nvidia_smi(output: str) -> list[tuple[str, str]]:
    """(driver, GPU name) per line of `nvidia-smi --query-gpu=driver_version,name --format=csv,noheader`."""
    rows = []
    for line in output.splitlines():
        driver, _, name = line.partition(",")
        if re.fullmatch(r"\d+(\.\d+)+", driver.strip()):
            rows.append((driver.strip(), name.strip()))
    return rows


def query_nvml() -> GpuHost | None:
    """The driver and GPU count through NVML, without nvidia-smi; None when NVML is not there or fails."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        version = ctypes.create_string_buffer(96)
        count = ctypes.c_uint()
        if nvml.nvmlSystemGetDriverVersion(version, 96) or nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)):
            return None
        return GpuHost(version.value.decode(), int(count.value), source="NVML")
    finally:
        nvml.nvmlShutdown()


# A command (nvidia-smi ...) -> (exit code, output).
Runner = Callable[[list[str]], tuple[int, str]]
# Docker's runtimes: (exit code, `docker info`'s Runtimes as JSON, or what it said instead).
Runtimes = Callable[[], tuple[int, str]]


def engine_runner(engine: Engine) -> Runner:
    def run(command: list[str]) -> tuple[int, str]:
        result = engine.runner.run(command, check=False, timeout=30)
        return result.returncode, result.output

    return run


def engine_runtimes(engine: Engine) -> Runtimes:
    def runtimes() -> tuple[int, str]:
        try:
            return 0, json.dumps(engine.info("Runtimes", timeout=30))
        except EngineError as exc:
            return exc.returncode or 1, exc.output_tail or exc.message

    return runtimes


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")[:160]


def detect(
    engine: Engine | None = None,
    *,
    runner: Runner | None = None,
    runtimes: Runtimes | None = None,
    nvml: Callable[[], GpuHost | None] | None = None,
    which: Callable[[str], str | None] | None = None,
) -> GpuHost:
    """The host's driver and GPUs, once Docker can pass them to a container; GpuUnavailable otherwise.

    ``runner``, ``runtimes``, ``nvml`` and ``which`` stand in for nvidia-smi, `docker info`, NVML and PATH
    lookups in tests.
    """
    engine = engine or Engine()
    run = runner or engine_runner(engine)
    which = which or shutil.which
    if which("nvidia-smi") is None:
        host = (nvml or query_nvml)()
        if host is None:
            raise GpuUnavailable(
                "no NVIDIA GPU here: no nvidia-smi, and NVML (libnvidia-ml.so.1) cannot be loaded",
                hint="run GPU tests on a machine with an NVIDIA GPU, its driver and the container toolkit",
            )
    else:
        code, output = run(NVIDIA_SMI_QUERY)
        rows = parse_nvidia_smi(output) if code == 0 else []
        if code != 0:
            raise GpuUnavailable(f"nvidia-smi failed (exit {code}): {_first_line(output)}")
        if not rows:
            raise GpuUnavailable(f"nvidia-smi lists no GPU: {_first_line(output)}")
        host = GpuHost(rows[0][0], len(rows), tuple(name for _, name in rows))
    if host.gpus < 1:
        raise GpuUnavailable(f"the NVIDIA driver {host.driver} sees no GPU ({host.source})")
    code, output = (runtimes or engine_runtimes(engine))()
    if code != 0:
        raise GpuUnavailable(f"`docker info` failed: {_first_line(output)}")
    if '"nvidia"' not in output and which(NVIDIA_HOOK) is None:
        raise GpuUnavailable(
            f"Docker cannot pass GPUs to containers: no nvidia runtime and no {NVIDIA_HOOK}",
            hint=TOOLKIT_HINT,
        )
    return host


def ensure(
    need: CudaNeed | None,
    gpus: int,
    engine: Engine | None = None,
    *,
    runner: Runner | None = None,
    runtimes: Runtimes | None = None,
    nvml: Callable[[], GpuHost | None] | None = None,
    which: Callable[[str], str | None] | None = None,
) -> GpuHost:
    """A host that can run an app needing ``gpus`` GPUs and ``need``'s CUDA; GpuUnavailable otherwise."""
    host = detect(engine, runner=runner, runtimes=runtimes, nvml=nvml, which=which)
    check_driver(host.driver, need)
    if host.gpus < gpus:
        raise GpuUnavailable(f"the app needs {gpus} GPUs at its minimum replicas; this host has {host.gpus}")
    return host


@dataclass(frozen=True)
class Skip:
    """This host cannot run the GPU test, and the caller asked to skip rather than fail."""

    reason: str  # GpuUnavailable's one line


def ready_for(
    app: App, need: CudaNeed | None, gpus: int, engine: Engine, *, skip_if_unavailable: bool = False
) -> GpuHost | Skip:
    """The host that runs ``app``'s GPU test (``gpus`` GPUs, ``need``'s CUDA), or a Skip saying why not.

    A CPU app is a UsageError. Without ``skip_if_unavailable`` a host that cannot run it raises
    GpuUnavailable; with it, CI machines without a GPU pass on purpose and print the reason.
    """
    if app.device != "gpu":
        raise UsageError(f'app {app.name!r} is a CPU app; --gpu is for apps with device = "gpu"')
    try:
        return ensure(need, gpus, engine)
    except GpuUnavailable as exc:
        if not skip_if_unavailable:
            raise
        return Skip(exc.message)


def no_device_driver(output: str) -> bool:
    """`docker run --gpus` failed because dockerd has no GPU device driver (no NVIDIA toolkit)."""
    return "could not select device driver" in output
