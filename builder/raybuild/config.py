"""The project config, ``raybuild.toml``: typed, frozen, and validated once at the edge.

Every validation error is turned into one line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raybuild import platforms as plat
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

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_APP_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `ha = true` on an app: so many replicas of each deployment and worker pods at least, so that losing one
# node leaves one serving, and at most this many replicas of a deployment per node (Serve's
# max_replicas_per_node), so that the replicas are on different nodes.
HA_MIN_REPLICAS = 2
HA_MAX_REPLICAS_PER_NODE = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_platforms(value: list[str] | None) -> list[str] | None:
    if value is None:
        return value
    allowed = ", ".join(repr(p) for p in plat.ALLOWED)
    if not value:
        raise ValueError(f"must name at least one platform ({allowed})")
    unknown = [p for p in value if p not in plat.KNOWN]
    if unknown:
        raise ValueError(f"unknown platform {unknown[0]!r}; allowed: {allowed}")
    if len(set(value)) != len(value):
        raise ValueError("names a platform twice")
    return value


class BaseImage(_Model):
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


class Bases(_Model):
    cpu: BaseImage = BaseImage()
    gpu: BaseImage = BaseImage()


class Autoscaling(_Model):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ActorOptions(_Model):
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0, description="bytes")

    @field_validator("num_cpus", "num_gpus", mode="before")
    @classmethod
    def _int_is_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Deployment(_Model):
    name: str = Field(min_length=1)
    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    ray_actor_options: ActorOptions = ActorOptions()

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> Deployment:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        return self


class Workers(_Model):
    """The KubeRay worker group that runs an app's image."""

    replicas: int = Field(default=1, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=3, ge=1)
    cpu: str = "2"
    memory: str = "4Gi"
    gpu: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Workers:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("need min_replicas <= replicas <= max_replicas")
        return self


class Prune(_Model):
    """Extra paths (globs relative to site-packages) to remove, and default rules to keep."""

    remove: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)


class Gate(_Model):
    max_size_growth: float | None = Field(default=None, ge=0)
    max_startup_growth: float | None = Field(default=None, ge=0)
    # Seconds: the team's scale-up budget for one node (pull plus head start), checked against the worst
    # measured t_cold. KubeRay 1.1+ ignores the RayService's unhealthy-second thresholds, so this is it.
    max_t_cold: float | None = Field(default=None, gt=0)

    @field_validator("max_size_growth", "max_startup_growth", "max_t_cold", mode="before")
    @classmethod
    def _int_is_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class App(_Model):
    name: str
    path: str
    requirements: str
    device: Literal["cpu", "gpu"] = "cpu"
    import_path: str
    route_prefix: str
    # Optional: without it, `raybuild build` finds the deployments in the code (image/introspect.py).
    deployments: list[Deployment] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    prune: Prune = Prune()
    workers: Workers = Workers()
    gate: Gate = Gate()
    # High availability: replicas on at least two worker nodes (see ``served``).
    ha: bool = False
    # Unset: [project].platforms for a CPU app, linux/amd64 for a GPU app (NVIDIA's CUDA wheels decide what
    # exists for other architectures, so a GPU app opts in with its own list).
    platforms: list[str] | None = None
    # Pins the app's worker group to nodes of one architecture (kubernetes.io/arch). Unset: pinned only when
    # the app is built for one platform, so that Kubernetes never schedules it where it cannot run.
    node_arch: str | None = None

    _platforms = field_validator("platforms")(_check_platforms)

    @model_validator(mode="after")
    def _node_arch_built(self) -> App:
        if self.node_arch is None:
            return self
        arches = [plat.get(p).architecture for p in self.platforms or plat.ALLOWED]
        if self.node_arch not in arches:
            raise ValueError(
                f"node_arch {self.node_arch!r} must be the architecture of a platform the app is built for "
                f"({', '.join(repr(a) for a in arches)})"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _APP_NAME.match(value):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter, at most 32")
        return value

    @field_validator("import_path")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not _IMPORT_PATH.match(value):
            raise ValueError(f"{value!r} is not of the form module:attr (for example 'hello.app:app')")
        return value

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, value: str) -> str:
        if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
            raise ValueError(f"{value!r} must start with '/' and not end with '/'")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if "\n" in value[key] or "\r" in value[key]:
                raise ValueError(f"the value of {key!r} must be a single line (a Dockerfile ENV is one line)")
        return value

    @property
    def num_gpus(self) -> float:
        return sum(d.ray_actor_options.num_gpus or 0.0 for d in self.deployments)

    def served(self) -> App:
        """The app as `render` and `up` run it. With ``ha``, every deployment and the worker group get at
        least HA_MIN_REPLICAS, raising a lower value written in raybuild.toml (a deployment without one,
        Serve's default of a single replica, included); the upper bounds follow where they would be lower."""
        if not self.ha:
            return self
        floor = HA_MIN_REPLICAS
        deployments = []
        for deployment in self.deployments:
            if deployment.autoscaling is not None:
                scaling = deployment.autoscaling
                low = max(scaling.min_replicas, floor)
                raised = scaling.model_copy(
                    update={"min_replicas": low, "max_replicas": max(scaling.max_replicas, low)}
                )
                deployments.append(deployment.model_copy(update={"autoscaling": raised}))
            else:
                replicas = max(deployment.num_replicas or 1, floor)
                deployments.append(deployment.model_copy(update={"num_replicas": replicas}))
        workers = self.workers
        workers = workers.model_copy(
            update={
                "replicas": max(workers.replicas, floor),
                "min_replicas": max(workers.min_replicas, floor),
                "max_replicas": max(workers.max_replicas, floor),
            }
        )
        return self.model_copy(update={"deployments": deployments, "workers": workers})


class Head(_Model):
    cpu: str = "2"
    memory: str = "4Gi"


class Gcs(_Model):
    """External GCS storage, so the head pod can restart without an outage."""

    enabled: bool = True
    store: Literal["redis", "dragonfly"] = "redis"
    redis_address: str = "raybuild-gcs:6379"
    password_secret: str = "raybuild-gcs"
    password_key: str = "password"


class Cluster(_Model):
    name: str = "raybuild-serve"
    namespace: str = "default"
    priority_class: str = "raybuild-critical"
    head: Head = Head()
    gcs: Gcs = Gcs()


class Project(_Model):
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

    _platforms = field_validator("platforms")(_check_platforms)

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


class Limits(_Model):
    """Bounds on what raybuild copies into images and on its registry work."""

    # A file in an app folder larger than this fails the build, unless a `!` line of .raybuildignore
    # names it: a stray dataset or core dump should not silently become a layer every node pulls.
    code_file_mb: int = Field(default=50, ge=1)
    # One image's push or pull, every attempt included: a registry that stalls fails here, never hangs.
    registry_deadline_s: int = Field(default=900, ge=1)
    # Attempts per push or registry read (raybuild's own retries: Docker's are cut short).
    registry_attempts: int = Field(default=4, ge=1, le=10)


ZSTD_DEFAULT_LEVEL = 19


class Publish(_Model):
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


class RaybuildConfig(_Model):
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
