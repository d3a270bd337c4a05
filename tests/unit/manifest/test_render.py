"""`raybuild render`: the manifest from config and publish record, its goldens, the record, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from raybuild.config import LoadedConfig, load_config
from raybuild.errors import ConfigError
from raybuild.images import image_references
from raybuild.manifest.render import LABEL_KEY, render_manifest, store_service
from raybuild.manifest.validate import BUNDLED_CRDS, GPU_RESOURCE, load_crds, validate_manifest
from raybuild.records import PublishedImage, PublishRecord
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.templating import BUNDLED_TEMPLATES
from tests.conftest import GOLDEN_DIR, REPO_ROOT

GOLDEN = GOLDEN_DIR / "k8s"
CRD_DIR = BUNDLED_CRDS

# Two apps, one of each device, covering env, autoscaling, memory and GPU options. Written here rather than
# shared, so that the goldens change only when rendering does.
FIXTURE_TOML = """\
[project]
name = "fixture"
ray_version = "2.60.0"
registry = "registry.example:5000/fixture"

[cluster]
name = "fixture-serve"
namespace = "serving"
priority_class = "fixture-critical"
head = { cpu = "1", memory = "3Gi" }

[cluster.gcs]
enabled = true
redis_address = "fixture-gcs:6380"
password_secret = "fixture-gcs-auth"
password_key = "redis-password"

[[apps]]
name = "web"
path = "apps/web"
requirements = "apps/web/requirements.in"
import_path = "web_app:app"
route_prefix = "/web"
env = { MODE = "fast", A_FIRST = "1" }
workers = { replicas = 2, min_replicas = 1, max_replicas = 5, cpu = "1500m", memory = "2Gi" }

[[apps.deployments]]
name = "Front"
num_replicas = 2
ray_actor_options = { num_cpus = 1 }

[[apps.deployments]]
name = "Back"
autoscaling = { min_replicas = 1, max_replicas = 6 }
ray_actor_options = { num_cpus = 0.25, memory = 268435456 }

[[apps]]
name = "vision"
path = "apps/vision"
requirements = "apps/vision/requirements.in"
device = "gpu"
import_path = "vision_app:app"
route_prefix = "/vision"
workers = { replicas = 0, min_replicas = 0, max_replicas = 2, gpu = 2 }

[[apps.deployments]]
name = "Detector"
num_replicas = 1
ray_actor_options = { num_cpus = 1, num_gpus = 1 }
"""


def fixture_toml(gcs: bool = True) -> str:
    return FIXTURE_TOML if gcs else FIXTURE_TOML.replace("enabled = true", "enabled = false")


DIGESTS = {HEAD_KEY: "a" * 64, "web": "b" * 64, "vision": "c" * 64}


def write_fixture(root: Path, gcs: bool = True, toml: str | None = None) -> LoadedConfig:
    for name in ("web", "vision"):
        app_dir = root / "apps" / name
        app_dir.mkdir(parents=True, exist_ok=True)
        (app_dir / f"{name}_app.py").write_text("app = None\n", encoding="utf-8")
        (app_dir / "requirements.in").write_text("", encoding="utf-8")
    text = toml if toml is not None else fixture_toml(gcs)
    (root / "raybuild.toml").write_text(text, encoding="utf-8")
    return load_config(root / "raybuild.toml")


def fixture_record(keys: tuple[str, ...] = (HEAD_KEY, "web", "vision")) -> PublishRecord:
    images = {}
    for key in keys:
        name = "ray-head" if key == HEAD_KEY else key
        images[key] = PublishedImage(
            f"registry.example:5000/fixture/{name}:v1", f"sha256:{DIGESTS[key]}", 1000, 400
        )
    return PublishRecord(images)


@pytest.fixture
def fixture(tmp_path: Path) -> LoadedConfig:
    return write_fixture(tmp_path / "project")


@pytest.fixture(scope="module")
def crds() -> Any:
    return load_crds(CRD_DIR)


def ray_doc(text: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(text) if d and d.get("kind") in ("RayService", "RayCluster")]
    assert len(docs) == 1
    doc: dict[str, Any] = docs[0]
    return doc


def cluster_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec["rayClusterConfig"] if doc["kind"] == "RayService" else spec


# --- Goldens ------------------------------------------------------------------------------------------

VARIANTS = {
    "rayservice_gcs": {"gcs": True, "record": True, "kind": "RayService", "store": False},
    "rayservice_no_gcs": {"gcs": False, "record": False, "kind": "RayService", "store": False},
    "raycluster": {"gcs": True, "record": True, "kind": "RayCluster", "store": False},
    "rayservice_redis": {"gcs": True, "record": True, "kind": "RayService", "store": "redis"},
    "rayservice_dragonfly": {"gcs": True, "record": True, "kind": "RayService", "store": "dragonfly"},
    "rayservice_prepull": {
        "gcs": True,
        "record": True,
        "kind": "RayService",
        "store": False,
        "prepull": True,
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden(variant: str, tmp_path: Path, check_golden: Callable[[Path, str], None], crds: Any) -> None:
    options = VARIANTS[variant]
    config = write_fixture(tmp_path / "project", gcs=bool(options["gcs"]))
    record = fixture_record() if options["record"] else None
    manifest = render_manifest(
        config,
        record,
        kind=options["kind"],
        gcs_store_manifests=options["store"],  # type: ignore[arg-type]
        prepull=bool(options.get("prepull")),
    )
    check_golden(GOLDEN / f"{variant}.yaml", manifest.text)
    assert validate_manifest(manifest.documents(), crds) == []
    # KubeRay 1.1+ ignores both (kuberay #1656, #1665): rendering them would suggest a budget that is not
    # enforced. [gate].max_t_cold is the start budget instead.
    for ignored in ("deploymentUnhealthySecondThreshold", "serviceUnhealthySecondThreshold"):
        assert ignored not in manifest.text


def test_render_is_deterministic(fixture: LoadedConfig) -> None:
    first = render_manifest(fixture, fixture_record(), gcs_store_manifests="dragonfly")
    second = render_manifest(fixture, fixture_record(), gcs_store_manifests="dragonfly")
    assert first.text == second.text
    assert first.text.encode() == second.text.encode()


# --- What the manifest says ---------------------------------------------------------------------------


def test_images_are_pinned_by_digest_from_the_record(fixture: LoadedConfig) -> None:
    manifest = render_manifest(fixture, fixture_record())
    cluster = cluster_of(ray_doc(manifest.text))
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert head == f"registry.example:5000/fixture/ray-head:v1@sha256:{'a' * 64}"
    images = {
        g["groupName"]: g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]
    }
    assert images == {
        "web": f"registry.example:5000/fixture/web:v1@sha256:{'b' * 64}",
        "vision": f"registry.example:5000/fixture/vision:v1@sha256:{'c' * 64}",
    }
    assert manifest.warnings == ()


def test_without_a_record_local_tags_are_used_with_a_warning(fixture: LoadedConfig) -> None:
    manifest = render_manifest(fixture, None)
    cluster = cluster_of(ray_doc(manifest.text))
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    web = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    assert head == "registry.example:5000/fixture/ray-head:latest"
    assert web == "registry.example:5000/fixture/web:latest"
    assert manifest.warnings == image_references(fixture, None).warnings
    assert any("no publish record" in w for w in manifest.warnings)
    assert "# Images: local tags, not published." in manifest.text


def test_a_record_without_an_app_falls_back_for_that_app_only(fixture: LoadedConfig) -> None:
    manifest = render_manifest(fixture, fixture_record((HEAD_KEY, "web")))
    cluster = cluster_of(ray_doc(manifest.text))
    images = [g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]]
    assert "@sha256:" in images[0]
    assert images[1] == "registry.example:5000/fixture/vision:latest"
    assert [w for w in manifest.warnings if "'vision'" in w and "publish record" in w]
    assert (
        "# Images: pinned by digest from .raybuild/publish.json where published, else local tags."
        in manifest.text
    )


def test_head_group(fixture: LoadedConfig) -> None:
    head = cluster_of(ray_doc(render_manifest(fixture, None).text))["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "0.0.0.0"}
    pod = head["template"]["spec"]
    assert pod["priorityClassName"] == "fixture-critical"
    container = pod["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
    }
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "3Gi"},
        "limits": {"cpu": "1", "memory": "3Gi"},
    }


def test_worker_groups_follow_config_order_and_sizes(fixture: LoadedConfig) -> None:
    groups = cluster_of(ray_doc(render_manifest(fixture, None).text))["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["web", "vision"]
    web, vision = groups
    assert (web["replicas"], web["minReplicas"], web["maxReplicas"]) == (2, 1, 5)
    assert (vision["replicas"], vision["minReplicas"], vision["maxReplicas"]) == (0, 0, 2)
    assert web["labels"] == {LABEL_KEY: "web"}
    assert vision["labels"] == {LABEL_KEY: "vision"}
    web_pod, vision_pod = web["template"]["spec"], vision["template"]["spec"]
    assert web_pod["containers"][0]["resources"]["limits"] == {"cpu": "1500m", "memory": "2Gi"}
    assert "tolerations" not in web_pod
    assert vision_pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 2
    assert vision_pod["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def test_a_gpu_app_gets_at_least_one_gpu(tmp_path: Path) -> None:
    toml = fixture_toml().replace("max_replicas = 2, gpu = 2", "max_replicas = 2")
    config = write_fixture(tmp_path, toml=toml)
    groups = cluster_of(ray_doc(render_manifest(config, None).text))["workerGroupSpecs"]
    assert groups[1]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 1


def test_a_cpu_app_without_replicas_is_warned_about_but_a_gpu_app_is_not(tmp_path: Path) -> None:
    toml = fixture_toml().replace("replicas = 2, min_replicas = 1", "replicas = 0, min_replicas = 0")
    config = write_fixture(tmp_path, toml=toml)
    manifest = render_manifest(config, fixture_record())
    groups = cluster_of(ray_doc(manifest.text))["workerGroupSpecs"]
    assert groups[0]["replicas"] == 0  # a warning, not a silent change
    assert [w for w in manifest.warnings if "'web'" in w and "replicas is 0" in w]
    assert not [w for w in manifest.warnings if "'vision'" in w]


def test_serve_config(fixture: LoadedConfig) -> None:
    serve = yaml.safe_load(ray_doc(render_manifest(fixture, None).text)["spec"]["serveConfigV2"])
    web, vision = serve["applications"]
    assert (web["name"], web["import_path"], web["route_prefix"]) == ("web", "web_app:app", "/web")
    assert web["runtime_env"] == {"env_vars": {"A_FIRST": "1", "MODE": "fast"}}
    front, back = web["deployments"]
    assert front == {
        "name": "Front",
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 1.0, "label_selector": {LABEL_KEY: "web"}},
    }
    assert back == {
        "name": "Back",
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 6},
        "ray_actor_options": {"num_cpus": 0.25, "memory": 268435456, "label_selector": {LABEL_KEY: "web"}},
    }
    assert "runtime_env" not in vision
    assert vision["deployments"][0]["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "label_selector": {LABEL_KEY: "vision"},
    }


def test_every_deployment_selects_its_own_group(fixture: LoadedConfig) -> None:
    doc = ray_doc(render_manifest(fixture, None).text)
    labels = {g["groupName"]: g["labels"] for g in cluster_of(doc)["workerGroupSpecs"]}
    for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
        for deployment in app["deployments"]:
            assert deployment["ray_actor_options"]["label_selector"] == labels[app["name"]]


def test_rayservice_settings(fixture: LoadedConfig) -> None:
    doc = ray_doc(render_manifest(fixture, None).text)
    assert doc["metadata"]["name"] == "fixture-serve"
    assert doc["metadata"]["namespace"] == "serving"
    assert doc["spec"]["excludeHeadPodFromServeSvc"] is True
    assert doc["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    cluster = cluster_of(doc)
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"


def test_gcs_fault_tolerance(tmp_path: Path, fixture: LoadedConfig) -> None:
    options = cluster_of(ray_doc(render_manifest(fixture, None).text))["gcsFaultToleranceOptions"]
    assert options == {
        "redisAddress": "fixture-gcs:6380",
        "redisPassword": {
            "valueFrom": {"secretKeyRef": {"name": "fixture-gcs-auth", "key": "redis-password"}}
        },
    }
    without = write_fixture(tmp_path / "off", gcs=False)
    assert "gcsFaultToleranceOptions" not in cluster_of(ray_doc(render_manifest(without, None).text))


def test_raycluster_is_the_rayservice_cluster(fixture: LoadedConfig) -> None:
    service = ray_doc(render_manifest(fixture, fixture_record()).text)
    cluster = ray_doc(render_manifest(fixture, fixture_record(), kind="RayCluster").text)
    assert cluster["kind"] == "RayCluster"
    assert cluster["metadata"] == service["metadata"]
    # The one difference: only a RayService's workers run Serve, so only they get the Serve readiness probe.
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert (
            "/-/healthz"
            in group["template"]["spec"]["containers"][0].pop("readinessProbe")["exec"]["command"][2]
        )
    assert cluster["spec"] == service["spec"]["rayClusterConfig"]


@pytest.mark.parametrize("store", ["redis", "dragonfly"])
def test_store_manifests(fixture: LoadedConfig, store: str) -> None:
    manifest = render_manifest(fixture, None, gcs_store_manifests=store)  # type: ignore[arg-type]
    docs = manifest.documents()
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "PriorityClass" and kinds[-1] == "RayService"
    assert "Secret" not in kinds
    assert "Secret" in manifest.text.split("apiVersion", 1)[0]  # the comment that says it is not included
    assert docs[0]["metadata"]["name"] == "fixture-critical"
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "fixture-gcs"]
    assert services and services[0]["spec"]["ports"][0]["port"] == 6380
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "fixture-critical"
    assert all(d["metadata"].get("namespace") == "serving" for d in docs if d["kind"] != "PriorityClass")
    if store == "redis":
        assert statefulset["spec"]["replicas"] == 1
        assert "--appendonly" in pod["containers"][0]["args"]
        assert statefulset["spec"]["volumeClaimTemplates"]
    else:
        assert statefulset["spec"]["replicas"] == 3


def test_store_defaults_to_the_configured_one(tmp_path: Path) -> None:
    toml = fixture_toml().replace(
        'password_key = "redis-password"', 'password_key = "p"\nstore = "dragonfly"'
    )
    config = write_fixture(tmp_path, toml=toml)
    manifest = render_manifest(config, None, gcs_store_manifests=True)
    assert "dragonfly" in manifest.text.split("kind: RayService")[0]


def test_store_with_gcs_disabled_warns(tmp_path: Path) -> None:
    config = write_fixture(tmp_path, gcs=False)
    manifest = render_manifest(config, None, gcs_store_manifests="redis")
    assert [w for w in manifest.warnings if "does not use the store" in w]


@pytest.mark.parametrize(
    ("address", "expected"),
    [("fixture-gcs:6380", ("fixture-gcs", 6380)), ("redis://gcs.serving.svc:7000", ("gcs", 7000))],
)
def test_store_service_from_redis_address(tmp_path: Path, address: str, expected: tuple[str, int]) -> None:
    toml = fixture_toml().replace("fixture-gcs:6380", address)
    assert store_service(write_fixture(tmp_path, toml=toml)) == expected


@pytest.mark.parametrize("address", ["10.0.0.1:6379", "gcs.other-namespace.svc:6379", "gcs"])
def test_store_needs_an_in_namespace_service_address(tmp_path: Path, address: str) -> None:
    toml = fixture_toml().replace("fixture-gcs:6380", address)
    config = write_fixture(tmp_path, toml=toml)
    with pytest.raises(ConfigError, match=r"cluster\.gcs\.redis_address"):
        render_manifest(config, None, gcs_store_manifests="redis")
    render_manifest(config, None)  # without the store, any address KubeRay accepts is fine


# --- Templates ----------------------------------------------------------------------------------------


def test_a_project_template_overrides_the_bundled_one(fixture: LoadedConfig) -> None:
    deploy = fixture.root / "deploy"
    deploy.mkdir()
    bundled = (BUNDLED_TEMPLATES / "deploy" / "rayservice.yaml.j2").read_text(encoding="utf-8")
    (deploy / "rayservice.yaml.j2").write_text(
        bundled.replace("    app.kubernetes.io/managed-by: raybuild\n", "    team: search\n"),
        encoding="utf-8",
    )
    doc = ray_doc(render_manifest(fixture, None).text)
    assert doc["metadata"]["labels"] == {"team": "search"}
    assert cluster_of(doc)["workerGroupSpecs"]  # _cluster.yaml.j2 still comes from the bundled folder


def test_an_undefined_template_name_is_a_config_error(fixture: LoadedConfig) -> None:
    deploy = fixture.root / "deploy"
    deploy.mkdir()
    (deploy / "rayservice.yaml.j2").write_text("kind: {{ no_such_value }}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no_such_value"):
        render_manifest(fixture, None)


def test_a_template_that_renders_invalid_yaml_is_a_config_error(fixture: LoadedConfig) -> None:
    deploy = fixture.root / "deploy"
    deploy.mkdir()
    (deploy / "rayservice.yaml.j2").write_text("a: [1\nb: {{ name }}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        render_manifest(fixture, None)


# --- The bundled project ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RayService", "RayCluster"])
@pytest.mark.parametrize("store", [False, "redis", "dragonfly"])
def test_bundled_project_renders_valid_manifests(kind: str, store: Any, crds: Any) -> None:
    config = load_config(REPO_ROOT / "raybuild.toml")
    manifest = render_manifest(config, None, kind=kind, gcs_store_manifests=store)  # type: ignore[arg-type]
    assert validate_manifest(manifest.documents(), crds) == []
    assert manifest.text == render_manifest(config, None, kind=kind, gcs_store_manifests=store).text  # type: ignore[arg-type]


# --- The command --------------------------------------------------------------------------------------


def test_cli_render_to_stdout(fixture: LoadedConfig, run_main: Callable[..., Any]) -> None:
    result = run_main("--config", str(fixture.path), "render")
    assert result.exit_code == 0
    assert result.stdout == render_manifest(fixture, None).text
    assert "warning: no publish record" in result.stderr


def test_cli_render_uses_the_publish_record(fixture: LoadedConfig, run_main: Callable[..., Any]) -> None:
    fixture_record().save(publish_record_path(fixture))
    result = run_main("--config", str(fixture.path), "render", "--kind", "RayCluster")
    assert result.exit_code == 0
    assert result.stdout == render_manifest(fixture, fixture_record(), kind="RayCluster").text
    assert "warning" not in result.stderr


def test_cli_render_validate_out(fixture: LoadedConfig, run_main: Callable[..., Any], tmp_path: Path) -> None:
    out = tmp_path / "out" / "rayservice.yaml"
    result = run_main(
        "--config", str(fixture.path), "render", "--validate", "--crd", str(CRD_DIR), "--out", str(out),
        "--with-gcs-store",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == render_manifest(fixture, None, gcs_store_manifests=True).text
    assert "is valid" in result.stderr


def test_cli_validation_failure_writes_nothing(tmp_path: Path, run_main: Callable[..., Any]) -> None:
    toml = fixture_toml().replace('name = "fixture-serve"', f'name = "{"x" * 48}"')
    config = write_fixture(tmp_path / "project", toml=toml)
    out = tmp_path / "rayservice.yaml"
    out.write_text("previous\n")
    result = run_main("--config", str(config.path), "render", "--crd", str(CRD_DIR), "--out", str(out))
    assert result.exit_code == 1
    assert "error: the rendered RayService has 1 problem" in result.stderr
    assert "metadata.name:" in result.stderr
    assert out.read_text() == "previous\n"


def test_cli_json(fixture: LoadedConfig, run_main: Callable[..., Any]) -> None:
    result = run_main("--config", str(fixture.path), "render", "--json", "--with-gcs-store", "redis")
    payload = json.loads(result.stdout)
    assert payload["kind"] == "RayService"
    assert payload["manifest"] == render_manifest(fixture, None, gcs_store_manifests="redis").text
    assert payload["warnings"] and payload["validated"] is False


def test_cli_rejects_an_unknown_store(fixture: LoadedConfig, run_main: Callable[..., Any]) -> None:
    result = run_main("--config", str(fixture.path), "render", "--with-gcs-store", "memcached")
    assert result.exit_code == 2
    assert "memcached" in result.stderr


# --- High availability (`ha = true`) ---------------------------------------------------------------------


def ha_fixture(root: Path) -> LoadedConfig:
    """The fixture with `ha = true` on web (one deployment at 2 replicas, one autoscaled from 1 to 6, a
    worker group starting at 2 with a minimum of 1) and on vision (one replica, a group of 0 to 2)."""
    text = FIXTURE_TOML.replace('route_prefix = "/web"\n', 'route_prefix = "/web"\nha = true\n')
    text = text.replace('route_prefix = "/vision"\n', 'route_prefix = "/vision"\nha = true\n')
    return write_fixture(root, toml=text)


def test_ha_raises_replicas_and_spreads_them_over_nodes(tmp_path: Path, crds: Any) -> None:
    manifest = render_manifest(ha_fixture(tmp_path / "project"), fixture_record())
    assert validate_manifest(manifest.documents(), crds) == []
    doc = ray_doc(manifest.text)
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    deployments = {d["name"]: d for app in serve["applications"] for d in app["deployments"]}
    assert deployments["Front"]["num_replicas"] == 2  # already 2: kept
    assert deployments["Back"]["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6}
    assert deployments["Detector"]["num_replicas"] == 2  # raised from 1
    assert {d["max_replicas_per_node"] for d in deployments.values()} == {1}
    groups = {g["groupName"]: g for g in cluster_of(doc)["workerGroupSpecs"]}
    assert (groups["web"]["replicas"], groups["web"]["minReplicas"], groups["web"]["maxReplicas"]) == (
        2,
        2,
        5,
    )
    for name, group in groups.items():
        # Soft spread of the group's pods over Kubernetes nodes, selected by the label KubeRay sets.
        assert group["template"]["spec"]["topologySpreadConstraints"] == [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"ray.io/group": name}},
            }
        ]
    assert (
        groups["vision"]["replicas"],
        groups["vision"]["minReplicas"],
        groups["vision"]["maxReplicas"],
    ) == (
        2,
        2,
        2,
    )


def test_without_ha_nothing_is_raised_or_spread(fixture: LoadedConfig) -> None:
    serve = yaml.safe_load(ray_doc(render_manifest(fixture, fixture_record()).text)["spec"]["serveConfigV2"])
    deployments = {d["name"]: d for app in serve["applications"] for d in app["deployments"]}
    assert deployments["Detector"]["num_replicas"] == 1
    assert not any("max_replicas_per_node" in d for d in deployments.values())
    groups = cluster_of(ray_doc(render_manifest(fixture, fixture_record()).text))["workerGroupSpecs"]
    assert not any("topologySpreadConstraints" in g["template"]["spec"] for g in groups)


def test_every_worker_pod_drains_before_ray_stops(fixture: LoadedConfig) -> None:
    from raybuild import kuberay

    for group in cluster_of(ray_doc(render_manifest(fixture, fixture_record()).text))["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:2] == ["bash", "-c"] and hook[2].startswith("ray drain-node ")
        assert hook[2].endswith("; ray stop")
        # The hook waits at most DRAIN_WAIT_S, which leaves `ray stop` time inside the grace period.
        assert pod["terminationGracePeriodSeconds"] == kuberay.TERMINATION_GRACE_S > kuberay.DRAIN_WAIT_S
        probe = container["readinessProbe"]
        assert probe["exec"]["command"][2] == kuberay.WORKER_READINESS_PROBE
        assert (probe["periodSeconds"], probe["failureThreshold"]) == (5, 1)


def test_an_ha_app_with_an_old_project_template_is_warned_about(tmp_path: Path) -> None:
    config = ha_fixture(tmp_path / "project")
    bundled = (BUNDLED_TEMPLATES / "deploy" / "_cluster.yaml.j2").read_text()
    start, end = bundled.index("            lifecycle:\n"), bundled.index("            resources:\n")
    (config.root / "deploy").mkdir()
    (config.root / "deploy" / "_cluster.yaml.j2").write_text(bundled[:start] + bundled[end:])
    warnings = render_manifest(config, fixture_record()).warnings
    template = config.root / "deploy" / "_cluster.yaml.j2"
    assert [w for w in warnings if "ha = true" in w] == [
        f"app {name!r} has ha = true, but its worker pods have no preStop drain ({template}); "
        "compare that template with raybuild's bundled deploy/_cluster.yaml.j2"
        for name in ("web", "vision")
    ]
    assert not [
        w for w in render_manifest(ha_fixture(tmp_path / "fresh"), fixture_record()).warnings if "ha" in w
    ]


# --- Architectures ------------------------------------------------------------------------------------


def _arch_selectors(text: str) -> dict[str, str | None]:
    cluster = cluster_of(ray_doc(text))
    groups = {HEAD_KEY: cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    return {
        name: (group["template"]["spec"].get("nodeSelector") or {}).get("kubernetes.io/arch")
        for name, group in groups.items()
    }


def test_single_platform_groups_are_pinned_to_their_architecture(fixture: LoadedConfig) -> None:
    # Built for linux/amd64 only (the default): never scheduled onto an arm64 node of a mixed cluster.
    assert _arch_selectors(render_manifest(fixture, fixture_record()).text) == {
        HEAD_KEY: "amd64",
        "web": "amd64",
        "vision": "amd64",
    }


def test_multi_platform_groups_run_anywhere_unless_node_arch_pins_them(tmp_path: Path, crds: Any) -> None:
    toml = FIXTURE_TOML.replace(
        'registry = "registry.example:5000/fixture"',
        'registry = "registry.example:5000/fixture"\nplatforms = ["linux/amd64", "linux/arm64"]',
    )
    config = write_fixture(tmp_path / "both", toml=toml)
    text = render_manifest(config, fixture_record()).text
    # The GPU app stays amd64 (CUDA wheels), the CPU app and the head image have both architectures.
    assert _arch_selectors(text) == {HEAD_KEY: None, "web": None, "vision": "amd64"}
    assert validate_manifest(text, crds) == []
    pinned = toml.replace('route_prefix = "/web"', 'route_prefix = "/web"\nnode_arch = "arm64"')
    text = render_manifest(write_fixture(tmp_path / "pinned", toml=pinned), fixture_record()).text
    assert _arch_selectors(text)["web"] == "arm64"
    assert validate_manifest(text, crds) == []


# --- --prepull ----------------------------------------------------------------------------------------------


def test_prepull_pulls_every_image_by_digest_then_holds_with_the_head_image(fixture: LoadedConfig) -> None:
    manifest = render_manifest(fixture, fixture_record(), prepull=True)
    (daemonset,) = [d for d in manifest.documents() if d["kind"] == "DaemonSet"]
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "raybuild"
    assert daemonset["metadata"]["name"] == "fixture-serve-prepull"
    pod = daemonset["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        **daemonset["spec"]["selector"]["matchLabels"],
        **pod["metadata"]["labels"],
    }
    images = {c["name"]: c["image"] for c in pod["spec"]["initContainers"]}
    assert images == {
        f"pull-{name}": f"registry.example:5000/fixture/{name}:v1@sha256:{DIGESTS[key]}"
        for key, name in ((HEAD_KEY, "ray-head"), ("web", "web"), ("vision", "vision"))
    }
    assert {tuple(c["command"]) for c in pod["spec"]["initContainers"]} == {("/bin/sh", "-c", "true")}
    (hold,) = pod["spec"]["containers"]
    assert hold["image"] == images["pull-ray-head"] and hold["command"] == ["sleep", "infinity"]
    assert "at most 0 MB compressed, the sum of the published sizes" in manifest.text  # 3 x 400 bytes
    assert manifest.warnings == ()
    assert "DaemonSet" not in render_manifest(fixture, fixture_record()).text


def test_prepull_of_unpublished_images_says_they_are_not_pinned(fixture: LoadedConfig) -> None:
    manifest = render_manifest(fixture, fixture_record((HEAD_KEY, "web")), prepull=True)
    assert any(
        w.startswith("--prepull: not pinned by digest") and w.endswith(": vision") for w in manifest.warnings
    )


def test_prepull_and_store_manifests_are_valid_kubernetes(fixture: LoadedConfig) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    manifest = render_manifest(fixture, fixture_record(), gcs_store_manifests="redis", prepull=True)
    core = [d for d in manifest.documents() if d["kind"] not in ("RayService", "RayCluster")]
    assert {d["kind"] for d in core} >= {"DaemonSet", "StatefulSet", "Service", "PriorityClass"}
    for doc in core:
        kubernetes_validate.validate(doc, "1.34.0", strict=True)


def test_prepull_has_one_daemonset_per_architecture_with_the_images_built_for_it(tmp_path: Path) -> None:
    # An init container whose image has no variant for its node could not start, and the pod would never
    # get to the next image: the GPU app's amd64-only image must not be pre-pulled on arm64 nodes.
    toml = FIXTURE_TOML.replace(
        'registry = "registry.example:5000/fixture"',
        'registry = "registry.example:5000/fixture"\nplatforms = ["linux/amd64", "linux/arm64"]',
    )
    manifest = render_manifest(write_fixture(tmp_path / "both", toml=toml), fixture_record(), prepull=True)
    daemonsets = {
        d["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"]: d
        for d in manifest.documents()
        if d["kind"] == "DaemonSet"
    }
    assert set(daemonsets) == {"amd64", "arm64"}
    pulled = {
        arch: {c["name"] for c in d["spec"]["template"]["spec"]["initContainers"]}
        for arch, d in daemonsets.items()
    }
    assert pulled == {
        "amd64": {"pull-ray-head", "pull-web", "pull-vision"},
        "arm64": {"pull-ray-head", "pull-web"},
    }
    assert {d["metadata"]["name"] for d in daemonsets.values()} == {
        "fixture-serve-prepull-amd64",
        "fixture-serve-prepull-arm64",
    }
    assert "#   arm64 nodes: at most" in manifest.text
