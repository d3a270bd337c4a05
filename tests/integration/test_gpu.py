"""`raybuild test cuda --gpu` for real: the image gets a GPU through Docker's device request, Ray reports it,
and the app deploys with num_gpus = 1 and sees a CUDA device.

Marked `gpu`: it needs an NVIDIA GPU, its driver and the NVIDIA container toolkit, and skips with the
reason gpu.detect() gives everywhere else. CI machines have no GPU, so under CI it skips too (unlike the
Docker tests, which fail under CI=true when no engine is up).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from raybuild.config import load_config
from raybuild.engine import Engine
from raybuild.errors import GpuUnavailable
from raybuild.image.build import Builder
from raybuild.verify import gpu
from tests.conftest import MainResult

pytestmark = [pytest.mark.gpu, pytest.mark.docker]


# Session scope, first in the test's arguments: pytest then asks for a GPU before it asks for Docker, and a
# machine without a GPU skips with the GPU reason.
@pytest.fixture(scope="session")
def gpu_host() -> gpu.GpuHost:
    try:
        return gpu.detect()
    except GpuUnavailable as exc:
        pytest.skip(f"{exc.message} (GPU tests need an NVIDIA GPU and its container toolkit; CI has none)")


def _host_ca() -> Path | None:
    path = Path("/etc/ssl/certs/ca-certificates.crt")
    return path if path.is_file() else None


def test_cuda_app_serves_on_a_gpu(
    gpu_host: gpu.GpuHost, engine: Engine, project_copy: Path, run_main: Callable[..., MainResult]
) -> None:
    config = load_config(project_copy / "raybuild.toml")
    Builder(config, engine, ca_bundle=_host_ca()).build(config.select(("cuda",)))
    result = run_main("--config", str(project_copy), "test", "cuda", "--gpu", "--json", "--timeout", "300")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gpu"] is True
    assert report["gpus"] >= 1, "ray.cluster_resources() on the head must list the GPU"
    answer = json.loads(report["body"])
    assert answer["devices"] >= 1, f"the replica saw no CUDA device: {answer}"
    assert answer["visible"] != "", "Ray sets CUDA_VISIBLE_DEVICES for a replica with num_gpus"
