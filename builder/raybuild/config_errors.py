"""Pydantic's validation errors as raybuild says them: one line naming the file, the key and the problem."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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
