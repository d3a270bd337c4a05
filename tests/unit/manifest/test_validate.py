"""Manifest validation: the KubeRay v1.7.0 CRD schema, the operator's own rules, and where CRDs come from."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

import raybuild
from raybuild.config import load_config
from raybuild.errors import ManifestError
from raybuild.manifest.render import render_manifest
from raybuild.manifest.validate import (
    BUNDLED_CRDS,
    CRD_ENV,
    apply_defaults,
    crds_from_cluster,
    default_crd_path,
    format_path,
    load_crds,
    resolve_crds,
    to_json_schema,
    validate_manifest,
)
from tests.conftest import REPO_ROOT

CRD_DIR = BUNDLED_CRDS
SERVICE_CRD = CRD_DIR / "ray.io_rayservices.yaml"


WORKERS = "spec.rayClusterConfig.workerGroupSpecs"


@pytest.fixture(scope="module")
def crds() -> Any:
    return load_crds(CRD_DIR)


@pytest.fixture(scope="module")
def bundled_docs() -> list[Any]:
    config = load_config(REPO_ROOT / "raybuild.toml")
    return render_manifest(config, None, gcs_store_manifests="redis").documents()


@pytest.fixture
def service(bundled_docs: list[Any]) -> dict[str, Any]:
    """A deep copy of the bundled project's RayService (hello, sklearn, cuda), for a test to break."""
    (doc,) = [d for d in bundled_docs if d["kind"] == "RayService"]
    copied: dict[str, Any] = copy.deepcopy(doc)
    return copied


def serve(doc: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(doc["spec"]["serveConfigV2"])
    return data


def set_serve(doc: dict[str, Any], data: dict[str, Any]) -> None:
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(data)


def group(doc: dict[str, Any], index: int) -> dict[str, Any]:
    found: dict[str, Any] = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][index]
    return found


def only(errors: list[str], prefix: str) -> str:
    assert len(errors) == 1, errors
    assert errors[0].startswith(prefix), errors
    return errors[0]


# --- Rendered manifests are valid ---------------------------------------------------------------------


def test_the_bundled_manifest_is_valid(bundled_docs: list[Any], crds: Any) -> None:
    assert validate_manifest(bundled_docs, crds) == []


def test_a_path_to_the_crd_folder_or_file_works(bundled_docs: list[Any]) -> None:
    assert validate_manifest(bundled_docs, CRD_DIR) == []
    assert validate_manifest(bundled_docs, SERVICE_CRD) == []


def test_other_kinds_are_skipped(crds: Any) -> None:
    docs = [{"apiVersion": "v1", "kind": "Service", "spec": {"anything": True}}, None, "text"]
    assert validate_manifest(docs, crds) == []


def test_worker_groups_without_min_and_max_are_valid(service: dict[str, Any], crds: Any) -> None:
    # minReplicas and maxReplicas are required but defaulted: the API server fills them in first.
    for index in range(3):
        del group(service, index)["minReplicas"]
        del group(service, index)["maxReplicas"]
    assert validate_manifest([service], crds) == []


def test_quantities_may_be_int_or_string(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    assert validate_manifest([service], crds) == []


# --- Schema errors ------------------------------------------------------------------------------------


def test_unknown_field(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["replica"] = 1
    error = only(validate_manifest([service], crds), f"{WORKERS}[0].replica: ")
    assert "unknown field" in error and "did you mean 'replicas'" in error


def test_unknown_field_deep_in_the_pod_template(service: dict[str, Any], crds: Any) -> None:
    group(service, 1)["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    only(validate_manifest([service], crds), f"{WORKERS}[1].template.spec.containers[0].imagePullPolicyy: ")


def test_unknown_top_level_spec_field(service: dict[str, Any], crds: Any) -> None:
    service["spec"]["serveConfig"] = "x"
    only(validate_manifest([service], crds), "spec.serveConfig: unknown field")


def test_replicas_of_the_wrong_type(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["replicas"] = "2"
    error = only(validate_manifest([service], crds), f"{WORKERS}[0].replicas: ")
    assert "expected integer" in error


def test_replicas_out_of_int32_range(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["maxReplicas"] = 2**31
    assert f"{WORKERS}[0].maxReplicas: " in validate_manifest([service], crds)[0]


def test_a_bad_quantity(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "4 GB"
    only(
        validate_manifest([service], crds),
        f"{WORKERS}[0].template.spec.containers[0].resources.limits.memory: ",
    )


def test_a_missing_required_field(service: dict[str, Any], crds: Any) -> None:
    del service["spec"]["rayClusterConfig"]["headGroupSpec"]
    error = only(validate_manifest([service], crds), "spec.rayClusterConfig.headGroupSpec: ")
    assert "required" in error


def test_a_bad_enum_value(service: dict[str, Any], crds: Any) -> None:
    service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["backend"] = "etcd"
    only(validate_manifest([service], crds), "spec.rayClusterConfig.gcsFaultToleranceOptions.backend: ")


def test_keys_with_dots_are_quoted_in_paths() -> None:
    assert format_path(["spec", "limits", "nvidia.com/gpu", 0]) == "spec.limits['nvidia.com/gpu'][0]"


def test_wrong_api_version(service: dict[str, Any], crds: Any) -> None:
    service["apiVersion"] = "ray.io/v1alpha1"
    assert validate_manifest([service], crds)[0] == "apiVersion: expected ray.io/v1 (got 'ray.io/v1alpha1')"


# --- Operator rules -----------------------------------------------------------------------------------


def test_replicas_above_max(service: dict[str, Any], crds: Any) -> None:
    group(service, 1)["replicas"] = 9
    error = only(validate_manifest([service], crds), f"{WORKERS}[1].replicas: ")
    assert "above maxReplicas 4" in error


def test_replicas_below_min(service: dict[str, Any], crds: Any) -> None:
    group(service, 0)["minReplicas"] = 2
    error = only(validate_manifest([service], crds), f"{WORKERS}[0].replicas: ")
    assert "below minReplicas 2" in error


def test_min_above_max(service: dict[str, Any], crds: Any) -> None:
    group(service, 2).update(minReplicas=3, maxReplicas=2, replicas=2)
    errors = validate_manifest([service], crds)
    assert f"{WORKERS}[2].minReplicas: 3 is above maxReplicas 2" in errors


def test_duplicate_group_names(service: dict[str, Any], crds: Any) -> None:
    group(service, 1)["groupName"] = "hello"
    only(validate_manifest([service], crds), f"{WORKERS}[1].groupName: ")


def test_name_too_long(service: dict[str, Any], crds: Any) -> None:
    service["metadata"]["name"] = "a" * 48
    error = only(validate_manifest([service], crds), "metadata.name: ")
    assert "at most 47" in error
    service["metadata"]["name"] = "a" * 47
    assert validate_manifest([service], crds) == []


@pytest.mark.parametrize("name", ["1serve", "Serve", "serve-", "ray.serve"])
def test_name_not_dns_1035(service: dict[str, Any], crds: Any, name: str) -> None:
    service["metadata"]["name"] = name
    assert "DNS-1035" in only(validate_manifest([service], crds), "metadata.name: ")


def test_missing_name(service: dict[str, Any], crds: Any) -> None:
    del service["metadata"]["name"]
    only(validate_manifest([service], crds), "metadata.name: required")


def test_duplicate_route_prefix(service: dict[str, Any], crds: Any) -> None:
    data = serve(service)
    data["applications"][1]["route_prefix"] = "/hello"
    set_serve(service, data)
    error = only(validate_manifest([service], crds), "spec.serveConfigV2: ")
    assert "applications[1].route_prefix" in error and "applications[0]" in error


def test_duplicate_app_name(service: dict[str, Any], crds: Any) -> None:
    data = serve(service)
    data["applications"][2]["name"] = "sklearn"
    set_serve(service, data)
    assert "applications[2].name" in only(validate_manifest([service], crds), "spec.serveConfigV2: ")


def test_serve_config_must_parse(service: dict[str, Any], crds: Any) -> None:
    service["spec"]["serveConfigV2"] = "applications: [\n"
    assert "not valid YAML" in only(validate_manifest([service], crds), "spec.serveConfigV2: ")
    service["spec"]["serveConfigV2"] = "- a\n"
    assert "applications" in only(validate_manifest([service], crds), "spec.serveConfigV2: ")


def test_gpu_deployment_without_a_gpu_group(service: dict[str, Any], crds: Any) -> None:
    limits = group(service, 2)["template"]["spec"]["containers"][0]["resources"]["limits"]
    del limits["nvidia.com/gpu"]
    error = only(validate_manifest([service], crds), "spec.serveConfigV2: ")
    assert "applications[2].deployments[0].ray_actor_options.num_gpus" in error


def test_gpu_deployment_selecting_a_cpu_group(service: dict[str, Any], crds: Any) -> None:
    # A GPU group exists (cuda), but the deployment's selector pins it to the CPU group "hello".
    data = serve(service)
    data["applications"][2]["deployments"][0]["ray_actor_options"]["label_selector"] = {
        "raybuild.io/app": "hello"
    }
    set_serve(service, data)
    error = only(validate_manifest([service], crds), "spec.serveConfigV2: ")
    assert "num_gpus" in error and "label_selector" in error


def test_gpu_deployment_without_a_selector_needs_some_gpu_group(service: dict[str, Any], crds: Any) -> None:
    data = serve(service)
    del data["applications"][2]["deployments"][0]["ray_actor_options"]["label_selector"]
    set_serve(service, data)
    assert validate_manifest([service], crds) == []


def test_a_selector_that_matches_no_group(service: dict[str, Any], crds: Any) -> None:
    data = serve(service)
    data["applications"][0]["deployments"][0]["ray_actor_options"]["label_selector"] = {
        "raybuild.io/app": "nope"
    }
    set_serve(service, data)
    error = only(validate_manifest([service], crds), "spec.serveConfigV2: ")
    assert "applications[0].deployments[0].ray_actor_options.label_selector" in error


def test_labels_in_ray_start_params_count_too(service: dict[str, Any], crds: Any) -> None:
    hello = group(service, 0)
    del hello["labels"]
    hello["rayStartParams"] = {"labels": "raybuild.io/app=hello,zone=a"}
    assert validate_manifest([service], crds) == []


def test_a_raycluster_gets_the_cluster_rules(crds: Any) -> None:
    config = load_config(REPO_ROOT / "raybuild.toml")
    (doc,) = render_manifest(config, None, kind="RayCluster").documents()
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = 7
    doc["spec"]["workerGroupSpecs"][0]["bogus"] = 1
    errors = validate_manifest([doc], crds)
    assert errors == [
        "spec.workerGroupSpecs[0].bogus: unknown field",
        "spec.workerGroupSpecs[0].replicas: 7 is above maxReplicas 3",
    ]


def test_several_ray_documents_are_told_apart(service: dict[str, Any], crds: Any) -> None:
    other = copy.deepcopy(service)
    other["metadata"]["name"] = "other"
    group(other, 0)["replicas"] = 9
    errors = validate_manifest([service, other], crds)
    assert errors == [f"RayService/other: {WORKERS}[0].replicas: 9 is above maxReplicas 3"]


# --- From CRD schema to JSON Schema -------------------------------------------------------------------


def test_schema_conversion() -> None:
    schema = {
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
            "count": {"type": "integer", "format": "int32", "default": 0},
        },
    }
    converted = to_json_schema(schema)
    assert converted["additionalProperties"] is False
    assert converted["properties"]["closed"]["additionalProperties"] is False
    assert "additionalProperties" not in converted["properties"]["open"]
    assert converted["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert converted["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert converted["properties"]["maybe"]["type"] == ["string", "null"]
    assert converted["properties"]["count"]["maximum"] == 2**31 - 1
    assert "default" not in converted["properties"]["count"]


def test_defaults_are_applied_like_the_api_server() -> None:
    schema = {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {"type": "object", "properties": {"min": {"type": "integer", "default": 0}}},
            }
        },
    }
    doc: dict[str, Any] = {"groups": [{}, {"min": 3}]}
    apply_defaults(doc, schema)
    assert doc == {"groups": [{"min": 0}, {"min": 3}]}


# --- Where CRDs come from -----------------------------------------------------------------------------


def test_a_rayservice_crd_alone_also_checks_rayclusters() -> None:
    schemas = load_crds(SERVICE_CRD)
    assert sorted(schemas) == ["RayCluster", "RayService"]
    config = load_config(REPO_ROOT / "raybuild.toml")
    (doc,) = render_manifest(config, None, kind="RayCluster").documents()
    assert validate_manifest([doc], schemas) == []


def test_missing_crd_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such CRD"):
        load_crds(tmp_path / "nope")


def test_a_file_without_crds(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("kind: ConfigMap\n")
    with pytest.raises(ManifestError, match="no KubeRay CustomResourceDefinition"):
        load_crds(path)


class FakeKubectl:
    def __init__(self, output: str) -> None:
        self.output = output
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> str:
        self.commands.append(list(command))
        return self.output


def test_crd_from_the_cluster(service: dict[str, Any]) -> None:
    kubectl = FakeKubectl(SERVICE_CRD.read_text(encoding="utf-8"))
    schemas = crds_from_cluster(kubectl)
    assert kubectl.commands == [["kubectl", "get", "crd", "rayservices.ray.io", "-o", "yaml"]]
    assert validate_manifest([service], schemas) == []


def test_crd_from_the_cluster_as_a_list() -> None:
    crd = yaml.load(SERVICE_CRD.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    kubectl = FakeKubectl(
        yaml.dump({"apiVersion": "v1", "kind": "List", "items": [crd]}, Dumper=yaml.CSafeDumper)
    )
    assert "RayService" in resolve_crds("cluster", runner=kubectl)


def test_crd_from_the_cluster_that_is_not_yaml() -> None:
    with pytest.raises(ManifestError, match="invalid YAML"):
        crds_from_cluster(FakeKubectl("error: [\n"))


def test_default_crd_path_is_the_packaged_copy_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CRD_ENV, raising=False)
    assert default_crd_path() == BUNDLED_CRDS
    assert BUNDLED_CRDS.is_relative_to(Path(raybuild.__file__).parent)  # inside the package, not the repo
    assert (BUNDLED_CRDS / "NOTICE.md").read_text(encoding="utf-8").count("Apache License") == 1
    monkeypatch.setenv(CRD_ENV, str(tmp_path / "crds"))
    assert default_crd_path() == tmp_path / "crds"  # an explicit setting wins


def test_resolve_crds_with_a_path_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CRD_ENV, raising=False)
    assert sorted(resolve_crds(str(SERVICE_CRD))) == ["RayCluster", "RayService"]
    assert sorted(resolve_crds(None)) == ["RayCluster", "RayService"]


def test_the_cli_reads_the_cluster_crd_through_kubectl(
    monkeypatch: pytest.MonkeyPatch, run_main: Callable[..., Any]
) -> None:
    kubectl = FakeKubectl(SERVICE_CRD.read_text(encoding="utf-8"))
    monkeypatch.setattr("raybuild.manifest.validate.kubectl_runner", kubectl)
    result = run_main("--config", str(REPO_ROOT / "raybuild.toml"), "render", "--crd", "cluster")
    assert result.exit_code == 0, result.stderr
    assert kubectl.commands == [["kubectl", "get", "crd", "rayservices.ray.io", "-o", "yaml"]]
    assert "is valid" in result.stderr


def test_crd_cluster_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("raybuild.runner.which", lambda tool: None)
    with pytest.raises(ManifestError, match="needs kubectl on PATH"):
        resolve_crds("cluster")
