"""From config and lockfiles to image specs and generated Dockerfiles."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from raybuild.config import App, LoadedConfig
from raybuild.fsutil import atomic_write
from raybuild.image import bases
from raybuild.image.dockerfile import render_dockerfile, template_dir
from raybuild.lock.resolve import check_cuda, normalize, parse_pins, trusted_pins
from raybuild.state import dockerfiles_dir

VENV = "/opt/ray/venv"
APP_SITE = "/opt/app/site-packages"
CODE_DIR = "/home/ray/app"


@dataclass(frozen=True)
class ImageSpec:
    """Everything a Dockerfile for one app depends on."""

    app: str
    device: str
    python: str
    ray_version: str
    base_image: str
    builder_image: str
    lock_hash: str
    env: tuple[tuple[str, str], ...] = ()
    index_url: str | None = None
    ld_library_path: tuple[str, ...] = ()
    cuda: str | None = None

    def context(self) -> dict[str, object]:
        return {
            "app": self.app,
            "device": self.device,
            "python": self.python,
            "ray_version": self.ray_version,
            "base_image": self.base_image,
            "builder_image": self.builder_image,
            "lock_hash": self.lock_hash,
            "env": dict(self.env),
            "index_url": self.index_url,
            "ld_library_path": list(self.ld_library_path),
            "cuda": self.cuda,
            "venv": VENV,
            "app_site": APP_SITE,
            "code_dir": CODE_DIR,
        }


def lock_hash(config: LoadedConfig, app: App) -> str:
    path = config.lockfile(app)
    if not path.is_file():
        return "unlocked"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def nvidia_library_dirs(lock_text: str) -> tuple[str, ...]:
    """LD_LIBRARY_PATH entries for a lock's NVIDIA wheels.

    nvidia-cuda-runtime-cu12 -> <app site-packages>/nvidia/cuda_runtime/lib
    """
    dirs = []
    for name in sorted(parse_pins(lock_text)):
        if name.startswith("nvidia-") and "-cu" in name:
            component = normalize(name).removeprefix("nvidia-").rsplit("-cu", 1)[0].replace("-", "_")
            dirs.append(f"{APP_SITE}/nvidia/{component}/lib")
    return tuple(dirs)


def image_spec_for(config: LoadedConfig, app: App) -> ImageSpec:
    # A lockfile that is not what raybuild wrote (edited, cut short) fails here, before any Dockerfile.
    lock_text = trusted_pins(config, app) or ""
    gpu = app.device == "gpu"
    return ImageSpec(
        app=app.name,
        device=app.device,
        python=config.project.python,
        ray_version=config.project.ray_version,
        base_image=bases.base_ref(config, app.device),
        builder_image=bases.builder_ref(config),
        lock_hash=lock_hash(config, app),
        env=tuple(sorted(app.env.items())),
        index_url=config.project.index_url,
        ld_library_path=nvidia_library_dirs(lock_text) if gpu else (),
        cuda=check_cuda(config, app) if gpu else None,
    )


def dockerfile_for(config: LoadedConfig, app: App) -> str:
    """The app's Dockerfile, from the project's templates (or the bundled ones)."""
    return render_dockerfile(image_spec_for(config, app), template_dir(config.root))


def generate_all(config: LoadedConfig, apps: tuple[App, ...], out_dir: Path | None = None) -> dict[str, Path]:
    out = out_dir or dockerfiles_dir(config)
    written = {}
    for app in apps:
        path = out / f"{app.name}.Dockerfile"
        atomic_write(path, dockerfile_for(config, app))
        written[app.name] = path
    return written
