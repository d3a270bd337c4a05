"""Build plans: every input of one (app, platform) image, worked out once per command.

`plan_builds` reads each lockfile once (`lockfile.Reads`), renders the base and builder Dockerfiles once
for their names, walks the app's code once and hashes it once, and derives from that the app Dockerfile,
the head image's tag and the content-addressed tag. `generate` writes the plans' Dockerfiles; `Builder`
stages and builds from them, reading fields instead of recomputing them (a build of one app used to read the
Ray lock ten times and walk the code tree twice).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.errors import BuildError
from raybuild.fsutil import read_text
from raybuild.image import bases
from raybuild.image.dockerfile import render_dockerfile, template_dir
from raybuild.image.ignore import IGNORE_FILE, CodeFiles
from raybuild.image.prune import prune_script
from raybuild.image.spec import (
    HEAD_TEMPLATES,
    HeadInputs,
    ImageSpec,
    app_prune_plan,
    code_files,
    head_hash,
    nvidia_library_dirs,
)
from raybuild.lock import resolve
from raybuild.lock.lockfile import Lockfile, Reader, Reads, extras_lock
from raybuild.platforms import Platform
from raybuild.progress import Progress, silent
from raybuild.tags import head_ref, image_ref

# Every image's context ignores bytecode, whatever the app's own rules.
_DOCKERIGNORE = "**/__pycache__\n**/*.pyc\n"


@dataclass(frozen=True)
class LockText:
    """One lockfile as this command read it: once, however many things need it."""

    path: Path
    found: Lockfile | None  # None: there is no lockfile yet

    @property
    def text(self) -> str:
        return self.found.text if self.found is not None else ""

    @property
    def sha256(self) -> str | None:
        return self.found.sha256 if self.found is not None else None

    @property
    def short_hash(self) -> str:
        """What the Dockerfile's lock label records: 16 hex digits, or "unlocked"."""
        return self.sha256[:16] if self.sha256 is not None else "unlocked"


@dataclass(frozen=True)
class BuildPlan:
    """Everything one (app, platform) image is built from and named by."""

    app: App
    platform: Platform
    ray_lock: LockText
    app_lock: LockText
    spec: ImageSpec  # holds the base, builder and head references the Dockerfile names
    dockerfile: str
    head_hash: str  # the head image's tag suffix (a GPU app builds base and Ray in its own file instead)
    head_ref: str
    code: CodeFiles  # the app's code tree, walked and ignore-filtered once
    context_files: tuple[tuple[str, str], ...]  # (name, text) staged beside the code
    content_hash: str  # the image tag's suffix: a hash of the whole context
    ref: str  # the content-addressed image reference
    main: bool  # the app's first platform: the one that gets `latest` and names the record entry

    @property
    def dockerfile_name(self) -> str:
        """`generate`'s file name, without .Dockerfile: ``hello``, ``hello.linux-arm64``."""
        return f"{self.app.name}{self.platform.lock_suffix}"

    @property
    def lock_digests(self) -> dict[str, str | None]:
        """The provenance labels' lockfile hashes: the Ray lock's, and the app's."""
        return {"ray": self.ray_lock.sha256, "app": self.app_lock.sha256}


@dataclass(frozen=True)
class Plans:
    """The plans of one command, in the order it builds them (each app's native platform first)."""

    plans: tuple[BuildPlan, ...]

    def __iter__(self) -> Iterator[BuildPlan]:
        return iter(self.plans)

    def of(self, app: App) -> tuple[BuildPlan, ...]:
        return tuple(plan for plan in self.plans if plan.app.name == app.name)

    def dockerfiles(self) -> list[tuple[str, str]]:
        """(file name, text) of each plan's Dockerfile, each app's platforms in raybuild's order."""
        ordered = sorted(self.plans, key=lambda p: platforms.ALLOWED.index(p.platform.name))
        return [(p.dockerfile_name, p.dockerfile) for a in _apps(self.plans) for p in ordered if p.app == a]


def _apps(plans: Sequence[BuildPlan]) -> list[App]:
    return list({plan.app.name: plan.app for plan in plans}.values())


def plan_builds(
    config: LoadedConfig,
    apps: tuple[App, ...],
    on: Sequence[str] | None = None,
    *,
    locked: bool = True,
) -> Plans:
    """The plan of each app for ``on`` (default: each app's own platforms).

    ``locked`` (a build): an app whose lockfiles are missing, out of date or not intact is refused, naming
    them and the `raybuild lock` that repairs them. `generate` plans unlocked apps too.
    """
    reads = Reads()
    templates = template_dir(config.root)
    script = read_text(prune_script(templates))
    head_templates = tuple((name, read_text(templates.path(name))) for name in HEAD_TEMPLATES)
    planned: list[BuildPlan] = []
    for app in apps:
        names = tuple(on) if on is not None else config.platforms(app)
        # The import check runs in the image this machine runs natively, when there is one.
        order = sorted(names, key=lambda p: not platforms.native(p))
        if locked:
            _check_locks(config, app, order[0], reads)
        main = config.platforms(app)[0]
        for name in order:
            planned.append(_plan(config, app, platforms.get(name), reads, script, head_templates, main))
    return Plans(tuple(planned))


def plan_for(
    config: LoadedConfig, app: App, platform: str = platforms.DEFAULT, *, locked: bool = True
) -> BuildPlan:
    """One image's plan (for tests and for callers that build a single image)."""
    (plan,) = plan_builds(config, (app,), (platform,), locked=locked)
    return plan


def _check_locks(config: LoadedConfig, app: App, platform: str, reads: Reader) -> None:
    for path in (config.lockfile(app, platform), config.ray_lockfile(platform)):
        if reads(path) is None or not path.is_file():
            raise BuildError(
                f"app {app.name!r}: no lockfile at {path.relative_to(config.root)}",
                hint=f"run `raybuild lock {app.name}`",
            )
    # Out of date, edited by hand or cut short: one line naming the file and the `raybuild lock` to run.
    resolve.check(config, (app,), reads)


def _plan(
    config: LoadedConfig,
    app: App,
    platform: Platform,
    reads: Reader,
    script: str,
    head_templates: tuple[tuple[str, str], ...],
    main: str,
) -> BuildPlan:
    ray = LockText(config.ray_lockfile(platform.name), reads(config.ray_lockfile(platform.name)))
    locked = LockText(config.lockfile(app, platform.name), reads(config.lockfile(app, platform.name)))
    # A lockfile that is not what raybuild wrote (edited, cut short) fails here, before any Dockerfile.
    lock_text = resolve.trusted_pins(config, app, platform.name, reads) or ""
    gpu = app.device == "gpu"
    base, builder = (
        bases.base_ref(config, app.device, platform.name),
        bases.builder_ref(config, platform.name),
    )
    # The CUDA version comes from the default platform's lock, as GPU apps are built for it alone.
    cuda = resolve.check_cuda(config, app, reads) if gpu else None
    if not gpu:
        # Before `raybuild lock` there is no Ray lock: `generate` still works, and `build` refuses to start.
        # One that is not what raybuild wrote is refused here, for the CPU apps whose head it makes.
        resolve.trusted_pins(config, None, platform.name, reads)
    trusted = ray.found is not None and ray.found.problem is None
    inputs = HeadInputs(base, builder, ray.text if trusted else "", script, head_templates)
    head = head_hash(config, app, inputs, platform.name)
    code = code_files(config, app)
    # Each file is read once, for the code hash (a label) and for the context hash below.
    code_bytes = [(rel, path.read_bytes()) for rel, path in code.files.items()]
    code_digest = hashlib.sha256()
    for rel, data in code_bytes:
        code_digest.update(rel.encode() + b"\0" + data + b"\0")
    spec = ImageSpec(
        app=app.name,
        device=app.device,
        python=config.project.python,
        ray_version=config.project.ray_version,
        base_image=base,
        builder_image=builder,
        lock_hash=locked.short_hash,
        env=tuple(sorted(app.env.items())),
        index_url=config.project.index_url,
        ld_library_path=nvidia_library_dirs(lock_text) if gpu else (),
        cuda=cuda,
        # GPU apps build base and Ray in their own file on the GPU base: identical Ray layer bytes, and a
        # CUDA runtime base ([base.gpu] cuda_runtime_image) works as well.
        head_image="" if gpu else head_ref(config, head),
        ray_lock_hash=ray.short_hash,
        code_hash=code_digest.hexdigest()[:16],
    )
    dockerfile = render_dockerfile(spec, template_dir(config.root))
    prune = app_prune_plan(app).to_json()
    files = (
        ("Dockerfile", dockerfile),
        ("ray.lock", ray.text),
        ("app.lock", extras_lock(locked.text, ray.text)),
        ("prune.py", script),
        ("prune-ray.json", prune),
        ("prune-app.json", prune),
        (".dockerignore", _DOCKERIGNORE),
    )
    digest = hashlib.sha256()
    for name, text in files:
        digest.update(f"{name}\0{text}\0".encode())
    for rel, data in code_bytes:
        digest.update(f"code/{rel}\0".encode() + data + b"\0")
    content = digest.hexdigest()[:12] + platform.suffix
    return BuildPlan(
        app, platform, ray, locked, spec, dockerfile, head, head_ref(config, head), code, files, content,
        image_ref(config, app, content), platform.name == main,
    )  # fmt: skip


def write_context(config: LoadedConfig, plan: BuildPlan, context: Path, progress: Progress = silent) -> None:
    """Stage ``plan``'s build context in the empty folder ``context``: what its Dockerfile reads, no more."""
    for name, text in plan.context_files:
        (context / name).write_text(text, encoding="utf-8")
    code = context / "code"
    code.mkdir()
    app, app_dir = plan.app, config.app_dir(plan.app)
    if (app_dir / ".dockerignore").is_file() and not (app_dir / IGNORE_FILE).is_file():
        progress(f"{app.name}: warning: {app.path}/.dockerignore is not read; put its rules in {IGNORE_FILE}")
    count = len(plan.code.files)
    progress(f"  {app.name}: {count} file{'s' if count != 1 else ''} of code, {plan.code.ignored} ignored")
    for rel, path in plan.code.files.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, code / rel)
        # Modes as git knows them (executable or not), not as this checkout's umask left them: they reach
        # the code layer. File times are clamped in the build.
        (code / rel).chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    for folder in (code, *(p for p in code.rglob("*") if p.is_dir())):
        folder.chmod(0o755)


# -- one image at a time, for tests and tools -------------------------------------------------------------


def stage_context(
    config: LoadedConfig,
    app: App,
    context: Path,
    progress: Progress = silent,
    platform: str = platforms.DEFAULT,
) -> str:
    """Write the app's build context into ``context``; return its content hash (the image tag's suffix)."""
    plan = plan_for(config, app, platform)
    write_context(config, plan, context, progress)
    return plan.content_hash


def image_spec_for(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> ImageSpec:
    return plan_for(config, app, platform, locked=False).spec


def dockerfile_for(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> str:
    """The app's Dockerfile for ``platform``, from the project's templates (or the bundled ones).

    Every platform's Dockerfile is the same text but for the images it starts from: BuildKit runs it for
    the platform of those images (``--platform``).
    """
    return plan_for(config, app, platform, locked=False).dockerfile


def head_hash_for(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> str:
    """The head image's tag suffix for a CPU ``app`` (see `spec.head_hash`)."""
    return plan_for(config, app, platform, locked=False).head_hash
