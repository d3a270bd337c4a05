"""The platforms raybuild builds images for, and every name one platform goes by.

One image is built for each (app, platform) pair. The same platform is spelled differently by each tool:
Docker and OCI say ``linux/arm64``, Debian ``arm64``, wheel tags and uv ``aarch64``, Kubernetes' node label
``kubernetes.io/arch`` ``arm64``. This module is the only one that knows those spellings.

``linux/amd64`` is the default platform: its lockfiles, tags and Dockerfiles are exactly those of a project
that never mentions platforms, so adding a platform never moves an existing tag.
"""

from __future__ import annotations

import platform as host_platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT = "linux/amd64"
ARM64 = "linux/arm64"
# How much longer things take under qemu than natively, for timeouts only (never for a figure): a KubeRay
# head became ready in 32.6 s emulated against about 5 s natively on the 2-core build machines.
EMULATION_SLOWDOWN = 6.0
# Kubernetes' well-known node label for a node's CPU architecture (GOARCH names: amd64, arm64).
ARCH_LABEL = "kubernetes.io/arch"


@dataclass(frozen=True)
class Platform:
    name: str  # OCI: linux/arm64
    architecture: str  # OCI image config and Kubernetes: arm64
    debian: str  # dpkg architecture: arm64
    machine: str  # uname -m and wheel tags: aarch64

    @property
    def default(self) -> bool:
        return self.name == DEFAULT

    @property
    def suffix(self) -> str:
        """What names this platform's files and tags apart: "" for the default, "-arm64" otherwise."""
        return "" if self.default else f"-{self.architecture}"

    @property
    def lock_suffix(self) -> str:
        """Before ``.txt`` in a lockfile's name: ``hello.linux-arm64.txt`` (the default: ``hello.txt``)."""
        return "" if self.default else "." + self.name.replace("/", "-")

    def python_platform(self, default_tag: str) -> str:
        """uv's --python-platform for this platform, with the glibc floor of the project's own setting.

        ``[project].platform`` (x86_64-manylinux_2_36) names the default platform's target; other platforms
        keep its manylinux version, so every image targets the same Debian release's glibc.
        """
        if self.default:
            return default_tag
        _, sep, rest = default_tag.partition("-")
        return f"{self.machine}-{rest}" if sep else f"{self.machine}-manylinux_2_36"


KNOWN: dict[str, Platform] = {
    DEFAULT: Platform(DEFAULT, "amd64", "amd64", "x86_64"),
    ARM64: Platform(ARM64, "arm64", "arm64", "aarch64"),
}
ALLOWED = tuple(KNOWN)


def get(name: str) -> Platform:
    return KNOWN[name]


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` once each, in raybuild's order (the default platform first)."""
    wanted = set(names)
    return tuple(name for name in ALLOWED if name in wanted)


def host() -> Platform | None:
    """The platform this machine runs natively; None for one raybuild does not build for."""
    machine = host_platform.machine().lower()
    return next((p for p in KNOWN.values() if machine in (p.machine, p.architecture)), None)


def timeout_for(name: str, seconds: float) -> float:
    """A timeout meant for native speed, stretched for ``name`` when it runs emulated here."""
    return seconds if native(name) else seconds * EMULATION_SLOWDOWN


def native(name: str) -> bool:
    """Whether images for ``name`` run on this machine without emulation (timings mean something)."""
    found = host()
    return found is not None and found.name == name


BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
EMULATION_HINT = (
    "run scripts/setup as root (it mounts binfmt_misc and installs qemu-user-static and binfmt-support)"
)


def emulation_problem(name: str, binfmt_dir: str = BINFMT_DIR) -> str | None:
    """Why ``name``'s binaries cannot run here (None: natively, or under qemu inside containers too).

    Containers need the interpreter registered with the F flag: the kernel then opens qemu when the
    handler is registered, so it works in a container whose root has no qemu binary.
    """
    if native(name):
        return None
    entry = Path(binfmt_dir) / f"qemu-{get(name).machine}"
    if not (Path(binfmt_dir) / "status").is_file():
        return f"{name} needs emulation, and binfmt_misc is not mounted at {binfmt_dir}"
    try:
        text = entry.read_text(encoding="utf-8")
    except OSError:
        return f"{name} needs emulation, and no qemu-{get(name).machine} handler is registered"
    flags = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), ""
    )
    if not text.startswith("enabled"):
        return f"{name} needs emulation, and the qemu-{get(name).machine} handler is disabled"
    if "F" not in flags:
        return f"{name} needs emulation, and qemu-{get(name).machine} is registered without the F flag"
    return None
