"""The SBOM: valid CycloneDX, exact components, deterministic bytes; `raybuild sbom` over a fake engine."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from raybuild.cli import sbom as sbom_cli
from raybuild.config import LoadedConfig
from raybuild.errors import UsageError
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, save_build_record
from raybuild.ship import wheels
from raybuild.ship.inventory import DebPackage, Inventory, PythonDist
from raybuild.ship.sbom import (
    MEDIA_TYPE,
    TRIVY_SOURCE,
    SbomImage,
    build_sbom,
    same_content,
    sbom_image_id,
    sbom_images,
    sbom_timestamp,
    wheel_hashes,
)
from raybuild.ship.wheels import WheelHashes
from raybuild.state import HEAD_KEY, publish_record_path
from tests.unit.fakes import FakeEngine
from tests.unit.ship.test_inventory import MARK, deb, dist

if TYPE_CHECKING:
    from tests.conftest import MainResult, TmpProject

VENV_SITE = "/opt/ray/venv/lib/python3.11/site-packages"
APP_SITE = "/opt/app/site-packages"
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
IMAGE_ID = "sha256:" + "b" * 64
HEAD_ID = "sha256:" + "a" * 64
DEMO_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
HEAD_REF = "127.0.0.1:5000/demo/ray-head:ray2.60.0-py3.11-111111111111"
DIGEST = "sha256:" + "d" * 64
SHA = {name: name * 64 for name in "abcdef"}

RAY_LOCK = f"ray==2.60.0 \\\n    --hash=sha256:{SHA['a']}\nnumpy==2.4.6 \\\n    --hash=sha256:{SHA['b']}\n"
APP_LOCK = RAY_LOCK + f"orjson==3.13.0 \\\n    --hash=sha256:{SHA['c']} \\\n    --hash=sha256:{SHA['d']}\n"

INVENTORY = Inventory(
    python=(
        PythonDist("numpy", "2.4.6", VENV_SITE, license_expression="BSD-3-Clause AND MIT"),
        PythonDist("orjson", "3.13.0", APP_SITE, license="Apache-2.0 OR MIT"),
        PythonDist("ray", "2.60.0", VENV_SITE, license="Apache 2.0"),
        PythonDist(
            "typing_extensions",
            "4.16.0",
            VENV_SITE,
            license_classifiers=("License :: OSI Approved :: Python Software Foundation License",),
        ),
    ),
    debian=(
        DebPackage("bash", "5.2.15-2+b13", "amd64", "bash", "5.2.15-2"),
        DebPackage("libc6", "2.36-9+deb12u14", "amd64", "glibc", "2.36-9+deb12u14"),
        DebPackage("tzdata", "2025b-0+deb12u2", "all", "tzdata", "2025b-0+deb12u2"),
    ),
    os_id="debian",
    os_version="12.12",
    python_version="3.11.2",
)


def image(**fields: Any) -> SbomImage:
    values: dict[str, Any] = {
        "key": "demo",
        "ref": DEMO_REF,
        "image_id": IMAGE_ID,
        "device": "cpu",
        "app_lock": ("lockfiles/demo.txt", APP_LOCK),
        "ray_lock": ("lockfiles/ray.txt", RAY_LOCK),
        **fields,
    }
    return SbomImage(**values)


def no_index() -> WheelHashes:
    return WheelHashes(None)


def document(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def components(text: str, kind: str) -> dict[str, dict[str, Any]]:
    """The components whose purl has type ``kind`` (pypi, deb), by name."""
    found = document(text)["components"]
    return {c["name"]: c for c in found if c.get("purl", "").startswith(f"pkg:{kind}/")}


def props(node: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in node.get("properties", [])}


def test_the_sbom_is_valid_cyclonedx_1_6() -> None:
    text = build_sbom(image(), INVENTORY, no_index().find, WHEN).text
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert document(text)["specVersion"] == "1.6" and MEDIA_TYPE == "application/vnd.cyclonedx+json"


def test_python_components_carry_purl_license_location_and_the_wheel_hash() -> None:
    sbom = build_sbom(image(), INVENTORY, no_index().find, WHEN)
    python = components(sbom.text, "pypi")
    assert set(python) == {"numpy", "orjson", "ray", "typing_extensions"}
    numpy = python["numpy"]
    assert numpy["purl"] == "pkg:pypi/numpy@2.4.6"
    assert numpy["hashes"] == [{"alg": "SHA-256", "content": SHA["b"]}]
    assert numpy["licenses"] == [{"expression": "BSD-3-Clause AND MIT"}]
    # The venv was installed from Ray's lock, the app's site-packages from the app's.
    assert props(numpy) == {"raybuild:lockfile": "lockfiles/ray.txt", "raybuild:site-packages": VENV_SITE}
    assert props(python["orjson"])["raybuild:lockfile"] == "lockfiles/demo.txt"
    assert python["typing_extensions"]["purl"] == "pkg:pypi/typing-extensions@4.16.0"
    assert python["typing_extensions"]["licenses"] == [
        {"license": {"name": "Python Software Foundation License"}}
    ]
    assert python["ray"]["licenses"] == [{"license": {"name": "Apache 2.0"}}]
    # orjson has two candidate hashes and no index to tell them apart: no hash, and the report says so.
    assert "hashes" not in python["orjson"]
    assert (sbom.hashed, sbom.unhashed, sbom.unlocked) == (
        2,
        ("orjson==3.13.0",),
        ("typing_extensions==4.16.0",),
    )


def test_debian_components_hang_off_the_os_component() -> None:
    text = build_sbom(image(), INVENTORY, no_index().find, WHEN).text
    debian = components(text, "deb")
    assert debian["libc6"]["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12.12"
    assert debian["tzdata"]["purl"].endswith("?arch=all&distro=debian-12.12")
    assert props(debian["libc6"]) == {TRIVY_SOURCE: "glibc"}
    data = document(text)
    os_component = next(c for c in data["components"] if c["type"] == "operating-system")
    assert (os_component["name"], os_component["version"]) == ("debian", "12.12")
    depends = {d["ref"]: set(d.get("dependsOn", [])) for d in data["dependencies"]}
    assert depends[os_component["bom-ref"]] == {c["bom-ref"] for c in debian.values()}
    assert os_component["bom-ref"] in depends["image"]


def test_the_root_component_is_the_image() -> None:
    text = build_sbom(image(), INVENTORY, no_index().find, WHEN).text
    root = document(text)["metadata"]["component"]
    assert (root["type"], root["name"], root["version"]) == (
        "container",
        DEMO_REF.rsplit(":", 1)[0],
        DEMO_REF.rsplit(":", 1)[1],
    )
    assert props(root) == {
        "raybuild:image-id": IMAGE_ID,
        "raybuild:ray-version": "2.60.0",
        "raybuild:python-version": "3.11.2",
        "raybuild:device": "cpu",
    }
    assert "purl" not in root
    assert sbom_image_id(text) == IMAGE_ID


def test_a_published_image_has_its_registry_digest_and_an_oci_purl() -> None:
    published = PublishedImage(
        "registry.example.com/team/demo:ray2.60.0-py3.11-cpu-222222222222", DIGEST, 1, 1
    )
    root = document(build_sbom(image(published=published), INVENTORY, no_index().find, WHEN).text)[
        "metadata"
    ]["component"]
    assert props(root)["raybuild:registry-digest"] == DIGEST
    assert props(root)["raybuild:registry-reference"] == published.pinned
    assert root["purl"] == (
        f"pkg:oci/demo@{DIGEST}?repository_url=registry.example.com/team/demo"
        "&tag=ray2.60.0-py3.11-cpu-222222222222"
    )


def test_gpu_images_say_which_cuda_their_wheels_need() -> None:
    cuda = replace(
        INVENTORY,
        python=(*INVENTORY.python, PythonDist("nvidia-cuda-runtime-cu12", "12.9.79", APP_SITE)),
    )
    root = document(build_sbom(image(device="gpu"), cuda, no_index().find, WHEN).text)["metadata"][
        "component"
    ]
    assert props(root)["raybuild:cuda"] == "12.9"
    cpu_root = document(build_sbom(image(), cuda, no_index().find, WHEN).text)["metadata"]["component"]
    assert "raybuild:cuda" not in props(cpu_root)


def test_the_same_image_gives_the_same_bytes_apart_from_the_timestamp() -> None:
    first = build_sbom(image(), INVENTORY, no_index().find, WHEN).text
    assert build_sbom(image(), INVENTORY, no_index().find, WHEN).text == first
    later = build_sbom(image(), INVENTORY, no_index().find, datetime(2027, 1, 1, tzinfo=UTC)).text
    assert later != first and same_content(later, first)
    assert [a for a, b in zip(first.splitlines(), later.splitlines(), strict=True) if a != b] == [
        '    "timestamp": "2026-11-30T12:00:00+00:00",'
    ]
    other = build_sbom(image(image_id="sha256:" + "c" * 64), INVENTORY, no_index().find, WHEN).text
    assert not same_content(other, first)
    assert document(other)["serialNumber"] != document(first)["serialNumber"]


def test_source_date_epoch_pins_the_timestamp() -> None:
    assert sbom_timestamp({"SOURCE_DATE_EPOCH": "1764504000"}) == datetime(2025, 11, 30, 12, 0, tzinfo=UTC)
    assert sbom_timestamp({}).tzinfo is UTC
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH='yesterday' is not a number"):
        sbom_timestamp({"SOURCE_DATE_EPOCH": "yesterday"})


# -- the project's images and the command --------------------------------------------------------------------


def built_project(tmp_project: TmpProject) -> LoadedConfig:
    """The demo project with lockfiles, and its head and demo images in the build record."""
    config = tmp_project.load()
    (config.root / "lockfiles").mkdir()
    (config.root / "lockfiles" / "ray.txt").write_text(RAY_LOCK)
    (config.root / "lockfiles" / "demo.txt").write_text(APP_LOCK)
    head = BuiltImage(HEAD_KEY, HEAD_REF, HEAD_ID, "cpu", False)
    save_build_record(config, [head, BuiltImage("demo", DEMO_REF, IMAGE_ID, "cpu", False)])
    return config


@pytest.fixture
def sbom_project(tmp_project: TmpProject) -> LoadedConfig:
    return built_project(tmp_project)


def test_sbom_images_are_the_head_and_the_built_apps(sbom_project: LoadedConfig) -> None:
    images = sbom_images(sbom_project)
    assert [(i.key, i.ref, i.app_lock and i.app_lock[0]) for i in images] == [
        (HEAD_KEY, HEAD_REF, None),
        ("demo", DEMO_REF, "lockfiles/demo.txt"),
    ]
    assert images[1].ray_lock == ("lockfiles/ray.txt", RAY_LOCK)
    assert [i.key for i in sbom_images(sbom_project, ["demo"])] == ["demo"]


def test_a_publish_record_of_another_build_is_not_this_image(sbom_project: LoadedConfig) -> None:
    same = PublishedImage(DEMO_REF, DIGEST, 1, 1)
    older = PublishedImage(HEAD_REF.replace("111111111111", "000000000000"), DIGEST, 1, 1)
    PublishRecord({"demo": same, HEAD_KEY: older}).save(publish_record_path(sbom_project))
    head, demo = sbom_images(sbom_project)
    assert demo.published == same and head.published is None


def test_an_app_that_was_not_built_is_named(tmp_project: TmpProject) -> None:
    with pytest.raises(UsageError, match=r"not built yet: demo"):
        sbom_images(tmp_project.load(), ["demo"])
    with pytest.raises(UsageError, match=r"nothing to describe"):
        sbom_images(tmp_project.load())


def probe_report() -> str:
    data = {
        "python": [dist("ray", "2.60.0"), dist("numpy", "2.4.6"), dist("orjson", "3.13.0", APP_SITE)],
        "debian": [deb("libc6", "2.36-9+deb12u14", source="glibc")],
        "os": {"ID": "debian", "VERSION_ID": "12", "DEBIAN_VERSION": "12.12"},
        "python_version": "3.11.2",
    }
    return MARK + json.dumps(data) + "\n"


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch, sbom_project: LoadedConfig) -> Callable[..., MainResult]:
    engine = FakeEngine([DEMO_REF, HEAD_REF])
    engine.script("run_python", output=probe_report())
    monkeypatch.setattr(sbom_cli, "engine_for", lambda state: engine)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764504000")
    return lambda run_main, *args: run_main("--config", str(sbom_project.path), "sbom", "--offline", *args)


def test_cli_writes_one_file_per_image(
    fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult], sbom_project: LoadedConfig
) -> None:
    result = fake_cli(run_main)
    assert result.exit_code == 0, result.stderr
    folder = sbom_project.root / ".raybuild" / "sbom"
    assert sorted(p.name for p in folder.iterdir()) == ["demo.cdx.json", "ray-head.cdx.json"]
    text = (folder / "demo.cdx.json").read_text()
    assert document(text)["metadata"]["timestamp"] == "2025-11-30T12:00:00+00:00"
    assert set(components(text, "pypi")) == {"ray", "numpy", "orjson"}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["APP", "SBOM", "PYTHON", "DEBIAN", "WHEEL", "SHA256"]
    assert lines[2].split()[0] == "demo" and lines[2].split()[2:] == ["3", "1", "2/3"]
    assert "demo: no wheel SHA-256 for 1 locked distribution(s) (orjson==3.13.0)" in result.stderr
    again = fake_cli(run_main)
    assert again.exit_code == 0 and (folder / "demo.cdx.json").read_text() == text


def test_cli_json_and_out(
    fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult], tmp_path: Path
) -> None:
    result = fake_cli(run_main, "demo", "--out", str(tmp_path / "sboms"), "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["path"] == str(tmp_path / "sboms" / "demo.cdx.json")
    assert row["components"] == {"python": 3, "debian": 1}
    assert row["wheel_sha256"] == {"found": 2, "not_found": ["orjson==3.13.0"]}


def test_cli_names_an_app_that_is_not_in_the_config(
    fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult]
) -> None:
    result = fake_cli(run_main, "nope")
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("error: ") and "nope" in result.stderr and "Traceback" not in result.stderr
    )


def test_sbom_has_help() -> None:
    assert sbom_cli.sbom.help and "CycloneDX" in sbom_cli.sbom.help


def test_cli_says_when_the_index_could_not_be_asked(
    fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr(wheels.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(sbom_cli, "wheel_hashes", lambda config, offline: wheel_hashes(config, offline=False))
    result = fake_cli(run_main, "demo")  # the fixture asks for --offline; the patch takes it back
    assert result.exit_code == 0, result.stderr
    assert "could not list 1 project(s) on https://pypi.org/simple/ (first: orjson:" in result.stderr
    assert "demo: no wheel SHA-256 for 1 locked distribution(s) (orjson==3.13.0)" in result.stderr
