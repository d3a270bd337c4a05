"""What raybuild.toml is checked for beyond its schema, and how a problem is said: one line naming the file,
the key and what is allowed. Pydantic's validation errors are turned into such lines here, and the paths the
config names are checked here: inside the project, and a folder or a file as the key wants.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from raybuild.errors import ConfigError

if TYPE_CHECKING:
    from raybuild.config import RaybuildConfig


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed at the table that holds ``loc``'s last key."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        current = nested[0]
    return sorted(current.model_fields)


def describe_error(error: Any, model: type[BaseModel], source: str) -> str:
    """The first validation error of ``source`` as one line: the key, the problem, what was found."""
    loc = tuple(error["loc"])
    key = _format_loc(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        where = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"{source}: unknown key '{key}'{where}"
    if kind == "missing":
        return f"{source}: missing required key '{key}'"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    got = error.get("input")
    if kind.endswith("_type") or kind in ("literal_error", "enum"):
        shown = repr(got)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    where = f" key '{key}':" if key else ""
    return f"{source}:{where} {message}"


def _leaves_the_project(relative: str) -> bool:
    """A path from raybuild.toml that is absolute or climbs out of the project's folder (``../..``)."""
    normal = os.path.normpath(relative)
    return PurePosixPath(relative).is_absolute() or normal == ".." or normal.startswith("../")


def check_paths(config: RaybuildConfig, path: Path, root: Path) -> None:
    """Every path raybuild.toml names lies inside the project and is what it should be (file or folder)."""
    for index, app in enumerate(config.apps):
        for key, value in (("path", app.path), ("requirements", app.requirements)):
            if _leaves_the_project(value):
                raise ConfigError(
                    f"{path.name}: key 'apps[{index}].{key}': {value!r} lies outside the project",
                    hint="app code and requirements must live under the folder that holds raybuild.toml "
                    "(it is copied into the image)",
                )
        folder = root / app.path
        if not folder.is_dir():
            exists = folder.exists()
            raise ConfigError(
                f"{path.name}: key 'apps[{index}].path': app {app.name!r} directory {app.path!r} "
                + ("is a file, not a folder" if exists else "does not exist"),
                hint="point it at the folder that holds the app's code (relative to raybuild.toml)"
                if exists
                else "create it or fix the path (relative to raybuild.toml)",
            )
        requirements = root / app.requirements
        if not requirements.is_file():
            folder_given = requirements.is_dir()
            raise ConfigError(
                f"{path.name}: key 'apps[{index}].requirements': app {app.name!r} requirements file "
                f"{app.requirements!r} " + ("is a folder, not a file" if folder_given else "does not exist"),
                hint="name the file itself, such as apps/NAME/requirements.in"
                if folder_given
                else "create it (it may be empty) or fix the path",
            )
    lock_dir = root / config.project.lock_dir
    if lock_dir.exists() and not lock_dir.is_dir():
        raise ConfigError(
            f"{path.name}: key 'project.lock_dir': {config.project.lock_dir!r} is a file, not a folder",
            hint="point lock_dir at a folder (raybuild creates it), or move the file away",
        )
