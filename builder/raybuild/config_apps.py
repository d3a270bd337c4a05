"""raybuild.toml's ``[[apps]]`` tables: an app, its deployments, worker group, prune rules and gate limits
(``Gate`` is also the project-wide ``[gate]``), and what ``ha = true`` raises them to. ``config.py`` holds the
other project-wide tables and the loading.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raybuild import platforms as plat

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_APP_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `ha = true` on an app: so many replicas of each deployment and worker pods at least, so that losing one
# node leaves one serving, and at most this many replicas of a deployment per node (Serve's
# max_replicas_per_node), so that the replicas are on different nodes.
HA_MIN_REPLICAS = 2
HA_MAX_REPLICAS_PER_NODE = 1


class ConfigTable(BaseModel):
    """A table of raybuild.toml: unknown keys are refused, types are not coerced, and values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def check_platforms(value: list[str] | None) -> list[str] | None:
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


class Autoscaling(ConfigTable):
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ActorOptions(ConfigTable):
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0, description="bytes")

    @field_validator("num_cpus", "num_gpus", mode="before")
    @classmethod
    def _int_is_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Deployment(ConfigTable):
    name: str = Field(min_length=1)
    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    ray_actor_options: ActorOptions = ActorOptions()

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> Deployment:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        return self


class Workers(ConfigTable):
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


class Prune(ConfigTable):
    """Extra paths (globs relative to site-packages) to remove, and default rules to keep."""

    remove: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)


class Gate(ConfigTable):
    max_size_growth: float | None = Field(default=None, ge=0)
    max_startup_growth: float | None = Field(default=None, ge=0)
    # Seconds: the team's scale-up budget for one node (pull plus head start), checked against the worst
    # measured t_cold. KubeRay 1.1+ ignores the RayService's unhealthy-second thresholds, so this is it.
    max_t_cold: float | None = Field(default=None, gt=0)

    @field_validator("max_size_growth", "max_startup_growth", "max_t_cold", mode="before")
    @classmethod
    def _int_is_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class App(ConfigTable):
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

    _platforms = field_validator("platforms")(check_platforms)

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
