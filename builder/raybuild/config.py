"""The project config, ``raybuild.toml``: typed, frozen, and validated once at the edge.

The project-wide tables and the loading live here; an app's tables (``[[apps]]``) are in ``config_apps.py``.

Every validation error is turned into one line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raybuild import platforms as plat
from raybuild.config_apps import App, ConfigTable, Deployment, Gate, check_platforms
from raybuild.config_checks import check_paths, describe_error
from raybuild.errors import ConfigError, FileError, shown_path

CONFIG_NAME = "raybuild.toml"
# Overrides [project].registry: CI points every command at a registry that outlives the job, so that a
# pull request's `raybuild build` pulls what main published (see .github/workflows/images.yml).
REGISTRY_ENV = "RAYBUILD_REGISTRY"
DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_PYTHON = "3.11"
# Python minors that Ray has published wheels for in its recent releases (2.60 ships 3.10 to 3.14). Whether
# the chosen Ray has wheels for the chosen Python is known only to the index: `raybuild lock` says so.
SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")


class BaseImage(ConfigTable):
    """Where a device's base image comes from."""

    source: Literal["bootstrap", "image"] = "bootstrap"
    image: str = "debian:bookworm-slim"
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    snapshot: str | None = None
    cuda_runtime_image: str | None = None

    @field_validator("snapshot")
    @classmethod
    def _snapshot_format(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{8}T\d{6}Z", value):
            raise ValueError("must look like 20261101T000000Z (a snapshot.debian.org timestamp)")
        return value


class Bases(ConfigTable):
    cpu: BaseImage = BaseImage()
    gpu: BaseImage = BaseImage()


class Head(ConfigTable):
    cpu: str = "2"
    memory: str = "4Gi"


class Gcs(ConfigTable):
    """External GCS storage, so the head pod can restart without an outage."""

    enabled: bool = True
    store: Literal["redis", "dragonfly"] = "redis"
    redis_address: str = "raybuild-gcs:6379"
    password_secret: str = "raybuild-gcs"
    password_key: str = "password"


class Cluster(ConfigTable):
    name: str = "raybuild-serve"
    namespace: str = "default"
    priority_class: str = "raybuild-critical"
    head: Head = Head()
    gcs: Gcs = Gcs()


class Project(ConfigTable):
    name: str = "raybuild-project"
    ray_version: str = DEFAULT_RAY_VERSION
    python: str = DEFAULT_PYTHON
    registry: str = "127.0.0.1:5000/raybuild"
    resolver: Literal["uv", "pip-tools"] = "uv"
    lock_dir: str = "lockfiles"
    platform: str = "x86_64-manylinux_2_36"
    # OCI platforms every CPU app's image is built for; more than one publishes an image index per app.
    platforms: list[str] = Field(default_factory=lambda: [plat.DEFAULT])
    index_url: str | None = None
    torch_backend: str = "cpu"
    gpu_torch_backend: str = "cu128"
    # File times in every image layer (seconds since 1970). Unset: from git, per image (raybuild.image.epoch).
    source_date_epoch: int | None = Field(default=None, ge=0)

    _platforms = field_validator("platforms")(check_platforms)

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if not re.fullmatch(r"3\.\d{1,2}", value):
            raise ValueError(f"{value!r} must be a minor version such as '3.11'")
        if value not in SUPPORTED_PYTHONS:
            supported = ", ".join(SUPPORTED_PYTHONS)
            raise ValueError(f"Python {value} is not one Ray publishes wheels for (supported: {supported})")
        return value

    @field_validator("ray_version")
    @classmethod
    def _ray(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError(f"{value!r} must be an exact version such as '2.60.0'")
        return value

    @field_validator("torch_backend", "gpu_torch_backend")
    @classmethod
    def _torch_backend(cls, value: str) -> str:
        # uv's --torch-backend values, or "none": take torch from the index like any other package.
        if not re.fullmatch(r"none|auto|cpu|cu\d{2,3}|rocm\d+(\.\d+)*|xpu", value):
            raise ValueError(f"{value!r} must be a uv --torch-backend such as 'cpu' or 'cu128', or 'none'")
        return value


class Limits(ConfigTable):
    """Bounds on what raybuild copies into images and on its registry work."""

    # A file in an app folder larger than this fails the build, unless a `!` line of .raybuildignore
    # names it: a stray dataset or core dump should not silently become a layer every node pulls.
    code_file_mb: int = Field(default=50, ge=1)
    # One image's push or pull, every attempt included: a registry that stalls fails here, never hangs.
    registry_deadline_s: int = Field(default=900, ge=1)
    # Attempts per push or registry read (raybuild's own retries: Docker's are cut short).
    registry_attempts: int = Field(default=4, ge=1, le=10)


ZSTD_DEFAULT_LEVEL = 19


class Publish(ConfigTable):
    """How `raybuild publish` compresses layers. gzip: every Docker and containerd pulls it. zstd: smaller
    and faster to unpack, but only containerd >= 1.5 and Docker Engine >= 23 can pull it."""

    compression: Literal["gzip", "zstd"] = "gzip"
    # zstd's levels; None: ZSTD_DEFAULT_LEVEL. `docker push` takes no level, so gzip has none.
    compression_level: int | None = Field(default=None, ge=1, le=22)

    @model_validator(mode="after")
    def _level_needs_zstd(self) -> Publish:
        if self.compression == "gzip" and self.compression_level is not None:
            raise ValueError(
                'compression_level applies to compression = "zstd" only (docker push sets gzip\'s)'
            )
        return self

    @property
    def level(self) -> int | None:
        if self.compression == "gzip":
            return None
        return self.compression_level if self.compression_level is not None else ZSTD_DEFAULT_LEVEL


class RaybuildConfig(ConfigTable):
    project: Project = Project()
    publish: Publish = Publish()
    base: Bases = Bases()
    cluster: Cluster = Cluster()
    gate: Gate = Gate()
    limits: Limits = Limits()
    apps: list[App] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RaybuildConfig:
        for key in ("name", "route_prefix"):
            seen: dict[str, int] = {}
            for index, app in enumerate(self.apps):
                value = getattr(app, key)
                if value in seen:
                    raise ValueError(
                        f"key 'apps[{index}].{key}': duplicate {key} {value!r} (also apps[{seen[value]}]); "
                        "each app needs its own"
                    )
                seen[value] = index
        return self


class LoadedConfig:
    """A validated config together with the directory it was read from."""

    def __init__(self, config: RaybuildConfig, root: Path, path: Path) -> None:
        self.config = config
        self.root = root
        self.path = path

    @property
    def apps(self) -> tuple[App, ...]:
        return tuple(self.config.apps)

    @property
    def project(self) -> Project:
        return self.config.project

    def app_dir(self, app: App) -> Path:
        return self.root / app.path

    def requirements_file(self, app: App) -> Path:
        return self.root / app.requirements

    def lock_dir(self) -> Path:
        return self.root / self.project.lock_dir

    def lockfile(self, app: App, platform: str = plat.DEFAULT) -> Path:
        return self.lock_dir() / f"{app.name}{plat.get(platform).lock_suffix}.txt"

    def ray_lockfile(self, platform: str = plat.DEFAULT) -> Path:
        return self.lock_dir() / f"ray{plat.get(platform).lock_suffix}.txt"

    def platforms(self, app: App) -> tuple[str, ...]:
        """The platforms ``app``'s image is built for, the default platform first."""
        if app.platforms is not None:
            return plat.ordered(app.platforms)
        if app.device == "gpu":
            return (plat.DEFAULT,)
        return plat.ordered(self.project.platforms)

    def all_platforms(self, apps: tuple[App, ...] | None = None) -> tuple[str, ...]:
        """Every platform one of ``apps`` (default: all) is built for: each needs a Ray lock and head."""
        return plat.ordered(p for app in (self.apps if apps is None else apps) for p in self.platforms(app))

    def node_arch(self, app: App) -> str | None:
        """The kubernetes.io/arch value an app's worker group is pinned to, if any."""
        if app.node_arch is not None:
            return app.node_arch
        built = self.platforms(app)
        return plat.get(built[0]).architecture if len(built) == 1 else None

    def image_name(self, app: App) -> str:
        return f"{self.project.registry}/{app.name}"

    def with_deployments(self, found: dict[str, list[Deployment]]) -> LoadedConfig:
        """The config with ``found`` deployments for the apps whose raybuild.toml lists none."""
        apps = [
            app.model_copy(update={"deployments": found[app.name]})
            if not app.deployments and app.name in found
            else app
            for app in self.apps
        ]
        return LoadedConfig(self.config.model_copy(update={"apps": apps}), self.root, self.path)

    def with_resolver(self, resolver: str) -> LoadedConfig:
        project = self.project.model_copy(update={"resolver": resolver})
        return LoadedConfig(self.config.model_copy(update={"project": project}), self.root, self.path)

    def select(self, names: tuple[str, ...] | list[str]) -> tuple[App, ...]:
        """The apps named on the command line, in config order; all apps when none are named."""
        if not names:
            return self.apps
        known = {app.name for app in self.apps}
        unknown = [name for name in names if name not in known]
        if unknown:
            from raybuild.errors import UsageError

            raise UsageError(
                f"unknown app {', '.join(repr(n) for n in unknown)} in {self.path.name}",
                hint="known apps: " + ", ".join(sorted(known)),
            )
        return tuple(app for app in self.apps if app.name in names)


def parse_config(data: dict[str, Any], path: Path) -> RaybuildConfig:
    try:
        return RaybuildConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        hint = None
        if first["type"] == "extra_forbidden":
            hint = "check the spelling; the README's config reference lists every key"
        raise ConfigError(describe_error(first, RaybuildConfig, path.name), hint=hint) from exc


def _config_file(path: Path) -> Path:
    """``--config`` may name the file or the folder that holds it."""
    try:
        return path / CONFIG_NAME if path.is_dir() else path
    except OSError as exc:  # a name too long for the file system, say
        reason = FileError.from_os_error(exc, path, "read").message.rsplit(": ", 1)[-1]
        raise ConfigError(
            f"--config {shown_path(path)}: {reason}",
            hint="pass the path of raybuild.toml, or of the folder that holds it",
        ) from exc


def _read(path: Path) -> RaybuildConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(FileError.not_utf8(path.name, exc).message, hint=f"save {path} as UTF-8") from exc
    except OSError as exc:
        error = FileError.from_os_error(exc, path, "read")
        raise ConfigError(error.message, hint=error.hint) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc
    return parse_config(data, path)


def load_config(path: Path) -> LoadedConfig:
    """Read, validate and check the files that ``path`` refers to."""
    path = _config_file(path)
    if not path.is_file():
        raise ConfigError(
            f"{shown_path(path)}: no such file",
            hint="run `raybuild init DIR` or pass --config PATH/raybuild.toml",
        )
    config = _read(path)
    registry = os.environ.get(REGISTRY_ENV, "").strip().rstrip("/")
    if registry:
        project = config.project.model_copy(update={"registry": registry})
        config = config.model_copy(update={"project": project})
    root = path.parent.resolve()
    check_paths(config, path, root)
    return LoadedConfig(config, root, path.resolve())


def load_gate_config(path: Path, *, required: bool) -> LoadedConfig | None:
    """The config read for the gate's limits ([gate], [apps.gate]); None when there is none to read.

    Unlike ``load_config``, app folders and requirements files need not exist: a gate job may run with
    nothing checked out but the two measure files. A missing file is an error only when ``required`` (the
    user named it); a file that exists but is invalid is always one, so that a typo in [gate] cannot
    silently loosen the gate.
    """
    path = _config_file(path)
    if not path.is_file():
        if required:
            raise ConfigError(
                f"{path}: no such file",
                hint="fix --config / RAYBUILD_CONFIG, or leave both unset to use the defaults",
            )
        return None
    return LoadedConfig(_read(path), path.parent.resolve(), path.resolve())
