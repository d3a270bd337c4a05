"""Progress on long steps: a callable that takes one line of text.

The library reports through it and never prints; the CLI passes a function that writes to stderr, so that
``--json`` output on stdout stays clean. ``silent`` is the default wherever nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def silent(message: str) -> None:
    """A Progress that drops every line."""
