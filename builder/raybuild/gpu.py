"""GPU availability for `raybuild test --gpu`: the host driver, its CUDA support, Docker's device request."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from raybuild.errors import RaybuildError

# Minimum Linux driver per CUDA major.minor (NVIDIA's CUDA toolkit release notes, table 3).
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
# With only a CUDA major known, CUDA's minor-version compatibility needs the major's first driver.
MIN_DRIVER_MAJOR = {"11": (450, 80, 2), "12": (525, 60, 13), "13": (580, 65, 6)}


class GpuUnavailable(RaybuildError):
    """No GPU, no driver, or no NVIDIA container runtime."""


@dataclass(frozen=True)
class GpuHost:
    driver: str
    gpus: int


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def min_driver(cuda: str) -> tuple[int, ...] | None:
    return MIN_DRIVER.get(cuda) or MIN_DRIVER_MAJOR.get(cuda.split(".")[0])


def check_driver(driver: str, cuda: str | None) -> None:
    if cuda is None:
        return
    needed = min_driver(cuda)
    if needed is not None and parse_version(driver) < needed:
        raise GpuUnavailable(
            f"host driver {driver} is too old for CUDA {cuda} (needs {'.'.join(map(str, needed))} or newer)",
            hint="update the NVIDIA driver, or lock the app against an older CUDA",
        )


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def detect(runner: Runner = _run, docker: str = "docker") -> GpuHost:
    """The host's driver and GPU count; GpuUnavailable with the reason when there is none."""
    if shutil.which("nvidia-smi") is None and runner is _run:
        raise GpuUnavailable(
            "no NVIDIA GPU here: nvidia-smi is not installed",
            hint="run GPU tests on a machine with a GPU and the NVIDIA container toolkit",
        )
    result = runner(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    drivers = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not drivers:
        raise GpuUnavailable(f"nvidia-smi found no GPU ({(result.stderr or result.stdout).strip()[:120]})")
    info = runner([docker, "info", "--format", "{{json .Runtimes}}"])
    if "nvidia" not in info.stdout:
        raise GpuUnavailable(
            "Docker has no NVIDIA runtime", hint="install nvidia-container-toolkit and restart dockerd"
        )
    return GpuHost(driver=drivers[0], gpus=len(drivers))


def device_request_args(count: int | str = "all") -> list[str]:
    """docker run arguments for Docker's GPU device request (what KubeRay's nvidia.com/gpu limit becomes)."""
    return ["--gpus", str(count) if count == "all" else f"count={count}"]
