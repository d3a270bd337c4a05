"""The docker CLI for integration tests that look at the daemon the way a user would (docker images, cp,
create): through the engine's runner, outside the package's Docker verbs on purpose."""

from __future__ import annotations

from typing import Any

from raybuild.engine import Engine
from raybuild.runner import Result


def docker(engine: Engine, *args: str, **kwargs: Any) -> Result:
    """`docker ARGS` against ``engine``'s daemon, with the runner's options (check, timeout, ...)."""
    return engine.runner.run([engine.docker.path, *args], **kwargs)
