"""Check a rendered manifest against the KubeRay CRD schema and the rules the operator enforces itself.

The CRD's openAPIV3Schema is turned into plain JSON Schema the way the API server reads it: int-or-string,
nullable, preserve-unknown-fields and defaults. Unlike the API server, which prunes unknown fields
silently, an unknown field is an error here: it is almost always a typo that would otherwise vanish.
Every error starts with the path in the manifest it is about.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no types-jsonschema in the dev extras yet
import yaml

from raybuild.errors import ManifestError

RAY_KINDS = ("RayService", "RayCluster")
API_VERSION = "ray.io/v1"
# KubeRay derives Service and Pod names from this name and rejects longer ones.
MAX_NAME_LENGTH = 47
GPU_RESOURCE = "nvidia.com/gpu"
CRD_ENV = "RAYBUILD_CRD_DIR"
# KubeRay v1.7.0's CRDs, vendored with their license notice (crds/NOTICE.md).
BUNDLED_CRDS = Path(__file__).resolve().parent / "crds"
KUBERAY_VERSION = "1.7.0"

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# CRD defaults that the operator rules need, as the API server would fill them in.
_MIN_REPLICAS_DEFAULT = 0
_MAX_REPLICAS_DEFAULT = 2**31 - 1

# A CRD is about 18,000 lines: libyaml reads it in a tenth of a second, pure Python takes seconds.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Schemas = Mapping[str, Mapping[str, Any]]  # kind -> openAPIV3Schema of version v1
Runner = Callable[[Sequence[str]], str]


def format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{part!r}]"
    return out


# --- Loading CRDs -------------------------------------------------------------------------------------


def schemas_from_documents(docs: Iterable[Any], source: str) -> dict[str, Mapping[str, Any]]:
    """kind -> v1 schema for every CustomResourceDefinition in ``docs`` (a kubectl List counts too)."""
    found: dict[str, Mapping[str, Any]] = {}
    queue = list(docs)
    while queue:
        doc = queue.pop(0)
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            queue.extend(doc["items"])
            continue
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        try:
            for version in doc["spec"]["versions"]:
                if version["name"] == "v1":
                    found[doc["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{source}: a CustomResourceDefinition without {exc} where expected") from exc
    # A RayService embeds a whole RayCluster spec, so its CRD is enough to check a RayCluster too.
    service = found.get("RayService")
    cluster_spec = service.get("properties", {}).get("spec", {}).get("properties", {}) if service else {}
    if "RayCluster" not in found and service is not None and "rayClusterConfig" in cluster_spec:
        properties = {**service["properties"], "spec": cluster_spec["rayClusterConfig"]}
        found["RayCluster"] = {**service, "properties": properties}
    if not found:
        raise ManifestError(f"{source}: no KubeRay CustomResourceDefinition with a v1 version found")
    return found


def load_crds(path: Path) -> dict[str, Mapping[str, Any]]:
    """The CRDs in a YAML file, or in every *.yaml/*.yml file of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    elif path.is_file():
        files = [path]
    else:
        raise ManifestError(f"{path}: no such CRD file or folder", hint="pass --crd PATH or --crd cluster")
    docs: list[Any] = []
    for file in files:
        try:
            docs.extend(yaml.load_all(file.read_text(encoding="utf-8"), Loader=_LOADER))
        except (OSError, yaml.YAMLError) as exc:
            raise ManifestError(f"{file}: cannot read the CRD: {exc}") from exc
    return schemas_from_documents(docs, str(path))


def kubectl_runner(command: Sequence[str]) -> str:
    from raybuild.runner import Runner, which

    if which(command[0]) is None:
        raise ManifestError(
            f"--crd cluster needs {command[0]} on PATH", hint="install kubectl or pass --crd PATH"
        )
    result = Runner().run(list(command), timeout=120, what=" ".join(command[:4]))
    # The runner merges stderr into the output; kubectl's stderr on success is API deprecation warnings.
    return "\n".join(line for line in result.output.splitlines() if not line.startswith("Warning: "))


def crds_from_cluster(runner: Runner | None = None) -> dict[str, Mapping[str, Any]]:
    command = ["kubectl", "get", "crd", "rayservices.ray.io", "-o", "yaml"]
    text = (runner or kubectl_runner)(command)
    try:
        docs = list(yaml.load_all(text, Loader=_LOADER))
    except yaml.YAMLError as exc:
        raise ManifestError(f"`{' '.join(command)}` printed invalid YAML: {exc}") from exc
    return schemas_from_documents(docs, "the cluster's rayservices.ray.io")


def default_crd_path() -> Path:
    """RAYBUILD_CRD_DIR when set (an explicit choice wins), else the KubeRay CRDs raybuild ships."""
    env = os.environ.get(CRD_ENV)
    return Path(env) if env else BUNDLED_CRDS


def resolve_crds(option: str | None, runner: Runner | None = None) -> Schemas:
    """The schemas that ``--crd`` names: a path, ``cluster`` (kubectl), or the default copy."""
    if option == "cluster":
        return crds_from_cluster(runner)
    return load_crds(Path(option) if option else default_crd_path())


# --- CRD schema to JSON Schema ------------------------------------------------------------------------


def to_json_schema(node: Any) -> Any:
    """A structural CRD schema as Draft 4 JSON Schema (OpenAPI 3.0 schemas are Draft 4 plus extensions)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key in ("nullable", "default") or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
    if "properties" in node and not open_object:
        out["additionalProperties"] = False
    if node.get("type") == "integer" and node.get("format") in _INT_BOUNDS:
        low, high = _INT_BOUNDS[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    return out


def apply_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Fill in CRD ``default:`` values in place, as the API server does before it validates."""
    if isinstance(instance, dict):
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if name not in instance and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name, value in instance.items():
            if name in properties:
                apply_defaults(value, properties[name])
            elif isinstance(extra, dict):
                apply_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            apply_defaults(item, schema["items"])


def _describe(error: jsonschema.ValidationError) -> list[str]:
    path = list(error.absolute_path)
    where = format_path(path) or "(document)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        out = []
        for extra in sorted(set(error.instance) - set(allowed)):
            close = difflib.get_close_matches(extra, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            out.append(f"{format_path([*path, extra])}: unknown field{hint}")
        return out
    if error.validator == "required":
        # jsonschema reports each missing field as its own error; schema_errors drops the repeats.
        missing = [name for name in error.validator_value if name not in error.instance]
        return [f"{format_path([*path, name])}: required field is missing" for name in missing]
    if error.validator == "type":
        return [f"{where}: expected {error.validator_value} (got {error.instance!r})"]
    if error.validator == "pattern":
        return [f"{where}: {error.instance!r} is not in the expected format"]
    return [f"{where}: {error.message}"]


def schema_errors(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    instance = copy.deepcopy(dict(doc))
    apply_defaults(instance, schema)
    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return list(dict.fromkeys(line for error in errors for line in _describe(error)))


# --- Operator rules -----------------------------------------------------------------------------------


def _name_errors(doc: Mapping[str, Any]) -> list[str]:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        return ["metadata.name: required field is missing"]
    errors = []
    if len(name) > MAX_NAME_LENGTH:
        errors.append(
            f"metadata.name: {name!r} is {len(name)} characters; KubeRay allows at most {MAX_NAME_LENGTH} "
            "(it adds suffixes for the head Service and the pods)"
        )
    if not _DNS_1035.match(name):
        errors.append(
            f"metadata.name: {name!r} is not a DNS-1035 label (lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit)"
        )
    return errors


def _groups(cluster: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    groups = cluster.get("workerGroupSpecs")
    return [g if isinstance(g, dict) else {} for g in groups] if isinstance(groups, list) else []


def _replica_errors(cluster: Mapping[str, Any], prefix: str) -> list[str]:
    errors = []
    seen: dict[str, int] = {}
    for index, group in enumerate(_groups(cluster)):
        where = f"{prefix}.workerGroupSpecs[{index}]"
        name = group.get("groupName")
        if isinstance(name, str):
            if name in seen:
                errors.append(
                    f"{where}.groupName: {name!r} is also the name of workerGroupSpecs[{seen[name]}]"
                )
            seen.setdefault(name, index)
        low = group.get("minReplicas", _MIN_REPLICAS_DEFAULT)
        high = group.get("maxReplicas", _MAX_REPLICAS_DEFAULT)
        replicas = group.get("replicas")
        if not (_is_int(low) and _is_int(high)):
            continue  # the schema check reports the wrong type
        if low > high:
            errors.append(f"{where}.minReplicas: {low} is above maxReplicas {high}")
        if _is_int(replicas) and replicas < low:
            errors.append(f"{where}.replicas: {replicas} is below minReplicas {low}")
        if _is_int(replicas) and replicas > high:
            errors.append(f"{where}.replicas: {replicas} is above maxReplicas {high}")
    return errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _node_labels(group: Mapping[str, Any]) -> dict[str, str]:
    """A group's Ray node labels: the `labels` field, else rayStartParams' `labels` ("k=v,k2=v2")."""
    labels = group.get("labels")
    if isinstance(labels, dict):
        return {str(k): str(v) for k, v in labels.items()}
    params = group.get("rayStartParams")
    raw = params.get("labels") if isinstance(params, dict) else None
    if isinstance(raw, str):
        pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
        return {k.strip(): v.strip() for k, v in pairs}
    return {}


def _gpus(group: Mapping[str, Any]) -> float:
    spec = group.get("template", {}).get("spec", {}) if isinstance(group.get("template"), dict) else {}
    total = 0.0
    for container in spec.get("containers", []) if isinstance(spec, dict) else []:
        limits = container.get("resources", {}).get("limits", {}) if isinstance(container, dict) else {}
        try:
            total += float(limits.get(GPU_RESOURCE, 0)) if isinstance(limits, dict) else 0.0
        except (TypeError, ValueError):
            continue
    return total


def _serve_errors(spec: Mapping[str, Any]) -> list[str]:
    where = "spec.serveConfigV2"
    raw = spec.get("serveConfigV2")
    if not isinstance(raw, str):
        return []  # absent (a RayService may have no apps yet), or a wrong type the schema check reports
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        return [f"{where}: not valid YAML: {' '.join(str(exc).split())}"]
    if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
        return [f"{where}: expected a mapping with an 'applications' list"]
    cluster = spec.get("rayClusterConfig")
    cluster = cluster if isinstance(cluster, dict) else {}
    head = cluster.get("headGroupSpec")
    head = head if isinstance(head, dict) else {}
    workers = _groups(cluster)
    errors: list[str] = []
    first: dict[tuple[str, Any], int] = {}
    for i, app in enumerate(config["applications"]):
        if not isinstance(app, dict):
            errors.append(f"{where}: applications[{i}]: expected a mapping")
            continue
        for key in ("name", "route_prefix"):
            value = app.get(key)
            if value is None:
                continue
            if (key, value) in first:
                errors.append(
                    f"{where}: applications[{i}].{key}: {value!r} is also the {key} of "
                    f"applications[{first[key, value]}]; each application needs its own"
                )
            first.setdefault((key, value), i)
        deployments = app.get("deployments")
        for j, deployment in enumerate(deployments if isinstance(deployments, list) else []):
            options = deployment.get("ray_actor_options") if isinstance(deployment, dict) else None
            if isinstance(options, dict):
                errors += _placement_errors(
                    options, head, workers, f"{where}: applications[{i}].deployments[{j}]"
                )
    return errors


def _placement_errors(
    options: Mapping[str, Any], head: Mapping[str, Any], workers: list[Mapping[str, Any]], where: str
) -> list[str]:
    """A deployment must fit somewhere: its hard label selector and its GPUs both need a matching group."""
    selector = options.get("label_selector")
    # Only plain `key: value` selectors; Ray's !value, in(...) and !in(...) forms are not checked.
    plain = {}
    for key, value in selector.items() if isinstance(selector, dict) else []:
        if isinstance(value, str) and not value.startswith("!") and "(" not in value:
            plain[key] = value

    def matches(node: Mapping[str, Any]) -> bool:
        labels = _node_labels(node)
        return all(labels.get(k) == v for k, v in plain.items())

    errors = []
    if plain and not any(matches(node) for node in [head, *workers]):
        errors.append(
            f"{where}.ray_actor_options.label_selector: {plain} matches no group's labels, "
            "so its replicas would never be scheduled"
        )
    num_gpus = options.get("num_gpus")
    wants_gpus = isinstance(num_gpus, int | float) and not isinstance(num_gpus, bool) and num_gpus > 0
    if wants_gpus and not any(_gpus(group) > 0 for group in workers if matches(group)):
        scope = " matching its label_selector" if plain else ""
        errors.append(
            f"{where}.ray_actor_options.num_gpus: asks for {num_gpus} GPU but no worker group{scope} "
            f"has {GPU_RESOURCE} limits"
        )
    return errors


def operator_errors(doc: Mapping[str, Any]) -> list[str]:
    """The checks KubeRay makes when it reconciles, which the CRD schema cannot express."""
    errors = _name_errors(doc)
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errors
    if doc.get("kind") == "RayService":
        cluster = spec.get("rayClusterConfig")
        if isinstance(cluster, dict):
            errors += _replica_errors(cluster, "spec.rayClusterConfig")
        errors += _serve_errors(spec)
    else:
        errors += _replica_errors(spec, "spec")
    return errors


# --- Entry point --------------------------------------------------------------------------------------


def validate_manifest(docs: Iterable[Any], crd: Path | Schemas) -> list[str]:
    """Errors in the RayService and RayCluster documents of ``docs``; other kinds are skipped."""
    schemas = load_crds(crd) if isinstance(crd, Path) else crd
    ray_docs = [d for d in docs if isinstance(d, dict) and d.get("kind") in RAY_KINDS]
    errors: list[str] = []
    for doc in ray_docs:
        found: list[str] = []
        if doc.get("apiVersion") != API_VERSION:
            found.append(f"apiVersion: expected {API_VERSION} (got {doc.get('apiVersion')!r})")
        elif doc["kind"] not in schemas:
            found.append(f"kind: no CRD for {doc['kind']} was loaded")
        else:
            found += schema_errors(doc, schemas[doc["kind"]])
        found += operator_errors(doc)
        if len(ray_docs) > 1:
            metadata = doc.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            found = [f"{doc['kind']}/{name}: {line}" for line in found]
        errors += found
    return errors
