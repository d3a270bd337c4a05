"""What a built image's Serve app really is: imported in the image, the way `serve build` imports it.

The probe (``templates/probe/serve_app.py``) runs in a throwaway container with no network, fed on stdin,
so it needs nothing in the image but Ray. It either lists the deployments Serve built, with the options the
code sets, or names the exception that stopped the import: its type, message, file and line. `raybuild
build` runs it on every new app image, so a broken app fails the build, not a smoke test minutes later.

What the import check cannot see (an exception in a deployment's constructor) Serve reports later, as a
traceback in the application's status. ``AppException`` reads both the probe's report and such a traceback,
so a broken app is described the same way at build time, in `raybuild test`, `up` and `measure`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.errors import BuildError
from raybuild.image.spec import CODE_DIR
from raybuild.labels import object_labels
from raybuild.templating import BUNDLED_TEMPLATES

PROBE = BUNDLED_TEMPLATES / "probe" / "serve_app.py"
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)(?:, in (.+))?$')
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:\([\w.]+\))?)(?:: (.*))?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARK = "@@raybuild-serve-app "
# Importing ray.serve takes a few seconds; an app that imports heavy libraries (torch) takes longer.
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class AppException:
    """The exception that stopped an app: its type, message, and the app's own frame (deepest first)."""

    type: str
    message: str
    file: str | None = None  # relative to the code folder when it is the app's own file
    line: int | None = None
    function: str | None = None

    def describe(self) -> str:
        """``Type: first line of the message (file, line N, in function)``."""
        first = self.message.strip().splitlines()
        where = ""
        if self.file:
            at = f", line {self.line}" if self.line else ""
            within = f", in {self.function}" if self.function and self.function != "<module>" else ""
            where = f" ({self.file}{at}{within})"
        return f"{self.type}: {first[0] if first else ''}{where}"

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> AppException:
        """From the probe's report of a failed import."""
        line = report.get("line")
        return cls(
            str(report.get("type")),
            str(report.get("message", "")),
            _in_code(report.get("file")),
            line if isinstance(line, int) else None,
        )

    @classmethod
    def from_traceback(cls, text: str) -> AppException | None:
        """From a Python traceback as Serve puts it in a status message; None when there is none.

        Serve wraps the app's exception (RayTaskError, "RuntimeError: Traceback ..."): the exception is the
        unindented line after the last frame, and the app's frame the deepest one under the code folder.
        """
        lines = _ANSI.sub("", text).splitlines()
        frames = [(index, match) for index, line in enumerate(lines) if (match := _FRAME.match(line))]
        if not frames:
            return None
        exception = next((ln for ln in lines[frames[-1][0] + 1 :] if ln and not ln[0].isspace()), None)
        parsed = _EXCEPTION_LINE.match(exception) if exception else None
        if parsed is None:
            return None
        own = [match for _, match in frames if match.group(1).startswith(CODE_DIR + "/")]
        if not own:
            return cls(parsed.group(1), parsed.group(2) or "")
        frame = own[-1]
        return cls(parsed.group(1), parsed.group(2) or "", _in_code(frame.group(1)), int(frame.group(2)),
                   frame.group(3))  # fmt: skip


def _in_code(name: object) -> str | None:
    """A file path from the image, relative to the app's code folder when it lies there."""
    if not isinstance(name, str) or not name:
        return None
    if name.startswith(CODE_DIR + "/"):
        return str(PurePosixPath(name).relative_to(CODE_DIR))
    return name


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
    raise BuildError(
        f"app {app.name!r}: {app.import_path} does not import as a Serve app: "
        f"{AppException.from_report(report).describe()}",
        hint=f"fix the app under {app.path}, then rerun `raybuild build {app.name}`",
    )


def introspect(engine: Engine, image: str, app: App, project: str) -> ServeApp:
    """Import ``app`` inside ``image`` with Serve's build machinery; its deployments, or a BuildError.

    ``project`` (state.project_id) labels the throwaway container (see ``Engine.run_python``).
    """
    result = engine.run_python(
        image,
        PROBE.read_bytes(),
        [app.import_path, CODE_DIR],
        labels=object_labels(project, "introspect"),
        timeout=TIMEOUT_S,
        what=f"import check of app {app.name!r}",
        check=False,
    )
    return parse_report(app, result.output)
