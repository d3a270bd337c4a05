"""`raybuild init`: a new project with one example app."""

from __future__ import annotations

import tomllib
from pathlib import Path

from raybuild.config import CONFIG_NAME, DEFAULT_PYTHON, DEFAULT_RAY_VERSION, load_config, parse_config
from raybuild.errors import UsageError
from raybuild.fsutil import atomic_write

_CONFIG = """\
# raybuild project config. See the raybuild README for every key.

[project]
name = "{project}"
ray_version = "{ray}"
python = "{python}"
registry = "127.0.0.1:5000/{project}"

[[apps]]
name = "{name}"
path = "apps/{name}"
requirements = "apps/{name}/requirements.in"
import_path = "{module}:app"
route_prefix = "/{name}"

[[apps.deployments]]
name = "{cls}"
num_replicas = 1
ray_actor_options = {{ num_cpus = 0.5 }}
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


def init_project(directory: Path, name: str) -> list[Path]:
    if (directory / CONFIG_NAME).exists():
        raise UsageError(f"{directory / CONFIG_NAME} already exists", hint="choose an empty directory")
    module = name.replace("-", "_") + "_app"
    cls = "".join(part.capitalize() for part in name.replace("_", "-").split("-")) or "App"
    files = {
        directory / CONFIG_NAME: _CONFIG.format(
            project=directory.resolve().name.lower() or "project",
            ray=DEFAULT_RAY_VERSION,
            python=DEFAULT_PYTHON,
            name=name,
            module=module,
            cls=cls,
        ),
        directory / "apps" / name / f"{module}.py": _APP.format(cls=cls, name=name),
        directory / "apps" / name / "requirements.in": (
            "# The app's own dependencies; Ray is added by raybuild.\n"
        ),
    }
    # Validate before writing anything, so a bad --name fails here (not at the first `raybuild lock`) and
    # leaves no half-made project behind.
    config_path = directory / CONFIG_NAME
    try:
        data = tomllib.loads(files[config_path])
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--name {name!r} cannot be written into {CONFIG_NAME}: {exc}") from exc
    parse_config(data, config_path)
    for path, text in files.items():
        atomic_write(path, text)
    load_config(config_path)
    return list(files)
