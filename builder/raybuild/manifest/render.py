"""From config and publish record to the KubeRay manifest, through the templates under ``deploy/``.

Python decides the values (images, worker groups, the Serve config); the templates hold the structure and
every fixed setting, so users change the manifest by editing ``deploy/*.yaml.j2``. Output is a pure
function of its inputs: dicts are dumped with sorted keys and groups follow raybuild.toml's app order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import jinja2
import yaml

from raybuild import kuberay, platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import HA_MAX_REPLICAS_PER_NODE, App
from raybuild.errors import ConfigError
from raybuild.images import ImageReferences, image_references
from raybuild.kuberay import LABEL_KEY
from raybuild.records import PublishRecord
from raybuild.state import HEAD_KEY
from raybuild.tags import repository_name
from raybuild.templating import Templates, manifest_templates, template_environment

Kind = Literal["RayService", "RayCluster"]
StoreKind = Literal["redis", "dragonfly"]
KINDS: tuple[str, ...] = get_args(Kind)
STORE_KINDS: tuple[str, ...] = get_args(StoreKind)


_TEMPLATES: dict[str, str] = {"RayService": "rayservice.yaml.j2", "RayCluster": "raycluster.yaml.j2"}
_STORE_TEMPLATE = "gcs-store.yaml.j2"
_PREPULL_TEMPLATE = "prepull.yaml.j2"
_REDIS_ADDRESS = re.compile(
    r"^(?:rediss?://)?(?P<host>[a-z]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9.-]+)?):(?P<port>\d+)$"
)


@dataclass(frozen=True)
class RenderedManifest:
    """The manifest text and what the user should know about it (printed to stderr by the CLI)."""

    text: str
    kind: str
    warnings: tuple[str, ...] = ()

    def documents(self) -> list[Any]:
        return [doc for doc in yaml.safe_load_all(self.text) if doc is not None]


class _NoAliasDumper(yaml.SafeDumper):
    """Shared dicts would come out as &id001 anchors: valid YAML, but hard to review in a manifest."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=True, default_flow_style=False, width=1_000_000)


def _yaml_scalar(value: Any) -> str:
    """One value, inline, quoted only where plain YAML would change its type ('0', 'yes', '1.10')."""
    text = yaml.dump(value, Dumper=_NoAliasDumper, sort_keys=True, default_flow_style=True, width=1_000_000)
    text = text.removesuffix("\n...\n").strip()
    if isinstance(value, str) and text.startswith("'"):
        # JSON's double quotes are valid YAML and match the quoting written by hand in the templates.
        return json.dumps(value)
    return text


def template_dirs(project_root: Path | None) -> Templates:
    """The manifest templates: the project's deploy/ folder over raybuild's, file by file."""
    return manifest_templates(project_root)


def _environment(dirs: Templates) -> jinja2.Environment:
    return template_environment(dirs, {"yaml": _yaml_scalar})


def _render_template(dirs: Templates, name: str, context: dict[str, Any]) -> str:
    where = str(dirs)
    try:
        text = _environment(dirs).get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(
            f"manifest template {exc.name} not found under {where}",
            hint="restore it from raybuild's deploy/ folder",
        ) from exc
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"manifest template {name}: {exc.message}", hint="the template uses a name raybuild does not set"
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"{exc.filename or name}:{exc.lineno}: template syntax error: {exc.message}"
        ) from exc
    lines = [line.rstrip() for line in text.splitlines()]
    out = "\n".join(lines).strip("\n") + "\n"
    try:
        list(yaml.safe_load_all(out))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"manifest template {name} rendered invalid YAML: {exc}",
            hint="check the indentation of what you changed in the template",
        ) from exc
    return out


def _node_selector(arch: str | None) -> dict[str, str]:
    return {platforms.ARCH_LABEL: arch} if arch else {}


def _worker_group(app: App, image: str, arch: str | None = None) -> tuple[dict[str, Any], list[str]]:
    workers = app.served().workers
    warnings = []
    gpus = max(workers.gpu, 1) if app.device == "gpu" else 0
    if app.device == "cpu" and workers.replicas == 0:
        warnings.append(
            f"app {app.name!r}: workers.replicas is 0, so its worker group starts empty and its Serve "
            "deployments wait for the autoscaler; set workers.replicas to 1 or more"
        )
    if app.device == "cpu" and workers.gpu > 0:
        warnings.append(
            f"app {app.name!r}: workers.gpu is ignored for a cpu app (its image has no CUDA); "
            'set device = "gpu" to get a GPU worker group'
        )
    group = {
        "name": app.name,
        "image": image,
        "replicas": workers.replicas,
        "min_replicas": workers.min_replicas,
        "max_replicas": workers.max_replicas,
        "cpu": workers.cpu,
        "memory": workers.memory,
        "gpus": gpus,
        "labels": {LABEL_KEY: app.name},
        "ha": app.ha,
        "node_selector": _node_selector(arch),
    }
    return group, warnings


def _worker_pod(kind: Kind) -> dict[str, Any]:
    """What every worker pod gets from the KubeRay node contract: its readiness probe and its drain.

    The probe checks Serve's proxy, so only a RayService (whose controller deploys Serve) spells it out; a
    RayCluster's workers get KubeRay's raylet-only probe.
    """
    return {
        "readiness_command": kuberay.WORKER_READINESS_PROBE if kind == "RayService" else "",
        "readiness_initial_delay_s": kuberay.READINESS_INITIAL_DELAY_S,
        "readiness_period_s": kuberay.READINESS_PERIOD_S,
        "readiness_timeout_s": kuberay.PROBE_TIMEOUT_S,
        "readiness_failure_threshold": kuberay.READINESS_FAILURE_THRESHOLD,
        "drain_hook": kuberay.DRAIN_HOOK,
        "grace_s": kuberay.TERMINATION_GRACE_S,
    }


def _serve_deployment(app: App, index: int) -> dict[str, Any]:
    deployment = app.served().deployments[index]
    actor = deployment.ray_actor_options
    # The same hard selector on every deployment: Ray 2.60 then also pins the app's build task (which
    # imports the app's code) to this group, the only image that has the app's packages.
    options: dict[str, Any] = {"label_selector": {LABEL_KEY: app.name}}
    if actor.num_cpus is not None:
        options["num_cpus"] = actor.num_cpus
    if actor.num_gpus is not None:
        options["num_gpus"] = actor.num_gpus
    if actor.memory is not None:
        options["memory"] = actor.memory
    entry: dict[str, Any] = {"name": deployment.name, "ray_actor_options": options}
    if deployment.num_replicas is not None:
        entry["num_replicas"] = deployment.num_replicas
    if deployment.autoscaling is not None:
        entry["autoscaling_config"] = {
            "min_replicas": deployment.autoscaling.min_replicas,
            "max_replicas": deployment.autoscaling.max_replicas,
        }
    if app.ha:
        # Serve's own spread: a node that already holds a replica of this deployment gets no second one,
        # so the replicas the app needs are on different worker pods.
        entry["max_replicas_per_node"] = HA_MAX_REPLICAS_PER_NODE
    return entry


def serve_application(app: App) -> dict[str, Any]:
    """One entry of serveConfigV2's `applications`, pinned to the app's worker group."""
    if not app.deployments:
        raise ConfigError(
            f"app {app.name!r}: raybuild.toml lists no deployments, and no build has found them in the code",
            hint=f"run `raybuild build {app.name}` (it imports the app and records its deployments), "
            "or list them under [[apps.deployments]]",
        )
    entry: dict[str, Any] = {
        "name": app.name,
        "import_path": app.import_path,
        "route_prefix": app.route_prefix,
        "deployments": [_serve_deployment(app, i) for i in range(len(app.deployments))],
    }
    if app.env:
        entry["runtime_env"] = {"env_vars": dict(sorted(app.env.items()))}
    return entry


def serve_config(config: LoadedConfig) -> dict[str, Any]:
    """serveConfigV2 as data: one Serve application per app, in config order."""
    return {"applications": [serve_application(app) for app in config.apps]}


def store_service(config: LoadedConfig) -> tuple[str, int]:
    """The Service name and port that [cluster.gcs].redis_address points at."""
    cluster = config.config.cluster
    address = cluster.gcs.redis_address
    match = _REDIS_ADDRESS.match(address)
    host = match.group("host") if match else ""
    name, _, domain = host.partition(".")
    if not match or (domain and domain.split(".")[0] != cluster.namespace):
        raise ConfigError(
            f"{config.path.name}: key 'cluster.gcs.redis_address': {address!r} must be NAME:PORT (or "
            f"NAME.{cluster.namespace}.svc:PORT) to use --with-gcs-store",
            hint="the store's Service takes NAME and PORT from it, so the RayService can find the store",
        )
    return name, int(match.group("port"))


def _store_context(config: LoadedConfig, kind: StoreKind) -> dict[str, Any]:
    cluster = config.config.cluster
    service, port = store_service(config)
    return {
        "kind": kind,
        "service": service,
        "port": port,
        "namespace": cluster.namespace,
        "priority_class": cluster.priority_class,
        "secret_name": cluster.gcs.password_secret,
        "secret_key": cluster.gcs.password_key,
    }


def _ha_warnings(config: LoadedConfig, text: str, dirs: Templates) -> list[str]:
    """HA apps whose rendered worker pods miss the drain or the readiness probe. A project's own copy of
    _cluster.yaml.j2 from before they existed renders pods without them, which lose requests when they go."""
    ha = {app.name for app in config.apps if app.ha}
    warnings = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") not in _TEMPLATES:
            continue
        service = doc["kind"] == "RayService"
        cluster = doc["spec"]["rayClusterConfig"] if service else doc["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            container = group["template"]["spec"]["containers"][0]
            missing = [] if "preStop" in (container.get("lifecycle") or {}) else ["preStop drain"]
            if service and "readinessProbe" not in container:
                missing.append("readiness probe")
            if group["groupName"] in ha and missing:
                warnings.append(
                    f"app {group['groupName']!r} has ha = true, but its worker pods have no "
                    f"{' and no '.join(missing)} ({dirs.path('_cluster.yaml.j2')}); "
                    "compare that template with raybuild's bundled deploy/_cluster.yaml.j2"
                )
    return warnings


def _head_platforms(config: LoadedConfig) -> tuple[str, ...]:
    """The platforms the head image is built for: its CPU apps'."""
    cpu_apps = tuple(app for app in config.apps if app.device == "cpu") or config.apps
    return config.all_platforms(cpu_apps)


def _architectures(built: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(platforms.get(p).architecture for p in built))


def _head_arch(config: LoadedConfig) -> str | None:
    """The head image's one architecture, when its CPU apps are all built for the same single platform."""
    arches = _architectures(_head_platforms(config))
    return arches[0] if len(arches) == 1 else None


def _prepull_contexts(
    config: LoadedConfig, images: ImageReferences, record: PublishRecord | None
) -> list[dict[str, Any]]:
    """One DaemonSet per node architecture, each pulling the images built for it: an init container whose
    image has no variant for its node's architecture could not start, and would hold the pod back."""
    cluster = config.config.cluster
    built = {HEAD_KEY: _architectures(_head_platforms(config))}
    built.update({app.name: _architectures(config.platforms(app)) for app in config.apps})
    default = _architectures((platforms.DEFAULT,))
    arches = _architectures(config.all_platforms())
    contexts = []
    for arch in arches:
        keys = [key for key in images.images if arch in built.get(key, default)]
        chosen = {key: images.images[key] for key in keys}
        compressed = sum(i.published.compressed_size for i in chosen.values() if i.published is not None)
        contexts.append(
            {
                "name": f"{cluster.name}-prepull" + (f"-{arch}" if len(arches) > 1 else ""),
                "arch": arch,
                "namespace": cluster.namespace,
                "cluster": cluster.name,
                "images": [
                    {"container": f"pull-{repository_name(key)}", "ref": image.ref}
                    for key, image in chosen.items()
                ],
                # The head image is on every node that runs Ray; an architecture it is not built for holds
                # with the first image pulled there.
                "hold_image": (chosen.get(HEAD_KEY) or next(iter(chosen.values()))).ref,
                "disk": f"at most {compressed / 1e6:.0f} MB compressed, the sum of the published sizes"
                if record is not None
                else "their compressed sizes are known once they are published",
            }
        )
    return contexts


def render_manifest(
    config: LoadedConfig,
    record: PublishRecord | None,
    kind: Kind = "RayService",
    gcs_store_manifests: bool | StoreKind = False,
    templates: Templates | None = None,
    prepull: bool = False,
) -> RenderedManifest:
    """Render the RayService (or RayCluster) for ``config``.

    ``gcs_store_manifests``: True puts the store named by [cluster.gcs].store (and its PriorityClass) before
    the Ray resource; "redis" or "dragonfly" chooses the store explicitly. ``prepull`` puts a DaemonSet after
    it that pulls every image, by digest where published, onto every node.
    """
    if kind not in _TEMPLATES:
        raise ConfigError(f"unknown manifest kind {kind!r}", hint="use one of: " + ", ".join(KINDS))
    dirs = templates if templates is not None else template_dirs(config.root)
    cluster = config.config.cluster
    images = image_references(config, record)
    warnings = list(images.warnings)
    groups = []
    for app in config.apps:
        group, group_warnings = _worker_group(app, images[app.name].ref, config.node_arch(app))
        groups.append(group)
        warnings.extend(group_warnings)
    gcs = None
    if cluster.gcs.enabled:
        gcs = {
            "redis_address": cluster.gcs.redis_address,
            "secret_name": cluster.gcs.password_secret,
            "secret_key": cluster.gcs.password_key,
        }
    context: dict[str, Any] = {
        "name": cluster.name,
        "namespace": cluster.namespace,
        "ray_version": config.project.ray_version,
        "images_note": f"Images: {images.note}.",
        "head": {
            "image": images[HEAD_KEY].ref,
            "cpu": cluster.head.cpu,
            "memory": cluster.head.memory,
            "priority_class": cluster.priority_class,
            "node_selector": _node_selector(_head_arch(config)),
        },
        "workers": groups,
        "worker_pod": _worker_pod(kind),
        "gcs": gcs,
        "serve_config": dump_yaml(serve_config(config)).rstrip("\n"),
    }
    text = _render_template(dirs, _TEMPLATES[kind], context)
    warnings.extend(_ha_warnings(config, text, dirs))
    if gcs_store_manifests:
        store: StoreKind = cluster.gcs.store if gcs_store_manifests is True else gcs_store_manifests
        if store not in STORE_KINDS:
            raise ConfigError(f"unknown GCS store {store!r}", hint="use one of: " + ", ".join(STORE_KINDS))
        if not cluster.gcs.enabled:
            warnings.append(
                "--with-gcs-store: [cluster.gcs].enabled is false, so the cluster does not use the store"
            )
        store_text = _render_template(dirs, _STORE_TEMPLATE, {"store": _store_context(config, store)})
        text = store_text + "---\n" + text
    if prepull:
        unpinned = [key for key, image in images.images.items() if image.published is None]
        if unpinned:
            warnings.append(
                "--prepull: not pinned by digest, so nodes keep whatever the tag named when they pulled: "
                + ", ".join(repository_name(key) for key in unpinned)
            )
        context = {"prepulls": _prepull_contexts(config, images, record)}
        text = text + "---\n" + _render_template(dirs, _PREPULL_TEMPLATE, context)
    return RenderedManifest(text=text, kind=kind, warnings=tuple(warnings))
