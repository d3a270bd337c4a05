"""From config and lockfiles to image specs and generated Dockerfiles."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from raybuild.config import App, LoadedConfig
from raybuild.errors import UsageError
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


def _not_generated(path: Path) -> bool:
    """A file at ``path`` that raybuild did not generate: its first line does not name raybuild."""
    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except OSError:  # none there, or not a file: the write says what is wrong
        return False
    return bool(first.strip()) and b"raybuild" not in first


def generate_all(config: LoadedConfig, apps: tuple[App, ...], out_dir: Path | None = None) -> dict[str, Path]:
    """Write each app's Dockerfile; nothing at all when one would replace a Dockerfile of the user's own."""
    out = out_dir or dockerfiles_dir(config)
    planned = {app.name: (out / f"{app.name}.Dockerfile", dockerfile_for(config, app)) for app in apps}
    theirs = [str(path) for path, _ in planned.values() if _not_generated(path)]
    if theirs:
        raise UsageError(
            f"{', '.join(theirs)} already exist{'s' if len(theirs) == 1 else ''} and raybuild did not "
            "generate them; nothing was written",
            hint="move them away, or choose another --out-dir",
        )
    for path, text in planned.values():
        atomic_write(path, text)
    return {name: path for name, (path, _) in planned.items()}
