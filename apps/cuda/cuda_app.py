"""A GPU Serve app whose CUDA dependency is one small runtime wheel (nvidia-cuda-runtime-cu12).

It loads libcudart from the wheel and reports what it sees. Without a GPU (CPU-mode smoke test) the
runtime library still loads and reports no device.
"""

import ctypes
import os
from pathlib import Path
from typing import Any

from ray import serve


def load_cudart() -> ctypes.CDLL:
    import nvidia.cuda_runtime

    lib_dir = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return ctypes.CDLL(str(sorted(lib_dir.glob("libcudart.so*"))[0]))


@serve.deployment
class CudaInfo:
    def __init__(self) -> None:
        self.cudart = load_cudart()

    def __call__(self) -> dict[str, Any]:
        version = ctypes.c_int()
        self.cudart.cudaRuntimeGetVersion(ctypes.byref(version))
        count = ctypes.c_int()
        status = self.cudart.cudaGetDeviceCount(ctypes.byref(count))
        return {
            "cuda_runtime": version.value,
            "devices": count.value if status == 0 else 0,
            "status": status,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }


app = CudaInfo.bind()
