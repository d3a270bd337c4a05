"""`raybuild init --from-serve-config`: a raybuild project from the Serve config a team already runs.

Teams that install packages at container start list them in each Serve application's ``runtime_env``.
Each application becomes a raybuild app: its ``pip`` (or ``uv``) list becomes the app's ``requirements.in``,
``env_vars`` its ``env``, a local ``working_dir`` its code folder, and its deployments (with the options
raybuild.toml models) its ``[[apps.deployments]]``. Everything else is listed as a note, one line each: what
raybuild cannot carry over is never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raybuild.errors import ConfigError, FileError, UsageError

_APP_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
# Keys of a Serve application, of its runtime_env and of a deployment that raybuild carries over. The rest
# of Serve's schema is reported as not carried over rather than dropped in silence.
_APP_KEYS = {"name", "route_prefix", "import_path", "runtime_env", "deployments"}
_RUNTIME_ENV_KEYS = {"pip", "uv", "env_vars", "working_dir"}
_DEPLOYMENT_KEYS = {"name", "num_replicas", "autoscaling_config", "ray_actor_options"}
_ACTOR_KEYS = {"num_cpus", "num_gpus", "memory"}
_AUTOSCALING_KEYS = {"min_replicas", "max_replicas"}


@dataclass(frozen=True)
class AdoptedApp:
    """One Serve application, in the terms of raybuild.toml."""

    name: str
    import_path: str
    route_prefix: str
    requirements: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    code_dir: Path | None = None  # a local working_dir, resolved against the Serve config's folder
    deployments: tuple[dict[str, Any], ...] = ()

    @property
    def device(self) -> str:
        gpus = (d.get("ray_actor_options", {}).get("num_gpus", 0) for d in self.deployments)
        return "gpu" if any(float(g) > 0 for g in gpus) else "cpu"


@dataclass(frozen=True)
class Adoption:
    source: Path
    apps: tuple[AdoptedApp, ...]
    notes: tuple[str, ...]  # what could not be carried over, one line each


def _serve_config(path: Path) -> dict[str, Any]:
    """The Serve config in ``path``: the file itself, or a RayService's ``spec.serveConfigV2``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        error = FileError.not_utf8(path, exc)
        raise UsageError(f"--from-serve-config {error.message}", hint=error.hint) from exc
    except OSError as exc:
        error = FileError.from_os_error(exc, path, "read")
        raise UsageError(f"--from-serve-config: {error.message}", hint=error.hint) from exc
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from exc
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "RayService":
            embedded = (doc.get("spec") or {}).get("serveConfigV2")
            if not isinstance(embedded, str):
                raise ConfigError(f"{path}: the RayService has no spec.serveConfigV2 string")
            try:
                loaded = yaml.safe_load(embedded)
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"{path}: spec.serveConfigV2 is not valid YAML: {exc}".splitlines()[0]
                ) from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: spec.serveConfigV2 must hold a mapping with 'applications'")
            return loaded
    for doc in documents:
        if isinstance(doc, dict) and "applications" in doc:
            return doc
    raise ConfigError(
        f"{path}: neither a Serve config (a mapping with 'applications') nor a RayService manifest",
        hint="pass the YAML that `serve deploy` takes, or the RayService that holds it in spec.serveConfigV2",
    )


def _name(raw: Any, index: int, path: Path, notes: list[str]) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{path}: applications[{index}].name: expected a non-empty string (got {raw!r})")
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower()).strip("-")
    if not _APP_NAME.match(name):
        raise ConfigError(
            f"{path}: applications[{index}].name {raw!r} cannot become a raybuild app name",
            hint="app names are lowercase letters, digits and '-', at most 32, starting with a letter",
        )
    if name != raw:
        notes.append(f"app {raw!r}: named {name!r} in raybuild.toml (lowercase letters, digits and '-')")
    return name


def _requirements(app: str, env: dict[str, Any], base: Path, notes: list[str]) -> tuple[str, ...]:
    lines: list[str] = []
    for key in ("pip", "uv"):
        spec = env.get(key)
        if spec is None:
            continue
        if isinstance(spec, dict):
            for extra in sorted(set(spec) - {"packages"}):
                notes.append(f"app {app!r}: runtime_env.{key}.{extra} is not carried over")
            spec = spec.get("packages", [])
        if isinstance(spec, str):
            requirements = (base / spec).resolve()
            if not requirements.is_file():
                notes.append(f"app {app!r}: runtime_env.{key} names {spec}, which is not a local file")
                continue
            spec = requirements.read_text(encoding="utf-8").splitlines()
        if not isinstance(spec, list) or not all(isinstance(item, str) for item in spec):
            notes.append(f"app {app!r}: runtime_env.{key} is not a list of requirements; not carried over")
            continue
        lines += [item.strip() for item in spec if item.strip() and not item.strip().startswith("#")]
    return tuple(dict.fromkeys(lines))


def _code_dir(app: str, env: dict[str, Any], base: Path, notes: list[str]) -> Path | None:
    working_dir = env.get("working_dir")
    if working_dir is None:
        notes.append(f"app {app!r}: no working_dir; put the app's code in apps/{app}")
        return None
    if not isinstance(working_dir, str) or "://" in working_dir:
        notes.append(
            f"app {app!r}: working_dir {working_dir!r} is not a local folder; put its code in apps/{app}"
        )
        return None
    folder = (base / working_dir).resolve()
    if not folder.is_dir():
        raise ConfigError(f"app {app!r}: working_dir {working_dir!r} is not a folder ({folder})")
    return folder


def _deployment(app: str, index: int, raw: Any, notes: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"app {app!r}: deployments[{index}] needs a name")
    name = raw["name"]
    where = f"app {app!r} deployment {name!r}"
    out: dict[str, Any] = {"name": name}
    for key in sorted(set(raw) - _DEPLOYMENT_KEYS):
        notes.append(f"{where}: {key} is not carried over (raybuild.toml has no such setting)")
    replicas = raw.get("num_replicas")
    if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 1:
        out["num_replicas"] = replicas
    elif replicas is not None:
        notes.append(f"{where}: num_replicas {replicas!r} is not carried over (raybuild takes a number)")
    scaling = raw.get("autoscaling_config")
    if isinstance(scaling, dict):
        for key in sorted(set(scaling) - _AUTOSCALING_KEYS):
            notes.append(f"{where}: autoscaling_config.{key} is not carried over")
        if "min_replicas" in scaling and "max_replicas" in scaling:
            out["autoscaling"] = {k: scaling[k] for k in ("min_replicas", "max_replicas")}
            out.pop("num_replicas", None)
        else:
            notes.append(
                f"{where}: autoscaling_config without min_replicas and max_replicas is not carried over"
            )
    options = raw.get("ray_actor_options") or {}
    if isinstance(options, dict):
        for key in sorted(set(options) - _ACTOR_KEYS):
            notes.append(f"{where}: ray_actor_options.{key} is not carried over")
        actor = {k: options[k] for k in ("num_cpus", "num_gpus", "memory") if options.get(k) is not None}
        if actor:
            out["ray_actor_options"] = actor
    return out


def read_serve_config(path: Path) -> Adoption:
    """Every application of the Serve config (or RayService) at ``path``, and what was left behind."""
    data = _serve_config(path)
    base = path.resolve().parent
    notes: list[str] = []
    for key in sorted(set(data) - {"applications"}):
        notes.append(f"{key}: not carried over (raybuild renders its own cluster-wide Serve settings)")
    raw_apps = data.get("applications")
    if not isinstance(raw_apps, list) or not raw_apps:
        raise ConfigError(f"{path}: 'applications' must be a non-empty list")
    apps: list[AdoptedApp] = []
    for index, raw in enumerate(raw_apps):
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: applications[{index}] must be a mapping")
        name = _name(raw.get("name"), index, path, notes)
        import_path = raw.get("import_path")
        if not isinstance(import_path, str) or not import_path:
            raise ConfigError(f"{path}: application {name!r} has no import_path")
        for key in sorted(set(raw) - _APP_KEYS):
            notes.append(f"app {name!r}: {key} is not carried over")
        env = raw.get("runtime_env") or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{path}: application {name!r}: runtime_env must be a mapping")
        for key in sorted(set(env) - _RUNTIME_ENV_KEYS):
            notes.append(f"app {name!r}: runtime_env.{key} is not carried over")
        env_vars = env.get("env_vars") or {}
        if not isinstance(env_vars, dict):
            raise ConfigError(f"{path}: application {name!r}: runtime_env.env_vars must be a mapping")
        deployments = raw.get("deployments") or []
        if not isinstance(deployments, list):
            raise ConfigError(f"{path}: application {name!r}: deployments must be a list")
        apps.append(
            AdoptedApp(
                name=name,
                # Serve's `module.path:attr`; a dotted form is accepted by Serve too, but raybuild wants ':'.
                import_path=import_path if ":" in import_path else ":".join(import_path.rsplit(".", 1)),
                route_prefix=str(raw.get("route_prefix", "/")),
                requirements=_requirements(name, env, base, notes),
                env={str(k): str(v) for k, v in env_vars.items()},
                code_dir=_code_dir(name, env, base, notes),
                deployments=tuple(_deployment(name, i, d, notes) for i, d in enumerate(deployments)),
            )
        )
    return Adoption(path, tuple(apps), tuple(notes))
