"""`raybuild init`: a new project with one example app."""

from __future__ import annotations

from pathlib import Path

from raybuild.config import CONFIG_NAME, DEFAULT_PYTHON, DEFAULT_RAY_VERSION
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
        directory / CONFIG_NAME: _CONFIG.format(project=directory.resolve().name.lower() or "project",
                                                ray=DEFAULT_RAY_VERSION, python=DEFAULT_PYTHON, name=name,
                                                module=module, cls=cls),
        directory / "apps" / name / f"{module}.py": _APP.format(cls=cls, name=name),
        directory / "apps" / name / "requirements.in": "# The app's own dependencies; Ray is added by raybuild.\n",
    }
    for path, text in files.items():
        atomic_write(path, text)
    # Validate what was written, so a bad --name fails here and not at the first `raybuild lock`.
    from raybuild.config import load_config

    load_config(directory / CONFIG_NAME)
    return list(files)
