"""Why a resolve failed, in terms of what the user can change.

A resolver's failure usually has one of a few causes, and each belongs to a different setting: the index
did not answer ([project].index_url, or the network), Ray has no wheels for the image's Python
([project].python), the Ray version does not exist ([project].ray_version), or the app's own requirements
cannot be met (its requirements file). Blaming "the app's requirements" for all of them sends users to the
wrong file, so each is recognised in uv's and pip-tools' output and named for what it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from raybuild import platforms
from raybuild.config import DEFAULT_RAY_VERSION, LoadedConfig
from raybuild.errors import LockError
from raybuild.lock.lockfile import normalize, parse_pins

if TYPE_CHECKING:
    from raybuild.lock.resolve import LockTarget

DEFAULT_INDEX = "https://pypi.org/simple"
# uv's --torch-backend reads torch, torchvision, triton ... from this index.
PYTORCH_INDEX = "download.pytorch.org"
RAY = "ray"

# What uv and pip print when the index cannot be reached at all (before anything was resolved).
_UNREACHABLE = re.compile(
    r"Failed to fetch|Request failed after|error sending request|tcp connect error|dns error|"
    r"NewConnectionError|Failed to establish a new connection|Max retries exceeded|ProxyError|"
    r"Temporary failure in name resolution|Name or service not known|Could not fetch URL|"
    r"invalid peer certificate|CERTIFICATE_VERIFY_FAILED",
    re.I,
)
_NO_WHEELS = re.compile(
    r"Because ([^\s,]+) has no wheels with a matching Python (?:implementation|version|ABI) tag|"
    r"Because the requested Python version \([^)]*\) does not satisfy \S+ and ([^\s,]+) depends on Python",
)
_WHEEL_TAGS = re.compile(r"`cp(3)(\d+)`")
# uv with --only-binary :all: (every platform but the default): a package without a wheel for the target.
_NO_PLATFORM_WHEEL = (
    re.compile(r"Wheels are required for `([^`]+)`"),
    re.compile(
        r"(?:versions? of |Because )([A-Za-z0-9._-]+)(?:==\S+)? (?:has|have) no (?:usable wheels|wheels "
        r"with a matching platform tag)"
    ),
)
# The short reason inside a network failure's output (pip buries it in a urllib3 exception's repr).
_NETWORK_CAUSE = re.compile(
    r"Connection refused|Name or service not known|Temporary failure in name resolution|timed out|"
    r"No route to host|Network is unreachable|CERTIFICATE_VERIFY_FAILED|invalid peer certificate[^\n]*|"
    r"ProxyError",
    re.I,
)
_NO_VERSION = (
    re.compile(r"there is no version of ([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s,]+)"),
    re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;,]+)"),
)
_NOT_FOUND = (
    re.compile(r"Because ([A-Za-z0-9._-]+) was not found in the package registry"),
    re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)"),
)


def _what(target: LockTarget) -> str:
    return "the shared Ray lock" if target.name == RAY else f"app {target.name!r}"


def torch_index_failure(target: LockTarget, output: str) -> LockError | None:
    """uv's --torch-backend reads torch from the PyTorch index; say so when that index was unreachable."""
    if PYTORCH_INDEX not in output or target.torch_backend == "none":
        return None
    url = next((w for w in output.split() if PYTORCH_INDEX in w), f"https://{PYTORCH_INDEX}").rstrip("/")
    key = "gpu_torch_backend" if target.device == "gpu" else "torch_backend"
    return LockError(
        f"app {target.name!r}: --torch-backend {target.torch_backend} takes torch from the PyTorch index, "
        f"and {url} was not reachable",
        hint=f"make {PYTORCH_INDEX} reachable (or set [project].index_url to a mirror of it), or set "
        f'[project].{key} = "none" to take torch from the index (PyPI\'s Linux torch is the CUDA build)',
    )


def index_failure(config: LoadedConfig, output: str) -> LockError | None:
    """The package index did not answer: name it, and the setting that chose it."""
    if not _UNREACHABLE.search(output):
        return None
    causes = [ln.strip().removeprefix("cause:").strip() for ln in output.splitlines() if "cause:" in ln]
    short = _NETWORK_CAUSE.search(output)
    cause = (causes[-1] if causes else short.group(0) if short else "no answer")[:160]
    index = config.project.index_url
    if index:
        return LockError(
            f"the package index {index} ([project].index_url) did not answer: {cause}",
            hint="check [project].index_url in raybuild.toml, and that this host reaches it (proxy, DNS): "
            f"`curl {index.rstrip('/')}/ray/`",
        )
    return LockError(
        f"the package index {DEFAULT_INDEX} (the default) did not answer: {cause}",
        hint="check this host's network and proxy, or set [project].index_url in raybuild.toml to a mirror",
    )


def python_failure(config: LoadedConfig, target: LockTarget, output: str) -> LockError | None:
    """A package has no wheels for the image's Python: that is [project].python's doing."""
    match = _NO_WHEELS.search(output)
    if match is None:
        return None
    package = match.group(1) or match.group(2)
    python = config.project.python
    listed = output.split("tags:", 1)[1] if "tags:" in output else ""  # uv's hint lists what exists
    tags = sorted({f"{a}.{b}" for a, b in _WHEEL_TAGS.findall(listed)}, key=lambda v: int(v.split(".")[1]))
    has = f" (it has wheels for {', '.join(tags)})" if tags else ""
    owner = "" if normalize(re.split(r"[\[=]", package)[0]) == RAY else f"{_what(target)}: "
    return LockError(
        f'{owner}project.python = "{python}": {package} has no wheels for Python {python}{has}',
        hint="set [project].python in raybuild.toml to a Python that Ray and the apps support "
        "(the base image installs that same Python)",
    )


def platform_failure(target: LockTarget, output: str) -> LockError | None:
    """A package with no wheel for a platform other than the default: refused at lock time, not at build."""
    if target.platform == platforms.DEFAULT:
        return None
    match = next((m for m in (p.search(output) for p in _NO_PLATFORM_WHEEL) if m), None)
    if match is None:
        return None
    return LockError(
        f"{_what(target)}: {match.group(1)} has no wheel for {target.platform}",
        hint=f"pick a version (or a replacement) that publishes {platforms.get(target.platform).machine} "
        f"wheels, or leave {target.platform} out of the app's platforms",
    )


def version_failure(config: LoadedConfig, target: LockTarget, output: str) -> LockError | None:
    """A pinned version that the index does not have: Ray's is [project].ray_version."""
    for pattern in _NO_VERSION:
        match = pattern.search(output)
        if match is None:
            continue
        name, version = match.group(1), match.group(2)
        if normalize(name) == RAY:
            index = config.project.index_url or DEFAULT_INDEX
            return LockError(
                f'project.ray_version = "{config.project.ray_version}": Ray {version} is not on the '
                f"index ({index})",
                hint="set [project].ray_version in raybuild.toml to a released Ray version, "
                f"such as {DEFAULT_RAY_VERSION}",
            )
        return LockError(
            f"{_what(target)}: {name}=={version} is not on the index",
            hint="check the version in the app's requirements file",
        )
    return None


def explain_failure(config: LoadedConfig, target: LockTarget, output: str) -> LockError:
    """Turn the resolver's output into one line that names what to change: a setting, a file, a package."""
    return (
        torch_index_failure(target, output)
        or index_failure(config, output)
        or python_failure(config, target, output)
        or platform_failure(target, output)
        or version_failure(config, target, output)
        or requirements_failure(_what(target), output, target.requirements, target.constraint)
    )


def requirements_failure(what: str, output: str, requirements: str, ray_lock: Path | None) -> LockError:
    """A failure of the requirements themselves: a package that does not exist, or a clash with Ray's pins."""
    cause = next((ln.strip() for ln in output.splitlines() if "cause:" in ln or "Because" in ln), "")
    cause = cause.removeprefix("cause:").strip() or (output.strip().splitlines() or ["resolver failed"])[-1]
    missing = next((m for m in (p.search(output) for p in _NOT_FOUND) if m), None)
    if missing or "No matching distribution" in output:
        package = missing.group(1) if missing else "a requirement"
        return LockError(
            f"{what}: package {package!r} does not exist on the index",
            hint="check the name in the app's requirements file",
        )
    pins = {}
    if ray_lock is not None and ray_lock.is_file():
        pins = parse_pins(ray_lock.read_text(encoding="utf-8", errors="replace"))
    clashes = []
    for line in requirements.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and normalize(match.group(1)) in pins and normalize(match.group(1)) != RAY:
            name = normalize(match.group(1))
            if name in output.lower():
                clashes.append(f"{line.strip()} (app) vs {name}=={pins[name]} (Ray's lock)")
    if clashes:
        return LockError(
            f"{what} conflicts with the shared Ray lock: " + "; ".join(clashes),
            hint="relax the app's pin: every image must use Ray's version of its own dependencies",
        )
    return LockError(f"{what}: cannot resolve: {cause}", hint="check the app's requirements file")
