"""Dockerfile generation: a pure function from a frozen spec to text, through the Jinja templates.

The templates are raybuild's own (``templates/``), each overridable by the project's ``images/`` folder
(see ``raybuild.templating``). No Dockerfile text lives in Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from raybuild.errors import ConfigError
from raybuild.templating import Templates, image_templates, template_environment

BUNDLED = image_templates(None)

if TYPE_CHECKING:
    from raybuild.image.bases import BaseSpec
    from raybuild.image.spec import ImageSpec


def template_dir(project_root: Path | None) -> Templates:
    """The Dockerfile templates: the project's images/ folder over raybuild's, file by file."""
    return image_templates(project_root)


def dockerfile_string(value: str) -> str:
    """A double-quoted Dockerfile word that BuildKit reads back as exactly ``value``.

    Inside double quotes BuildKit expands $NAME, and a backslash escapes only ", $ and itself, so JSON
    escapes (Jinja's tojson writes & as \\u0026) would reach the container verbatim.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _environment(templates: Templates) -> jinja2.Environment:
    return template_environment(templates, {"dockerfile_string": dockerfile_string})


def _render(templates: Templates, name: str, context: dict[str, object]) -> str:
    try:
        text = _environment(templates).get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"template {name} not found under {templates}") from exc
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"template {name}: {exc.message}", hint="the template uses a name raybuild does not set"
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or name}:{exc.lineno}"
        raise ConfigError(f"{where}: template syntax error: {exc.message}") from exc
    # Collapse the blank lines that template blocks leave behind, so the output reads as hand-written.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() == "" and lines and lines[-1].strip() == "":
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def render_dockerfile(spec: ImageSpec, templates: Templates = BUNDLED) -> str:
    return _render(templates, f"{spec.device}/Dockerfile.j2", spec.context())


def render_base(spec: BaseSpec, templates: Templates = BUNDLED) -> str:
    return _render(templates, spec.template(), spec.context())
