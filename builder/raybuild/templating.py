"""The Jinja settings every raybuild template uses (Dockerfiles and Kubernetes manifests alike)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from raybuild.errors import FileError

# The templates raybuild ships: Dockerfiles under cpu/, gpu/ and common/, manifests under deploy/. A
# project's own images/ and deploy/ folders override them.
BUNDLED_TEMPLATES = Path(__file__).resolve().parent / "templates"


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


def template_environment(dirs: list[Path], filters: dict[str, Any]) -> jinja2.Environment:
    """The Jinja settings every raybuild template uses: strict names, no escaping, block-friendly spacing."""
    environment = jinja2.Environment(
        loader=_Loader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters.update(filters)
    return environment
