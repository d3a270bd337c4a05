"""SBOMs of a real image, and attached in the real registry on 127.0.0.1:5000.

The components must be exactly what the image holds: its Python set is what importlib.metadata sees inside
the container, its Debian set what `dpkg-query -W` lists. Published SBOMs are fetched back by the image's
digest alone, through the OCI 1.1 fallback tag, and not pushed again when unchanged. Each test works in a
copy of the project and publishes under a namespace of its own.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder
from raybuild.lock.resolve import normalize
from raybuild.records import PublishRecord, load_build_record
from raybuild.registry import OCI_INDEX, fallback_tag
from raybuild.state import publish_record_path
from tests.integration.docker_cli import docker

pytestmark = [pytest.mark.docker, pytest.mark.registry]

CYCLONEDX = "application/vnd.cyclonedx+json"
# The image's own Python, with the image's own sys.path: what the app can import.
PYTHON_DISTS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted([d.metadata['Name'], d.version] for d in m.distributions())))"
)
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def project(engine: Engine, project_copy: Path) -> LoadedConfig:
    """The project copy with hello (and so the head image) built; cached builds make this cheap."""
    config = load_config(project_copy / "raybuild.toml")
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    Builder(config, engine, ca_bundle=ca if ca.is_file() else None).build(config.select(("hello",)))
    return config


@pytest.fixture
def raybuild(project: LoadedConfig, run_main: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: run_main("--config", str(project.path), *args)


def in_image(engine: Engine, image: str, *command: str) -> str:
    args = ["run", "--rm", "--network", "none", "--entrypoint", command[0], image, *command[1:]]
    return docker(engine, *args, what=f"{command[0]} in {image}").output


def components(sbom: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    return {
        (c["name"], c["version"]) for c in sbom["components"] if c.get("purl", "").startswith(f"pkg:{kind}/")
    }


def test_the_sbom_matches_the_image_exactly(
    engine: Engine, project: LoadedConfig, raybuild: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764504000")
    result = raybuild("sbom", "hello", "--offline", "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    path = Path(row["path"])
    text = path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    image = load_build_record(project)["hello"]

    python = json.loads(
        in_image(engine, str(image.ref), "python", "-c", PYTHON_DISTS).strip().splitlines()[-1]
    )
    assert {(normalize(n), v) for n, v in components(sbom, "pypi")} == {(normalize(n), v) for n, v in python}
    assert len(python) == row["components"]["python"]

    listed = in_image(engine, str(image.ref), "dpkg-query", "-W").strip().splitlines()
    # dpkg-query -W names multi-arch packages with their architecture (libc6:amd64); the purl carries it.
    debian = {(line.split("\t")[0].split(":")[0], line.split("\t")[1]) for line in listed}
    assert components(sbom, "deb") == debian and len(debian) == row["components"]["debian"]

    root = {p["name"]: p["value"] for p in sbom["metadata"]["component"]["properties"]}
    assert root["raybuild:image-id"] == image.image_id
    assert root["raybuild:ray-version"] == project.project.ray_version
    assert root["raybuild:python-version"].startswith(project.project.python + ".")
    assert sbom["metadata"]["component"]["version"] == image.ref.tag_or_latest

    again = raybuild("sbom", "hello", "--offline")
    assert again.exit_code == 0, again.stderr
    assert path.read_text() == text  # the same image, the same bytes


@pytest.mark.network
def test_every_locked_wheel_gets_its_lockfile_hash(
    project: LoadedConfig, raybuild: Callable[..., Any]
) -> None:
    result = raybuild("sbom", "hello", "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["wheel_sha256"]["not_found"] == [] and row["not_in_lockfile"] == []
    sbom = json.loads(Path(row["path"]).read_text())
    lock_text = (project.root / "lockfiles" / "hello.txt").read_text() + project.ray_lockfile().read_text()
    for component in sbom["components"]:
        if component.get("purl", "").startswith("pkg:pypi/"):
            (digest,) = component["hashes"]
            assert f"--hash=sha256:{digest['content']}" in lock_text, component["name"]


def get(url: str, accept: str) -> tuple[bytes, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with LOOPBACK.open(request, timeout=10) as response:
        return response.read(), response.headers.get("Content-Type", "")


def test_publish_attaches_the_sbom_found_by_the_image_digest_and_pushes_it_once(
    project: LoadedConfig, namespace: str, raybuild: Callable[..., Any]
) -> None:
    result = raybuild("publish", "hello", "--registry", namespace, "--offline", "--json")
    assert result.exit_code == 0, result.stderr
    record = PublishRecord.load(publish_record_path(project))
    assert record is not None
    image = record.images["hello"]
    host, repository = image.reference.host, image.reference.path
    api = f"http://{host}/v2/{repository}"

    # From nothing but the image digest: the referrers index under the fallback tag, its CycloneDX artifact.
    body, content_type = get(f"{api}/manifests/{fallback_tag(image.digest)}", OCI_INDEX)
    assert content_type.startswith(OCI_INDEX)
    (entry,) = [m for m in json.loads(body)["manifests"] if m.get("artifactType") == CYCLONEDX]
    assert entry["digest"] == image.sbom
    artifact = json.loads(get(f"{api}/manifests/{entry['digest']}", entry["mediaType"])[0])
    assert artifact["subject"]["digest"] == image.digest
    (layer,) = artifact["layers"]
    fetched = get(f"{api}/blobs/{layer['digest']}", "*/*")[0]
    local = project.root / ".raybuild" / "sbom" / "hello.cdx.json"
    assert fetched == local.read_bytes()
    root = {p["name"]: p["value"] for p in json.loads(fetched)["metadata"]["component"]["properties"]}
    assert root["raybuild:registry-digest"] == image.digest

    before = get(f"{api}/manifests/{fallback_tag(image.digest)}", OCI_INDEX)[0]
    again = raybuild("publish", "hello", "--registry", namespace, "--offline", "--json")
    assert again.exit_code == 0, again.stderr
    assert "the registry already holds this SBOM" in again.stderr
    assert {row["sbom"] for row in json.loads(again.stdout) if row["app"] == "hello"} == {image.sbom}
    assert get(f"{api}/manifests/{fallback_tag(image.digest)}", OCI_INDEX)[0] == before
