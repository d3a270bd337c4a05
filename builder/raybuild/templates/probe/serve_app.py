"""Run inside an app image by raybuild: import the Serve app the way `serve build` does, and report.

Usage: python - IMPORT_PATH CODE_DIR < this file. Prints one line, the marker and a JSON object: the
deployments Serve built (their options as Serve's own schema dumps them, user-set options only), or the
exception that stopped the import with its type, message, and the file and line in the app's code.
"""

import importlib
import json
import sys
import traceback
from typing import Any

MARK = "@@raybuild-serve-app "


def _where(exc: BaseException, code_dir: str) -> tuple[str | None, int | None]:
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    frames = traceback.extract_tb(exc.__traceback__)
    in_app = [f for f in frames if f.filename.startswith(code_dir)]
    chosen = in_app or list(frames)
    return (chosen[-1].filename, chosen[-1].lineno) if chosen else (None, None)


def main(import_path: str, code_dir: str) -> None:
    sys.path.insert(0, code_dir)
    try:
        # The app's own module first, so that its errors (syntax, missing modules) are what gets reported.
        module_name, _, attr = import_path.partition(":")
        app: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            app = getattr(app, part)

        from ray.serve._private.build_app import build_app
        from ray.serve.deployment import Application, deployment_to_schema

        if not isinstance(app, Application):
            raise TypeError(
                f"{import_path} is a {type(app).__name__}, not a Serve application (bind the deployment)"
            )
        built = build_app(app, name="raybuild")
        deployments = [
            deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments
        ]
        report: dict[str, Any] = {"ok": True, "deployments": deployments}
    except BaseException as exc:  # every failure is reported; none may kill the probe silently
        path, line = _where(exc, code_dir)
        report = {"ok": False, "type": type(exc).__name__, "message": str(exc), "file": path, "line": line}
    print(MARK + json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
