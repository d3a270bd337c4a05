"""Base images: their content-addressed names, and how they are made.

Three images per project, each named by a hash of what goes into it, so a changed suite, snapshot or
template gives a new name and an unchanged one is never rebuilt:

- the rootfs: Debian from mmdebstrap (``bootstrap``) or a registry image (``image``);
- the runtime base: rootfs plus the ray user and environment (the GPU base adds the NVIDIA variables on
  top of the CPU base, sharing all its layers);
- the builder: a rootfs with binutils, plus uv, used only in build stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from raybuild.config import BaseImage, LoadedConfig
from raybuild.render import BaseSpec, render_base, template_dir

RUNTIME_PACKAGES = ("python3-minimal", "libpython3-stdlib", "bash", "wget", "ca-certificates", "libstdc++6")
BUILDER_PACKAGES = (*RUNTIME_PACKAGES, "binutils")
# usrmerge pulls in perl (about 50 MB); once the system is merged, none of it is needed at run time.
PURGE_AFTER_BOOTSTRAP = ("usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl",
                         "perl", "libperl5.36", "perl-modules-5.36")
NAMESPACE = "raybuild"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def uv_version() -> str:
    from importlib.metadata import version

    return version("uv")


def uv_image() -> str:
    return f"{NAMESPACE}/uv:{uv_version()}"


@dataclass(frozen=True)
class Rootfs:
    """A root filesystem image: what it is called and how to make it."""

    ref: str
    settings: BaseImage
    packages: tuple[str, ...]

    @property
    def bootstrapped(self) -> bool:
        return self.settings.source == "bootstrap"


def rootfs(settings: BaseImage, kind: str) -> Rootfs:
    packages = BUILDER_PACKAGES if kind == "builder" else RUNTIME_PACKAGES
    if settings.source == "image":
        return Rootfs(settings.image, settings, packages)
    tag = _digest("rootfs-v1", settings.suite, settings.mirror, settings.snapshot or "", *packages,
                  *PURGE_AFTER_BOOTSTRAP)
    return Rootfs(f"{NAMESPACE}/rootfs-{kind}:{settings.suite}-{tag}", settings, packages)


def base_spec(config: LoadedConfig, device: str) -> BaseSpec:
    settings = config.config.base.cpu
    root = rootfs(settings, "runtime")
    if device == "gpu":
        gpu = config.config.base.gpu
        parent = gpu.cuda_runtime_image or base_ref(config, "cpu")
        return BaseSpec("base", "gpu", config.project.python, rootfs="", install_packages=False, parent=parent)
    return BaseSpec("base", "cpu", config.project.python, rootfs=root.ref,
                    install_packages=not root.bootstrapped, packages=root.packages)


def builder_spec(config: LoadedConfig) -> BaseSpec:
    root = rootfs(config.config.base.cpu, "builder")
    return BaseSpec("builder", "cpu", config.project.python, rootfs=root.ref,
                    install_packages=not root.bootstrapped, packages=root.packages, uv_image=uv_image())


def _ref(config: LoadedConfig, spec: BaseSpec, name: str) -> str:
    text = render_base(spec, template_dir(config.root))
    return f"{NAMESPACE}/{name}:py{config.project.python}-{_digest(text)}"


def base_ref(config: LoadedConfig, device: str) -> str:
    return _ref(config, base_spec(config, device), f"base-{device}")


def builder_ref(config: LoadedConfig) -> str:
    return _ref(config, builder_spec(config), "builder")
