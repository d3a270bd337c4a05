"""What Ray 2.60's Serve put in an application's status when a deploy failed, as captured here by hand
(2026-11-30, a head from a raybuild image, `GET /api/serve/applications/`).

Two kinds: an exception in a deployment's constructor (the message is the deployment's, the app's own only
names the deployment), and an app that fails to import (the message is the application's).
"""

from __future__ import annotations

from typing import Any

CONSTRUCTOR_TRACEBACK = """\
The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or \
initial health check failing. See controller logs for details. Error:
\x1b[36mray::ServeReplica:broken:Broken.initialize_and_get_metadata()\x1b[39m (pid=616, ip=172.17.0.2, \
actor_id=7475f2155b4f0f6dcdedd7af01000000, repr=<ray.serve._private.replica.ServeReplica:broken:Broken \
object at 0x7f5831004f10>)
  File "/usr/lib/python3.11/concurrent/futures/_base.py", line 456, in result
    return self.__get_result()
           ^^^^^^^^^^^^^^^^^^^
  File "/opt/ray/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 1928, in initialize
    raise RuntimeError(traceback.format_exc()) from None
RuntimeError: Traceback (most recent call last):
  File "/opt/ray/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 4008, in \
_call_func_or_gen
    result = callable(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/ray/app/broken_app.py", line 11, in __init__
    self.model = load_model("/models/m.bin")
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/ray/app/broken_app.py", line 5, in load_model
    raise FileNotFoundError(f"model file {path} is missing")
FileNotFoundError: model file /models/m.bin is missing"""

IMPORT_TRACEBACK = """\
Deploying app 'imp' failed with exception:
Traceback (most recent call last):
  File "/opt/ray/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1053, in get_objects
    raise value.as_instanceof_cause()
ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::build_serve_application()\x1b[39m (pid=731, \
ip=172.17.0.2)
  File "/opt/ray/venv/lib/python3.11/site-packages/ray/serve/_private/application_state.py", line 1843, in \
build_serve_application
    raise RuntimeError(err_str) from None
RuntimeError: Traceback (most recent call last):
  File "/opt/ray/venv/lib/python3.11/site-packages/ray/_common/utils.py", line 90, in import_module_and_attr
    module = importlib.import_module(module_name)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed
  File "/home/ray/app/importfail_app.py", line 1, in <module>
    import not_a_module_anywhere
ModuleNotFoundError: No module named 'not_a_module_anywhere'
"""

REPLICA_LOG = "/serve/replica_demo_Demo_2w3pik4w.log"


def failed_status(app: str = "demo", *, constructor: bool = True) -> dict[str, Any]:
    """The body of GET /api/serve/applications/ with ``app`` in DEPLOY_FAILED (fields raybuild reads)."""
    if not constructor:
        return {"applications": {app: {"status": "DEPLOY_FAILED", "message": IMPORT_TRACEBACK}}}
    deployment = {
        "name": "Demo",
        "status": "DEPLOY_FAILED",
        "status_trigger": "REPLICA_STARTUP_FAILED",
        "message": CONSTRUCTOR_TRACEBACK,
        "recent_dead_replicas": [
            {"replica_id": "8dp7cl4w", "log_file_path": "/serve/replica_demo_Demo_8dp7cl4w.log"},
            {"replica_id": "2w3pik4w", "log_file_path": REPLICA_LOG},
        ],
    }
    return {
        "applications": {
            app: {
                "status": "DEPLOY_FAILED",
                "message": "Failed to update the deployments ['Demo'].",
                "deployments": {"Demo": deployment},
            }
        }
    }
