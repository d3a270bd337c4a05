"""What an app Dockerfile is rendered from (`ImageSpec`), the head image's tag hash, and writing the generated
Dockerfiles. `plan.plan_builds` gathers the inputs, reading each file once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.errors import UsageError
from raybuild.fsutil import atomic_write
from raybuild.image.ignore import CodeFiles, IgnoreRules
from raybuild.image.prune import PrunePlan, prune_plan
from raybuild.lock.lockfile import normalize, parse_pins
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


def code_files(config: LoadedConfig, app: App) -> CodeFiles:
    """The app's files that go into its image, after the `.raybuildignore` rules and the size limit."""
    app_dir = config.app_dir(app)
    rules = IgnoreRules.for_app(config.root, app_dir)
    return rules.select(app_dir, config.config.limits.code_file_mb, app.name)


def app_prune_plan(app: App) -> PrunePlan:
    # One plan for both venvs: Ray's and the app's (Ray Data, say, lives in Ray's).
    return prune_plan(tuple(app.prune.remove), tuple(app.prune.keep))


# The head image is stages 1 and 2 of the app Dockerfile (Ray on the builder, copied onto the base), rendered
# from these templates. Their whole text counts, so an edit anywhere in them gives a new head tag.
HEAD_TEMPLATES = ("cpu/Dockerfile.j2", "common/app.Dockerfile.j2")


@dataclass(frozen=True)
class HeadInputs:
    """What the head image is made from besides the app's prune rules (`build_plan` reads each once)."""

    base_image: str
    builder_image: str
    ray_lock: str  # the shared Ray lock's text; "" before `raybuild lock`
    prune_script: str
    templates: tuple[tuple[str, str], ...]  # (name, text) of HEAD_TEMPLATES


def head_hash(config: LoadedConfig, app: App, head: HeadInputs, platform: str = platforms.DEFAULT) -> str:
    """The head image's tag suffix, from its inputs rather than from the Dockerfile rendered for ``app``.

    The inputs: the base and builder images, Python and Ray, the Ray lock, the prune rules applied to Ray
    (rules an app keeps apply there too) and the prune script, and the text of the templates. Nothing of
    the app's code or of its own packages, so CPU apps with the same prune rules share one head. Another
    platform's head has its own bases and Ray lock, and its platform's suffix (``-arm64``).
    """
    project = config.project
    inputs: dict[str, object] = {
        "base_image": head.base_image,
        "builder_image": head.builder_image,
        "python": project.python,
        "ray_version": project.ray_version,
        "index_url": project.index_url,
        "venv": VENV,
        "app_site": APP_SITE,
        "code_dir": CODE_DIR,
        "ray.lock": head.ray_lock,
        "prune-ray.json": app_prune_plan(app).to_json(),
        "prune.py": head.prune_script,
        **dict(head.templates),
    }
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


def _not_generated(path: Path) -> bool:
    """A file at ``path`` that raybuild did not generate: its first line does not name raybuild."""
    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except OSError:  # none there, or not a file: the write says what is wrong
        return False
    return bool(first.strip()) and b"raybuild" not in first


def generate_all(
    config: LoadedConfig, dockerfiles: Iterable[tuple[str, str]], out_dir: Path | None = None
) -> dict[str, Path]:
    """Write each (name, Dockerfile text); nothing at all when one would replace a Dockerfile of the user's
    own. The texts come from the build plans (`plan.Plans.dockerfiles`)."""
    out = out_dir or dockerfiles_dir(config)
    planned = {name: (out / f"{name}.Dockerfile", text) for name, text in dockerfiles}
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
