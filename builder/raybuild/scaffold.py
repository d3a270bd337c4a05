"""`raybuild init`: a new project, with one example app or with the apps of an existing Serve config.

Every file is planned before any is written. A planned file that already exists is a collision: nothing is
written, and the command lists every collision, unless ``force`` says to replace them. An existing
raybuild.toml is refused even then: it is the project, not a file init owns.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybuild import __version__
from raybuild.adopt import Adoption
from raybuild.config import CONFIG_NAME, DEFAULT_PYTHON, DEFAULT_RAY_VERSION, load_config, parse_config
from raybuild.errors import UsageError
from raybuild.fsutil import atomic_write
from raybuild.templating import BUNDLED_TEMPLATES, template_environment

WORKFLOW = Path(".github") / "workflows" / "raybuild.yml"

_HEADER = """\
# raybuild project config. See the raybuild README for every key.

[project]
name = {project}
ray_version = {ray}
python = {python}
# Where `raybuild publish` pushes; the default is a local registry on 127.0.0.1:5000.
registry = {registry}
"""

_APP = '''\
"""{cls}: a minimal Ray Serve app. Replace it with your own."""

from ray import serve
from starlette.requests import Request


@serve.deployment
class {cls}:
    async def __call__(self, request: Request) -> dict[str, str]:
        return {{"app": "{name}", "path": request.url.path}}


app = {cls}.bind()
'''

_REQUIREMENTS = "# The app's own dependencies; Ray is added by raybuild.\n"


@dataclass(frozen=True)
class InitPlan:
    """The files `init` would write, and what it could not carry over from a Serve config."""

    directory: Path
    files: Mapping[Path, str]
    notes: tuple[str, ...] = ()

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    def collisions(self) -> list[Path]:
        return [path for path in self.files if path.exists() or path.is_symlink()]


def _toml(value: Any) -> str:
    """A TOML value; JSON's strings, numbers and booleans are valid TOML, and tables are written inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(value)


def _app_table(fields: Mapping[str, Any], deployments: list[Mapping[str, Any]]) -> str:
    lines = ["", "[[apps]]", *(f"{key} = {_toml(value)}" for key, value in fields.items() if value)]
    for deployment in deployments:
        lines += [
            "",
            "[[apps.deployments]]",
            *(f"{key} = {_toml(value)}" for key, value in deployment.items()),
        ]
    return "\n".join(lines) + "\n"


def _header(directory: Path) -> str:
    project = directory.resolve().name.lower() or "project"
    return _HEADER.format(
        project=_toml(project),
        ray=_toml(DEFAULT_RAY_VERSION),
        python=_toml(DEFAULT_PYTHON),
        registry=_toml(f"127.0.0.1:5000/{project}"),
    )


def workflow(version: str = __version__) -> str:
    """The GitHub workflow for a new project, pinned to the raybuild that wrote it."""
    environment = template_environment([BUNDLED_TEMPLATES / "init"], {})
    return environment.get_template("raybuild.yml.j2").render(raybuild_version=version)


def plan_example(directory: Path, name: str) -> InitPlan:
    """A project with one example app called ``name``."""
    module = name.replace("-", "_") + "_app"
    cls = "".join(part.capitalize() for part in name.replace("_", "-").split("-")) or "App"
    app = _app_table(
        {
            "name": name,
            "path": f"apps/{name}",
            "requirements": f"apps/{name}/requirements.in",
            "import_path": f"{module}:app",
            "route_prefix": f"/{name}",
        },
        [{"name": cls, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}],
    )
    files = {
        directory / CONFIG_NAME: _header(directory) + app,
        directory / "apps" / name / f"{module}.py": _APP.format(cls=cls, name=name),
        directory / "apps" / name / "requirements.in": _REQUIREMENTS,
        directory / WORKFLOW: workflow(),
    }
    return InitPlan(directory, files)


def plan_adoption(directory: Path, adoption: Adoption) -> InitPlan:
    """A project with one app per application of the Serve config that ``adoption`` read."""
    root = directory.resolve()
    files: dict[Path, str] = {}
    tables: list[str] = []
    for app in adoption.apps:
        if app.code_dir is None:
            code = f"apps/{app.name}"
        elif app.code_dir.is_relative_to(root):
            code = app.code_dir.relative_to(root).as_posix() or "."
        else:
            raise UsageError(
                f"app {app.name!r}: its working_dir {app.code_dir} lies outside {directory}",
                hint="run init in a folder that contains the app's code, or move the code into it",
            )
        requirements = f"{code}/requirements.in" if code != "." else f"{app.name}.requirements.in"
        files[directory / requirements] = (
            f"# From the runtime_env of Serve application {app.name!r} in {adoption.source.name}.\n"
            + _REQUIREMENTS
            + "".join(f"{line}\n" for line in app.requirements)
        )
        fields = {
            "name": app.name,
            "path": code,
            "requirements": requirements,
            "device": app.device if app.device != "cpu" else None,
            "import_path": app.import_path,
            "route_prefix": app.route_prefix,
            "env": app.env,
        }
        tables.append(_app_table(fields, list(app.deployments)))
    files[directory / CONFIG_NAME] = _header(directory) + "".join(tables)
    files[directory / WORKFLOW] = workflow()
    return InitPlan(directory, dict(sorted(files.items())), adoption.notes)


def write(plan: InitPlan, *, force: bool = False) -> list[Path]:
    """Validate the plan, then write it; nothing is written when a file would be replaced without force."""
    if plan.directory.exists() and not plan.directory.is_dir():
        raise UsageError(
            f"{plan.directory} exists and is not a folder", hint="choose a folder for the project"
        )
    if plan.config_path.exists():
        raise UsageError(f"{plan.config_path} already exists", hint="choose an empty directory")
    collisions = plan.collisions()
    if collisions and not force:
        raise UsageError(
            f"init would overwrite {len(collisions)} existing file(s): " + ", ".join(map(str, collisions)),
            hint="nothing was written; move them away, or pass --force to replace them",
        )
    # Validate before writing anything, so that a bad name fails here (not at the first `raybuild lock`) and
    # leaves no half-made project behind.
    try:
        data = tomllib.loads(plan.files[plan.config_path])
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"the planned {CONFIG_NAME} is not valid TOML: {exc}") from exc
    parse_config(data, plan.config_path)
    for path, text in plan.files.items():
        atomic_write(path, text)
    load_config(plan.config_path)
    return list(plan.files)
