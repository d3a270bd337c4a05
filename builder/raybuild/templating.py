"""Templates: where they come from, and the Jinja settings every raybuild template uses.

One overlay rule for Dockerfiles and manifests alike: a file in the project's ``images/`` (or ``deploy/``)
folder overrides the bundled file of the same name, file by file; every other file comes from raybuild.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from raybuild.errors import FileError

# The templates raybuild ships: Dockerfiles under cpu/, gpu/ and common/, manifests under deploy/.
BUNDLED_TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Templates:
    """Template folders in the order they are searched: the project's first, raybuild's last."""

    dirs: tuple[Path, ...]

    def path(self, name: str) -> Path:
        """The file that wins for ``name``; the bundled path when no folder has it (reading it then fails)."""
        for folder in self.dirs:
            if (folder / name).is_file():
                return folder / name
        return self.dirs[-1] / name

    def __str__(self) -> str:
        return ", ".join(str(d) for d in self.dirs)


def overlay(project_folder: Path | None, bundled: Path) -> Templates:
    """The project's folder (when it exists) over the bundled one."""
    dirs = [project_folder] if project_folder is not None and project_folder.is_dir() else []
    return Templates((*dirs, bundled))


def image_templates(project_root: Path | None) -> Templates:
    return overlay(project_root / "images" if project_root else None, BUNDLED_TEMPLATES)


def manifest_templates(project_root: Path | None) -> Templates:
    return overlay(project_root / "deploy" if project_root else None, BUNDLED_TEMPLATES / "deploy")


class _Loader(jinja2.FileSystemLoader):
    """Jinja's file loader; a template of the project's that is not UTF-8 is one line naming the file."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        try:
            return super().get_source(environment, template)
        except UnicodeDecodeError as exc:
            found = [Path(d) / template for d in self.searchpath if (Path(d) / template).is_file()]
            raise FileError.not_utf8(found[0] if found else template, exc) from exc


def template_environment(dirs: list[Path] | Templates, filters: dict[str, Any]) -> jinja2.Environment:
    """The Jinja settings every raybuild template uses: strict names, no escaping, block-friendly spacing."""
    environment = jinja2.Environment(
        loader=_Loader([str(d) for d in (dirs.dirs if isinstance(dirs, Templates) else dirs)]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters.update(filters)
    return environment
