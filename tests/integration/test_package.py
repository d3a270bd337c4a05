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


def test_the_wheel_carries_every_template_of_the_package(wheel: zipfile.ZipFile) -> None:
    source = REPO_ROOT / "builder" / "raybuild" / "templates"
    templates = {
        f"raybuild/templates/{p.relative_to(source).as_posix()}": p
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    # The Dockerfile and manifest templates a project may overlay, not only the init and probe files.
    overlayable = ("common/app.Dockerfile.j2", "deploy/rayservice.yaml.j2")
    assert {f"raybuild/templates/{name}" for name in overlayable} <= set(templates)
    assert set(templates) <= set(wheel.namelist())
    for name, path in templates.items():
        assert wheel.read(name) == path.read_bytes(), name


def test_the_wheel_carries_the_crds_with_their_notice_and_the_measure_schema(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {
        "raybuild/manifest/crds/ray.io_rayservices.yaml",
        "raybuild/manifest/crds/ray.io_rayclusters.yaml",
        "raybuild/manifest/crds/NOTICE.md",
        "raybuild/schemas/measure.schema.json",
    } <= names
