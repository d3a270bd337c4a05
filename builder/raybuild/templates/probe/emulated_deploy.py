"""Run inside a head container under qemu-user emulation by `raybuild test --platform`: deploy a Serve
config the way the dashboard's PUT /api/serve/applications/ does (serve_start, then deploy_apps).

Why not the dashboard: qemu-user's binfmt handler runs every emulated process as
``qemu-aarch64 PROGRAM ARGS``, so /proc/PID/cmdline starts with qemu's path. Ray's drivers find the local
raylet by the basename of cmdline[0] (ray._private.services._is_raylet_process), so every driver that
joins the running cluster, the dashboard's deploy handler included, fails with "Failed to connect to Ray
cluster" (checked with Ray 2.60 on arm64 under qemu 7.2). Here the check also looks at the program qemu
runs; nothing in the image changes, and on a real node of that architecture the dashboard does the deploy.

Usage: python -c "$(cat this file)" SERVE_CONFIG_JSON. Prints one line: the marker and "ok", or the error.
"""

import json
import os
import sys

MARK = "@@raybuild-emulated-deploy "


def main(config_json: str) -> None:
    import ray._private.services as services

    original = services._is_raylet_process

    def is_raylet(cmdline):  # type: ignore[no-untyped-def]
        emulated = bool(cmdline) and len(cmdline) > 1 and "raylet" in os.path.basename(cmdline[1])
        return original(cmdline) or emulated

    services._is_raylet_process = is_raylet
    try:
        import ray
        from ray.serve._private.api import serve_start
        from ray.serve.schema import ServeDeploySchema

        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
        config = ServeDeploySchema.model_validate(json.loads(config_json))
        client = serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=config.grpc_options.model_dump(),
            global_logging_config=config.logging_config,
        )
        client.deploy_apps(config)
        print(MARK + "ok", flush=True)
    except BaseException as exc:  # every failure is reported as the one line the caller reads
        print(MARK + f"{type(exc).__name__}: {exc}".replace("\n", " ")[:600], flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
