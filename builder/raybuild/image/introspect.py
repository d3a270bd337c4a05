"""What a built image's Serve app really is: imported in the image, the way `serve build` imports it.

The probe (``templates/probe/serve_app.py``) runs in a throwaway container with no network, fed on stdin,
so it needs nothing in the image but Ray. It either lists the deployments Serve built, with the options the
code sets, or names the exception that stopped the import: its type, message, file and line. `raybuild
build` runs it on every new app image, so a broken app fails the build, not a smoke test minutes later.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from raybuild.config import App
from raybuild.engine import Engine
from raybuild.errors import BuildError
from raybuild.image.spec import CODE_DIR
from raybuild.labels import object_labels
from raybuild.templating import BUNDLED_TEMPLATES

PROBE = BUNDLED_TEMPLATES / "probe" / "serve_app.py"
MARK = "@@raybuild-serve-app "
# Importing ray.serve takes a few seconds; an app that imports heavy libraries (torch) takes longer.
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServeApp:
    """The deployments of an app as Serve built them: name and user-set options, in Serve's schema."""

    import_path: str
    deployments: tuple[dict[str, Any], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(str(d["name"]) for d in self.deployments)

    def as_config(self) -> tuple[dict[str, Any], ...]:
        """The deployments as raybuild.toml's [[apps.deployments]] tables would list them.

        Only what raybuild renders is kept: the rendered serveConfigV2 overrides the code's options with
        these, and its ray_actor_options replace the code's whole dict (to add the label selector), so the
        resources raybuild models are carried over from the code.
        """
        tables = []
        for deployment in self.deployments:
            table: dict[str, Any] = {"name": deployment["name"]}
            replicas = deployment.get("num_replicas")
            if isinstance(replicas, int) and not isinstance(replicas, bool):
                table["num_replicas"] = replicas
            options = deployment.get("ray_actor_options") or {}
            actor = {k: options[k] for k in ("num_cpus", "num_gpus", "memory") if options.get(k) is not None}
            if actor:
                table["ray_actor_options"] = actor
            tables.append(table)
        return tuple(tables)

    def dropped_options(self) -> list[str]:
        """Actor options set in the code that the rendered config cannot carry, one line each."""
        return [
            f"deployment {d['name']!r}: ray_actor_options.{key} set in the code is not rendered; "
            "list the deployment in raybuild.toml if it matters"
            for d in self.deployments
            for key in sorted(set(d.get("ray_actor_options") or {}) - {"num_cpus", "num_gpus", "memory"})
        ]

    def check_listed(self, app: App) -> None:
        """Every deployment raybuild.toml lists must exist in the code."""
        missing = [d.name for d in app.deployments if d.name not in self.names]
        if missing:
            raise BuildError(
                f"app {app.name!r}: raybuild.toml lists deployment(s) {', '.join(map(repr, missing))}, "
                f"but {app.import_path} defines {', '.join(map(repr, self.names)) or 'none'}",
                hint="fix the names under [[apps.deployments]], or drop the tables to use the code's",
            )


def parse_report(app: App, output: str) -> ServeApp:
    """The probe's report; a BuildError naming the exception when the app did not import and build."""
    line = next((x for x in reversed(output.splitlines()) if x.startswith(MARK)), None)
    if line is None:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise BuildError(
            f"app {app.name!r}: the import check printed no report: {tail[:300]}",
            output_tail=output[-2000:],
            hint="run `raybuild --debug build` to see the container's output",
        )
    report = json.loads(line[len(MARK) :])
    if report.get("ok"):
        return ServeApp(app.import_path, tuple(report["deployments"]))
    where = ""
    if report.get("file"):
        name = report["file"]
        if name.startswith(CODE_DIR + "/"):
            name = str(PurePosixPath(name).relative_to(CODE_DIR))
        where = f" ({name}, line {report['line']})" if report.get("line") else f" ({name})"
    message = str(report.get("message", "")).strip().splitlines()
    raise BuildError(
        f"app {app.name!r}: {app.import_path} does not import as a Serve app: "
        f"{report.get('type')}: {message[0] if message else ''}{where}",
        hint=f"fix the app under {app.path}, then rerun `raybuild build {app.name}`",
    )


def introspect(engine: Engine, image: str, app: App, project: str) -> ServeApp:
    """Import ``app`` inside ``image`` with Serve's build machinery; its deployments, or a BuildError.

    ``project`` (state.project_id) labels the container. `--rm` removes it when it ends by itself; when
    raybuild stops waiting first (the deadline, Ctrl-C, SIGTERM), the ``finally`` removes it by name and
    labels, since killing the docker client does not stop the container.
    """
    name = f"raybuild-introspect-{uuid.uuid4().hex[:8]}"
    labels = object_labels(project, "introspect")
    command = [
        "run",
        "--rm",
        "-i",
        "--name",
        name,
        *(arg for key, value in sorted(labels.items()) for arg in ("--label", f"{key}={value}")),
        "--network",
        "none",
        "--entrypoint",
        "python",
        image,
        "-",
        app.import_path,
        CODE_DIR,
    ]
    try:
        result = engine.docker_cmd(
            *command,
            stdin=PROBE.read_bytes(),
            check=False,
            timeout=TIMEOUT_S,
            what=f"import check of app {app.name!r}",
        )
    finally:
        engine.release(labels, name=name)
    return parse_report(app, result.output)
