"""Which CUDA an app's locked wheels need, read from the pins of its lockfile (``lock.parse_pins``).

A GPU image carries no CUDA toolkit: the CUDA libraries are wheels (``nvidia-*-cu12``, ``cupy-cuda12x``,
torch's ``+cu128`` builds), and the driver comes from the node. So the lockfile is where the CUDA version
is decided, and ``raybuild lock`` records it in the lockfile's header (``# CUDA: 12.9``) for the driver
check of ``raybuild test --gpu`` and for reviewers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from raybuild.errors import LockError

CUDA_HEADER = "# CUDA: "
NO_CUDA = "none"

# nvidia-cuda-runtime-cu12, nvidia-cudnn-cu12, nvidia-nccl-cu13 ...: the suffix names the CUDA major.
_SUFFIXED = re.compile(r"^nvidia-([a-z0-9-]+?)-cu(\d+)$")
# cupy-cuda12x, jax-cuda12-plugin, jax-cuda12-pjrt: the CUDA major is in the name.
_IN_NAME = re.compile(r"^(?:cupy-cuda(\d+)x|jax-cuda(\d+)-(?:plugin|pjrt))$")
# torch==2.9.0+cu128, torchvision==0.24.0+cu128: PyTorch's local version names CUDA major and minor.
_LOCAL_CUDA = re.compile(r"\+cu(\d+)(\d)$")
# Wheels whose version is the CUDA toolkit's own (nvidia-cuda-runtime-cu12==12.9.79 is CUDA 12.9). The
# CUDA 13 wheels drop the -cu13 suffix (nvidia-cuda-runtime==13.0.96), so their version is all there is.
# Library wheels (cuBLAS, cuFFT, cuDNN, NCCL, ...) carry versions of their own and say nothing here.
_TOOLKIT_VERSIONED = frozenset({"cuda-runtime", "cuda-nvrtc", "cuda-cupti", "cuda-nvcc"})
# Of those, the runtime is what the app links: its minor is the one the driver must support.
_MINOR_FROM = frozenset({"cuda-runtime"})
# cuda-toolkit (the metapackage) and cuda-python's bindings: the version starts with the CUDA major.
_VERSION_IS_CUDA = {"cuda-toolkit": True, "cuda-bindings": False, "cuda-python": False}


@dataclass(frozen=True)
class CudaEvidence:
    """One locked wheel that was built for a CUDA version."""

    pin: str  # e.g. "torch==2.9.0+cu128"
    major: str
    minor: str | None = None  # "12.8" when the wheel says which minor


@dataclass(frozen=True)
class CudaNeed:
    """The CUDA version an app's wheels need from the node's driver."""

    version: str  # "12" or "12.9": the newest minor any wheel names, else the major
    pins: tuple[str, ...]  # the wheels that say so
    torch: str | None = None  # torch's CUDA ("12.8") when torch is locked: gpu.py holds it to that driver

    @property
    def major(self) -> str:
        return self.version.split(".")[0]


def _minor(version: str, major: str) -> str | None:
    parts = version.split("+")[0].split(".")
    if len(parts) >= 2 and parts[0] == major and parts[1].isdigit():
        return f"{major}.{int(parts[1])}"
    return None


def _evidence(name: str, version: str) -> CudaEvidence | None:
    pin = f"{name}=={version}"
    local = _LOCAL_CUDA.search(version)
    if local:
        return CudaEvidence(pin, local.group(1), f"{local.group(1)}.{local.group(2)}")
    suffixed = _SUFFIXED.match(name)
    if suffixed:
        component, major = suffixed.groups()
        return CudaEvidence(pin, major, _minor(version, major) if component in _MINOR_FROM else None)
    in_name = _IN_NAME.match(name)
    if in_name:
        return CudaEvidence(pin, in_name.group(1) or in_name.group(2))
    component = name.removeprefix("nvidia-")
    if (name.startswith("nvidia-") and component in _TOOLKIT_VERSIONED) or name in _VERSION_IS_CUDA:
        major = version.split(".")[0]
        if not major.isdigit():
            return None
        with_minor = component in _MINOR_FROM or _VERSION_IS_CUDA.get(name, False)
        return CudaEvidence(pin, major, _minor(version, major) if with_minor else None)
    return None


def cuda_evidence(pins: Mapping[str, str]) -> list[CudaEvidence]:
    """Every pinned wheel (normalized name -> version) that names a CUDA version, sorted by name."""
    found = (_evidence(name, version) for name, version in sorted(pins.items()))
    return [evidence for evidence in found if evidence is not None]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def cuda_need(pins: Mapping[str, str], app: str) -> CudaNeed | None:
    """The one CUDA version an app's wheels need; a LockError when they mix CUDA majors."""
    evidence = cuda_evidence(pins)
    if not evidence:
        return None
    majors = sorted({e.major for e in evidence}, key=int)
    if len(majors) > 1:
        examples = [next(e.pin for e in evidence if e.major == major) for major in majors]
        raise LockError(
            f"app {app!r}: its locked wheels mix CUDA majors {', '.join(majors)} ({', '.join(examples)})",
            hint="pin every CUDA package to one CUDA major (e.g. all -cu12, torch +cu12x)",
        )
    minors = [e.minor for e in evidence if e.minor]
    version = max(minors, key=_key) if minors else majors[0]
    sources = tuple(e.pin for e in evidence if e.minor == version or (not minors and e.major == version))
    torch = None
    if "torch" in pins:
        # torch+cu128 names its CUDA; PyPI's torch is built for the CUDA of the runtime wheel it pins.
        own = _evidence("torch", pins["torch"])
        torch = (own.minor if own else None) or version
    return CudaNeed(version=version, pins=sources, torch=torch)


def header_line(need: CudaNeed | None) -> str:
    """The lockfile header line that records a GPU app's CUDA version."""
    return f"{CUDA_HEADER}{need.version if need else NO_CUDA}\n"


def recorded(lock_text: str) -> str | None:
    """The CUDA version recorded in a lockfile's header: "12.9", "none", or None without a CUDA line."""
    for line in lock_text.splitlines()[:12]:
        if line.startswith(CUDA_HEADER):
            return line[len(CUDA_HEADER) :].strip()
        if not line.startswith("#"):
            break
    return None
