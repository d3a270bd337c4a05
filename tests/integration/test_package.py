"""The wheel users install carries everything raybuild reads at run time: templates, schemas, the CRDs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.network  # pip fetches the build backend (setuptools) from the index


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_path)


def test_the_wheel_carries_every_template_of_the_bundled_project(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = {
        f"raybuild/templates/{p.relative_to(REPO_ROOT / 'images').as_posix()}"
        for p in (REPO_ROOT / "images").rglob("*")
        if p.is_file()
    } | {f"raybuild/templates/deploy/{p.name}" for p in (REPO_ROOT / "deploy").glob("*.j2")}
    assert expected <= names
    for name in expected:
        source = (
            REPO_ROOT
            / ("deploy" if "/deploy/" in name else "images")
            / name.split("/", 2)[2].removeprefix("deploy/")
        )
        assert wheel.read(name) == Path(source).read_bytes(), name


def test_the_wheel_carries_the_crds_with_their_notice_and_the_measure_schema(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {
        "raybuild/manifest/crds/ray.io_rayservices.yaml",
        "raybuild/manifest/crds/ray.io_rayclusters.yaml",
        "raybuild/manifest/crds/NOTICE.md",
        "raybuild/schemas/measure.schema.json",
    } <= names
