"""From config and lockfiles to image specs and generated Dockerfiles, and the head image's tag hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.errors import UsageError
from raybuild.fsutil import atomic_write, read_text
from raybuild.image import bases
from raybuild.image.dockerfile import render_dockerfile, template_dir
from raybuild.image.ignore import CodeFiles, IgnoreRules
from raybuild.image.prune import PrunePlan, prune_plan, prune_script
from raybuild.lock.resolve import check_cuda, normalize, parse_pins, trusted_pins
from raybuild.state import dockerfiles_dir
from raybuild.tags import head_ref

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
    # The head image a CPU app builds on (its content-addressed tag); "" builds base and Ray in-file (GPU).
    head_image: str = ""
    ray_lock_hash: str = ""
    code_hash: str = ""

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
            "head_image": self.head_image,
            "ray_lock_hash": self.ray_lock_hash,
            "code_hash": self.code_hash,
            "venv": VENV,
            "app_site": APP_SITE,
            "code_dir": CODE_DIR,
        }


def _file_hash(path: Path) -> str:
    if not path.is_file():
        return "unlocked"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def lock_hash(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> str:
    return _file_hash(config.lockfile(app, platform))


def code_files(config: LoadedConfig, app: App) -> CodeFiles:
    """The app's files that go into its image, after the `.raybuildignore` rules and the size limit."""
    app_dir = config.app_dir(app)
    rules = IgnoreRules.for_app(config.root, app_dir)
    return rules.select(app_dir, config.config.limits.code_file_mb, app.name)


def code_hash(config: LoadedConfig, app: App) -> str:
    """A hash of the app's code (names and bytes): a label, so that a diff can say "code changed"."""
    digest = hashlib.sha256()
    for rel, path in code_files(config, app).files.items():
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def app_prune_plan(app: App) -> PrunePlan:
    # One plan for both venvs: Ray's and the app's (Ray Data, say, lives in Ray's).
    return prune_plan(tuple(app.prune.remove), tuple(app.prune.keep))


# The head image is stages 1 and 2 of the app Dockerfile (Ray on the builder, copied onto the base), rendered
# from these templates. Their whole text counts, so an edit anywhere in them gives a new head tag.
HEAD_TEMPLATES = ("cpu/Dockerfile.j2", "common/app.Dockerfile.j2")


def head_hash(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> str:
    """The head image's tag suffix, from its inputs rather than from the Dockerfile rendered for ``app``.

    The inputs: the base and builder images, Python and Ray, the Ray lock, the prune rules applied to Ray
    (rules an app keeps apply there too) and the prune script, and the text of the templates. Nothing of
    the app's code or of its own packages, so CPU apps with the same prune rules share one head. Another
    platform's head has its own bases and Ray lock, and its platform's suffix (``-arm64``).
    """
    templates = template_dir(config.root)
    project = config.project
    inputs: dict[str, object] = {
        "base_image": bases.base_ref(config, app.device, platform),
        "builder_image": bases.builder_ref(config, platform),
        "python": project.python,
        "ray_version": project.ray_version,
        "index_url": project.index_url,
        "venv": VENV,
        "app_site": APP_SITE,
        "code_dir": CODE_DIR,
    }
    ray_lock = config.ray_lockfile(platform)
    # Before `raybuild lock` there is none: `generate` still works, and `build` refuses to start. One that
    # is not what raybuild wrote (edited, cut short, not UTF-8) is refused here (trusted_pins).
    trusted = trusted_pins(config, None, platform) is not None
    inputs["ray.lock"] = read_text(ray_lock) if trusted else ""
    inputs["prune-ray.json"] = app_prune_plan(app).to_json()
    inputs["prune.py"] = read_text(prune_script(templates))
    for name in HEAD_TEMPLATES:
        inputs[name] = read_text(templates.path(name))
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return digest + platforms.get(platform).suffix


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


def image_spec_for(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> ImageSpec:
    # A lockfile that is not what raybuild wrote (edited, cut short) fails here, before any Dockerfile.
    lock_text = trusted_pins(config, app, platform) or ""
    gpu = app.device == "gpu"
    return ImageSpec(
        app=app.name,
        device=app.device,
        python=config.project.python,
        ray_version=config.project.ray_version,
        base_image=bases.base_ref(config, app.device, platform),
        builder_image=bases.builder_ref(config, platform),
        lock_hash=lock_hash(config, app, platform),
        env=tuple(sorted(app.env.items())),
        index_url=config.project.index_url,
        ld_library_path=nvidia_library_dirs(lock_text) if gpu else (),
        cuda=check_cuda(config, app) if gpu else None,
        # GPU apps build base and Ray in their own file on the GPU base: identical Ray layer bytes, and a
        # CUDA runtime base ([base.gpu] cuda_runtime_image) works as well.
        head_image="" if gpu else head_ref(config, head_hash(config, app, platform)),
        ray_lock_hash=_file_hash(config.ray_lockfile(platform)),
        code_hash=code_hash(config, app),
    )


def dockerfile_for(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> str:
    """The app's Dockerfile for ``platform``, from the project's templates (or the bundled ones).

    Every platform's Dockerfile is the same text but for the images it starts from: BuildKit runs it for
    the platform of those images (``--platform``).
    """
    return render_dockerfile(image_spec_for(config, app, platform), template_dir(config.root))


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
    planned = {
        f"{app.name}{platforms.get(p).lock_suffix}": (
            out / f"{app.name}{platforms.get(p).lock_suffix}.Dockerfile",
            dockerfile_for(config, app, p),
        )
        for app in apps
        for p in config.platforms(app)
    }
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
