"""Reading a team's existing Serve config (or RayService) into raybuild apps, and what is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raybuild.adopt import read_serve_config
from raybuild.errors import ConfigError

SERVE_CONFIG = """\
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
applications:
  - name: Text_Classifier
    route_prefix: /classify
    import_path: classifier.main:app
    runtime_env:
      working_dir: ./classifier
      pip: ["orjson==3.10.18", "# a comment", "humanize"]
      env_vars: {MODEL: small, THREADS: 2}
    deployments:
      - name: Classifier
        num_replicas: 2
        max_ongoing_requests: 8
        ray_actor_options: {num_cpus: 1, resources: {special: 1}}
  - name: ocr
    route_prefix: /ocr
    import_path: ocr_app.app
    runtime_env:
      working_dir: s3://bucket/ocr.zip
      pip: {packages: [pillow], pip_check: false}
      conda: env.yaml
    deployments:
      - name: Reader
        autoscaling_config: {min_replicas: 1, max_replicas: 5, target_ongoing_requests: 2}
        ray_actor_options: {num_gpus: 1}
"""


@pytest.fixture
def serve_config(tmp_path: Path) -> Path:
    (tmp_path / "classifier").mkdir()
    path = tmp_path / "serve.yaml"
    path.write_text(SERVE_CONFIG, encoding="utf-8")
    return path


def test_each_application_becomes_an_app_with_its_packages_env_code_and_deployments(
    serve_config: Path,
) -> None:
    adoption = read_serve_config(serve_config)
    classifier, ocr = adoption.apps
    assert classifier.name == "text-classifier"
    assert classifier.import_path == "classifier.main:app"
    assert classifier.route_prefix == "/classify"
    assert classifier.requirements == ("orjson==3.10.18", "humanize")
    assert classifier.env == {"MODEL": "small", "THREADS": "2"}
    assert classifier.code_dir == (serve_config.parent / "classifier").resolve()
    assert classifier.deployments == (
        {"name": "Classifier", "num_replicas": 2, "ray_actor_options": {"num_cpus": 1}},
    )
    assert classifier.device == "cpu"
    assert ocr.import_path == "ocr_app:app"  # Serve's dotted form, written the way raybuild.toml wants it
    assert ocr.requirements == ("pillow",)
    assert ocr.code_dir is None
    assert ocr.deployments == (
        {
            "name": "Reader",
            "autoscaling": {"min_replicas": 1, "max_replicas": 5},
            "ray_actor_options": {"num_gpus": 1},
        },
    )
    assert ocr.device == "gpu"


def test_what_cannot_be_carried_over_is_listed_one_line_each(serve_config: Path) -> None:
    assert read_serve_config(serve_config).notes == (
        "http_options: not carried over (raybuild renders its own cluster-wide Serve settings)",
        "proxy_location: not carried over (raybuild renders its own cluster-wide Serve settings)",
        "app 'Text_Classifier': named 'text-classifier' in raybuild.toml (lowercase letters, digits and '-')",
        "app 'text-classifier' deployment 'Classifier': max_ongoing_requests is not carried over "
        "(raybuild.toml has no such setting)",
        "app 'text-classifier' deployment 'Classifier': ray_actor_options.resources is not carried over",
        "app 'ocr': runtime_env.conda is not carried over",
        "app 'ocr': runtime_env.pip.pip_check is not carried over",
        "app 'ocr': working_dir 's3://bucket/ocr.zip' is not a local folder; put its code in apps/ocr",
        "app 'ocr' deployment 'Reader': autoscaling_config.target_ongoing_requests is not carried over",
    )


def test_a_rayservice_manifest_is_read_through_its_serve_config_v2(
    tmp_path: Path, serve_config: Path
) -> None:
    manifest = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "svc"},
        "spec": {"serveConfigV2": serve_config.read_text(encoding="utf-8")},
    }
    path = tmp_path / "rayservice.yaml"
    path.write_text("---\nkind: Namespace\n---\n" + yaml.safe_dump(manifest), encoding="utf-8")
    assert read_serve_config(path).apps == read_serve_config(serve_config).apps


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Deployment\n", "neither a Serve config"),
        ("applications: []\n", "'applications' must be a non-empty list"),
        ("applications:\n  - name: a\n", "application 'a' has no import_path"),
        ("applications:\n  - name: 'Ä!'\n    import_path: m:app\n", "cannot become a raybuild app name"),
        ("applications: [\n", "not valid YAML"),
        (
            "applications:\n  - name: a\n    import_path: m:app\n    runtime_env: {working_dir: ./missing}\n",
            "working_dir './missing' is not a folder",
        ),
        ("kind: RayService\nspec: {}\n", "no spec.serveConfigV2"),
    ],
)
def test_bad_serve_configs_are_one_line_errors_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as raised:
        read_serve_config(path)
    assert "\n" not in raised.value.message
