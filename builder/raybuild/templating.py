"""The Jinja settings every raybuild template uses (Dockerfiles and Kubernetes manifests alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

# The templates raybuild ships: Dockerfiles under cpu/, gpu/ and common/, manifests under deploy/. A
# project's own images/ and deploy/ folders override them.
BUNDLED_TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_environment(dirs: list[Path], filters: dict[str, Any]) -> jinja2.Environment:
    """The Jinja settings every raybuild template uses: strict names, no escaping, block-friendly spacing."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    environment.filters.update(filters)
    return environment
