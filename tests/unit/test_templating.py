"""The templates raybuild ships are the ones the bundled project uses: the two copies never drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild.templating import BUNDLED_TEMPLATES
from tests.conftest import REPO_ROOT


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("project_folder", "bundled"), [("images", ""), ("deploy", "deploy")])
def test_the_bundled_project_uses_the_shipped_templates(project_folder: str, bundled: str) -> None:
    shipped = _files(BUNDLED_TEMPLATES / bundled)
    if not bundled:
        shipped = {name: data for name, data in shipped.items() if not name.startswith("deploy/")}
    assert _files(REPO_ROOT / project_folder) == shipped
