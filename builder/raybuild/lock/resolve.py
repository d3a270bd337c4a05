"""Per-app lockfiles, every app pinned to the same Ray.

First the shared Ray lock (``ray[serve]==X`` alone) is compiled. Then each app is compiled with that lock as
a constraint, so a package an app shares with Ray gets the very version Ray's layer has: the app layer only
adds packages, and one Ray layer serves every image. Locks target the image's Python and Linux platform,
not the host's. A GPU app's lockfile also records the CUDA version its wheels need (see cuda.py).

One lockfile per platform an app is built for (``hello.txt``, ``hello.linux-arm64.txt``), each against that
platform's Ray lock: a universal resolution would pick one version for all platforms, which fails or falls
back to an older release whenever a package publishes a wheel for one architecture later than for another.
Every platform but the default is locked with wheels only: its image is built under emulation, where an
sdist would build slowly if at all, and a missing wheel is better found at lock time than in a build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.errors import LockError, StaleLockError
from raybuild.fsutil import atomic_write, read_text
from raybuild.lock import cuda, lockfile
from raybuild.lock.failures import explain_failure, torch_index_failure
from raybuild.lock.lockfile import extras_lock, normalize, parse_pins
from raybuild.progress import Progress, silent
from raybuild.runner import Result, Runner, which

__all__ = ["explain_failure", "extras_lock", "normalize", "parse_pins", "torch_index_failure"]

HEADER_HASH = lockfile.INPUTS_HASH
RAY_LOCK_NAME = "ray"


def stored_hash(path: Path) -> str | None:
    """The inputs hash in a lockfile's header; None without a lockfile or a raybuild header."""
    found = lockfile.read(path)
    return found.inputs_hash if found is not None else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LockTarget:
    """One lockfile to compile: its inputs, and where it goes."""

    name: str
    path: Path
    requirements: str  # the .in text that is resolved
    constraint: Path | None
    regenerate: str
    torch_backend: str = "cpu"
    device: str = "cpu"  # a GPU app's header records its CUDA version
    platform: str = platforms.DEFAULT

    def python_platform(self, config: LoadedConfig) -> str:
        return platforms.get(self.platform).python_platform(config.project.platform)

    def inputs_hash(self, config: LoadedConfig, reader: lockfile.Reader = lockfile.read) -> str:
        project = config.project
        found = reader(self.constraint) if self.constraint is not None else None
        constraint = (found.sha256 or "") if found is not None else ""  # the Ray lock's bytes
        digest = hashlib.sha256()
        for part in (
            "raybuild-lock-v1",
            project.resolver,
            project.python,
            self.python_platform(config),
            project.index_url or "",
            self.torch_backend,
            self.requirements,
            constraint,
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass(frozen=True)
class LockResult:
    name: str
    path: Path
    changed: bool
    packages: int
    cuda: str | None = None  # GPU apps: "12.9", "12", or "none"
    platform: str = platforms.DEFAULT


def ray_target(config: LoadedConfig, platform: str = platforms.DEFAULT) -> LockTarget:
    return LockTarget(
        name=RAY_LOCK_NAME,
        path=config.ray_lockfile(platform),
        requirements=f"ray[serve]=={config.project.ray_version}\n",
        constraint=None,
        regenerate="raybuild lock",
        platform=platform,
    )


def app_target(config: LoadedConfig, app: App, platform: str = platforms.DEFAULT) -> LockTarget:
    user = read_text(config.requirements_file(app), hint=f"save {app.requirements} as UTF-8 text")
    # Ray is part of every app's lock: the resolver then sees the app's needs and Ray's pins together.
    requirements = user.rstrip("\n") + ("\n" if user.strip() else "")
    requirements += f"ray[serve]=={config.project.ray_version}\n"
    return LockTarget(
        name=app.name,
        path=config.lockfile(app, platform),
        requirements=requirements,
        constraint=config.ray_lockfile(platform),
        regenerate=f"raybuild lock {app.name}",
        torch_backend=(
            config.project.gpu_torch_backend if app.device == "gpu" else config.project.torch_backend
        ),
        device=app.device,
        platform=platform,
    )


def targets(config: LoadedConfig, apps: tuple[App, ...]) -> tuple[list[LockTarget], list[LockTarget]]:
    """The shared Ray locks and the app locks for every platform ``apps`` are built for."""
    rays = [ray_target(config, platform) for platform in config.all_platforms(apps)]
    return rays, [app_target(config, app, platform) for app in apps for platform in config.platforms(app)]


def cuda_line(target: LockTarget, body: str) -> str:
    """The header's CUDA line: GPU apps only; raises on wheels that mix CUDA majors."""
    need = cuda.cuda_need(parse_pins(body), target.name)
    return cuda.header_line(need) if target.device == "gpu" else ""


def header(target: LockTarget, config: LoadedConfig, cuda_text: str = "") -> str:
    project = config.project
    # The CUDA line is derived from the resolved pins, not an input: the inputs hash does not cover it, and
    # `stale` checks it against the pins instead.
    return (
        f"{lockfile.GENERATED}\n"
        f"# Regenerate it with: {target.regenerate}\n"
        f"# Target: Python {project.python}, {target.python_platform(config)}, Ray {project.ray_version}, "
        f"resolver {project.resolver}\n"
        f"{cuda_text}{HEADER_HASH}{target.inputs_hash(config)}\n"
    )


def lockfile_text(target: LockTarget, config: LoadedConfig, body: str) -> str:
    """The whole lockfile for ``body``, as `raybuild lock` writes it (header, body hash, pins)."""
    return lockfile.compose(header(target, config, cuda_line(target, body)), body)


# Runs a resolver command line: uv or pip-compile, or a test's stand-in.
Resolver = Callable[[list[str]], Result]

# pip-tools resolves through pip, which reads pip.conf files and PIP_* variables: a host's extra indexes,
# find-links or constraints would change the resolution and be written into the lockfile. Only settings
# that say how to reach the network are kept; what to resolve against comes from raybuild.toml alone.
_PIP_NETWORK_SETTINGS = frozenset(
    {
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "PIP_PROXY",
        "PIP_TRUSTED_HOST",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_TIMEOUT",
        "PIP_RETRIES",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
)


def resolver_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a resolver run: the host's, minus pip settings that change what is resolved."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if not k.startswith("PIP_") or k in _PIP_NETWORK_SETTINGS}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip reads no config file at all when this is os.devnull
    return env


def _run(command: list[str]) -> Result:
    return Runner().run(command, check=False, stdout_only=True, environment=resolver_env(), what=command[0])


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = which("uv")
        if found is None:
            raise LockError("uv not found", hint="pip install uv, or use --resolver pip-tools") from None
        return found


def compile_command(config: LoadedConfig, target: LockTarget, source: Path, output: Path) -> list[str]:
    project = config.project
    # Both resolvers: hashes for --require-hashes, and no header (raybuild writes its own).
    common = ["compile", str(source), "-o", str(output), "--generate-hashes", "--no-header", "--quiet"]
    if project.resolver == "uv":
        command = [
            uv_binary(),
            "pip",
            *common,
            "--python-version",
            project.python,
            "--python-platform",
            target.python_platform(config),
        ]
        if target.platform != platforms.DEFAULT:
            command += ["--only-binary", ":all:"]
        # "none" takes torch from the index like any package (PyPI's Linux torch is the CUDA build).
        if target.torch_backend != "none":
            command += ["--torch-backend", target.torch_backend]
    else:
        if importlib.util.find_spec("piptools") is None:
            raise LockError(
                "resolver pip-tools (--resolver or [project].resolver) needs pip-tools, which is not "
                "installed beside raybuild",
                hint="install raybuild's pip-tools extra (pip install 'raybuild[pip-tools]'), "
                "or use the default uv resolver",
            )
        if target.platform != platforms.DEFAULT:
            raise _pip_tools_cannot(target.platform)
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if host != project.python:
            raise LockError(
                f"--resolver pip-tools resolves for the running Python {host}, "
                f"but the images use {project.python}",
                hint=f"run raybuild under Python {project.python}, or use the default uv resolver",
            )
        command = [
            sys.executable,
            "-m",
            "piptools",
            *common,
            "--strip-extras",
            "--allow-unsafe",
            "--no-config",
        ]
    if project.index_url:
        command += ["--index-url", project.index_url]
    if target.constraint is not None:
        command += ["-c", str(target.constraint)]
    return command


def _pip_tools_cannot(platform: str) -> LockError:
    return LockError(
        f"resolver pip-tools cannot lock for {platform}: it resolves for the machine it runs on only",
        hint="use the default uv resolver, which locks for every platform from any machine, or leave "
        f"{platform} out of [project].platforms and the apps' platforms",
    )


def compile_target(config: LoadedConfig, target: LockTarget, runner: Resolver | None = None) -> LockResult:
    """Compile one lockfile; the previous one stays in place until the new one is complete."""
    return _write_all([_compile(config, target, runner or _run)])[0]


def _write_all(compiled: list[tuple[LockResult, str | None]]) -> list[LockResult]:
    for result, text in compiled:
        if text is not None:
            atomic_write(result.path, text)
    return [result for result, _ in compiled]


def _compile(config: LoadedConfig, target: LockTarget, runner: Resolver) -> tuple[LockResult, str | None]:
    """A lockfile's result, and its new text when it changed (None: the file stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="raybuild-lock-") as tmp:
        source = Path(tmp) / f"{target.name}.in"
        source.write_text(target.requirements, encoding="utf-8")
        output = Path(tmp) / f"{target.name}.txt"
        command_target = target
        if target.constraint is not None and target.constraint.is_file():
            # Resolvers write the constraint's path into "# via" comments, as given or relative to the
            # working directory. A copy at its project-relative path inside `tmp` makes that text the same
            # whatever directory raybuild runs from.
            copy = Path(tmp) / _project_relative(target.constraint, config.root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target.constraint, copy)
            command_target = dataclasses.replace(target, constraint=copy)
        result = runner(compile_command(config, command_target, source, output))
        if result.returncode != 0 or not output.is_file():
            raise explain_failure(config, target, result.stderr + result.output)
        body = output.read_text(encoding="utf-8")
        for prefix in _display_prefixes(Path(tmp)):
            body = body.replace(prefix, "")
    # Checked before the write: wheels that mix CUDA majors leave the previous lockfile as it was.
    cuda_text = cuda_line(target, body)
    text = lockfile_text(target, config, body)
    old = lockfile.read(target.path)
    if old is not None and not old.raybuilds:
        # Never write over a file raybuild did not make: lock_dir may point where the user keeps files.
        raise lockfile.problem_error(old, _shown(config, target.path), target.regenerate)
    changed = old is None or old.header + old.body != text or old.problem is not None
    recorded = cuda.recorded(cuda_text) if cuda_text else None
    locked = LockResult(target.name, target.path, changed, len(parse_pins(body)), recorded, target.platform)
    return locked, text if changed else None


def _shown(config: LoadedConfig, path: Path) -> str:
    """A lockfile's path as messages show it: relative to the project when it lies inside."""
    try:
        return str(path.relative_to(config.root))
    except ValueError:
        return str(path)


def _project_relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return Path(path.name)


def _display_prefixes(tmp: Path) -> list[str]:
    """How a resolver may print paths under ``tmp``: absolute, or relative to the working directory."""
    prefixes = [f"{tmp}/"]
    if tmp.is_relative_to(Path.cwd()):
        prefixes.insert(0, f"{tmp.relative_to(Path.cwd())}/")
    return prefixes


def lock(
    config: LoadedConfig,
    apps: tuple[App, ...],
    runner: Resolver | None = None,
    progress: Progress = silent,
) -> list[LockResult]:
    runner = runner or _run
    rays, app_targets = targets(config, apps)
    other = next((t.platform for t in rays if t.platform != platforms.DEFAULT), None)
    if config.project.resolver == "pip-tools" and other is not None:
        raise _pip_tools_cannot(other)  # before any lock is compiled, not after the first ones
    compiled = []
    for ray in rays:
        # The shared lock is compiled again when its inputs changed, and when it is not intact (edited, cut
        # short, not UTF-8): it is raybuild's own output, so `raybuild lock` is how any of that is repaired.
        if _problem(config, ray) is not None:
            progress(f"ray (shared Ray lock){_for(ray)}")
            compiled.append(_compile(config, ray, runner))
    # Every platform's lockfile of one app is written only once all of them resolved: a package with no
    # wheel for one platform leaves every lockfile of the app as it was.
    results = _write_all(compiled)
    for app in apps:
        compiled = []
        for target in (t for t in app_targets if t.name == app.name):
            progress(f"{target.name}{_for(target)}")
            compiled.append(_compile(config, target, runner))
        results += _write_all(compiled)
    return results


def _for(target: LockTarget) -> str:
    return "" if target.platform == platforms.DEFAULT else f" for {target.platform}"


def _cuda_line_current(target: LockTarget, found: lockfile.Lockfile) -> bool:
    """A lockfile's CUDA line matches its pins (and only a GPU app's lockfile has one)."""
    try:
        expected = cuda_line(target, found.body)
    except LockError:
        return False
    return cuda.recorded(found.header) == (cuda.recorded(expected) if expected else None)


OUT_OF_DATE = "out of date: its requirements, the Ray lock or [project] changed since it was locked"
CUDA_MISMATCH = "its CUDA line does not match its pins"


def _problem(config: LoadedConfig, target: LockTarget, reader: lockfile.Reader = lockfile.read) -> str | None:
    """Why ``target``'s lockfile cannot be used as it is; None when it is intact and current."""
    found = reader(target.path)
    if found is None:
        return "missing"
    if found.problem is not None:
        return found.problem
    if found.inputs_hash != target.inputs_hash(config, reader):
        return OUT_OF_DATE
    if not _cuda_line_current(target, found):
        return CUDA_MISMATCH
    return None


def problems(
    config: LoadedConfig, apps: tuple[App, ...], reader: lockfile.Reader = lockfile.read
) -> list[tuple[str, str]]:
    """(path, reason) of each lockfile that is missing, out of date or not intact. Writes nothing."""
    rays, app_targets = targets(config, apps)
    out = []
    ray_broken = set()
    for ray in rays:
        ray_reason = _problem(config, ray, reader)
        if ray_reason is not None:
            out.append((_shown(config, ray.path), ray_reason))
        # An app's inputs include the Ray lock's bytes, so a Ray lock edited by hand makes every app "out of
        # date" too: that says nothing more, and the `raybuild lock` that repairs the Ray lock relocks them.
        if ray_reason not in (None, "missing", OUT_OF_DATE):
            ray_broken.add(ray.platform)
    for target in app_targets:
        reason = _problem(config, target, reader)
        if reason is not None and not (target.platform in ray_broken and reason == OUT_OF_DATE):
            out.append((_shown(config, target.path), reason))
    return out


def stale(config: LoadedConfig, apps: tuple[App, ...]) -> list[str]:
    """Lockfiles (relative paths) that are missing, out of date or not intact. Writes nothing."""
    return [path for path, _ in problems(config, apps)]


def regenerate_command(config: LoadedConfig, apps: tuple[App, ...], found: list[tuple[str, str]]) -> str:
    """The one `raybuild lock` that repairs every lockfile in ``found``."""
    paths = {p for p, _ in found}
    names = [
        app.name
        for app in apps
        if any(_shown(config, config.lockfile(app, p)) in paths for p in config.platforms(app))
    ]
    ray_broken = any(_shown(config, config.ray_lockfile(p)) in paths for p in config.all_platforms(apps))
    if ray_broken or not names:
        return "raybuild lock"
    return "raybuild lock " + " ".join(names)


def check(config: LoadedConfig, apps: tuple[App, ...], reader: lockfile.Reader = lockfile.read) -> None:
    """Raise ``StaleLockError`` (one line naming each file, and the command that repairs them)."""
    found = problems(config, apps, reader)
    if found:
        foreign = any(reason in lockfile.FOREIGN for _, reason in found)
        hint = lockfile.FOREIGN_HINT if foreign else None
        raise StaleLockError(found, regenerate_command(config, apps, found), hint)


def cuda_need(
    config: LoadedConfig, app: App, reader: lockfile.Reader = lockfile.read
) -> cuda.CudaNeed | None:
    """What CUDA an app's locked wheels need (None without CUDA wheels or a lockfile)."""
    body = trusted_pins(config, app, reader=reader)
    return cuda.cuda_need(parse_pins(body or ""), app.name)


def trusted_pins(
    config: LoadedConfig,
    app: App | None,
    platform: str = platforms.DEFAULT,
    reader: lockfile.Reader = lockfile.read,
) -> str | None:
    """The pinned body of an app's lockfile (the shared Ray lock's for None); None when there is none.

    A lockfile that was edited, cut short or is not UTF-8 is a ``LockError`` naming it and the command
    that rewrites it: nothing is generated or built from pins that raybuild did not write.
    """
    path = config.ray_lockfile(platform) if app is None else config.lockfile(app, platform)
    regenerate = "raybuild lock" if app is None else f"raybuild lock {app.name}"
    return lockfile.trusted_body(path, _shown(config, path), regenerate, reader)


def check_cuda(config: LoadedConfig, app: App, reader: lockfile.Reader = lockfile.read) -> str | None:
    """The CUDA version ("12.9", or the major "12") an app's wheels need; an error if they mix majors."""
    need = cuda_need(config, app, reader)
    return need.version if need else None
