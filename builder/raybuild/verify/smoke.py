"""`raybuild test APP`: start an image the way KubeRay does and check that it serves.

The head runs KubeRay's own command line, is probed with KubeRay's own exec probes (wget inside the
container), gets the app's Serve config through the dashboard REST API as KubeRay sends it, and must
answer HTTP 200 on the app's route. The container carries raybuild's labels and is always removed.

A GPU app runs in CPU mode by default (its CUDA libraries must resolve and it must import; num_gpus is 0).
With ``gpu=True`` the head gets GPUs through Docker's device request and `--num-gpus`, as KubeRay gives a
pod's nvidia.com/gpu limit to `ray start`; Ray must report them, and the app deploys with its real num_gpus.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from raybuild import kuberay, platforms
from raybuild.config_apps import App
from raybuild.dashboard import RAY_DASHBOARD, Dashboard
from raybuild.engine import Engine
from raybuild.errors import SmokeTestError
from raybuild.kuberay import DASHBOARD_PORT, SERVE_PORT, NodeSpec, required_cpus, required_gpus
from raybuild.labels import object_labels
from raybuild.loopback import wait_until
from raybuild.progress import Progress, silent
from raybuild.templating import BUNDLED_TEMPLATES


def serve_application(
    app: App, cpu_mode: bool = False, label_selector: dict[str, str] | None = None
) -> dict[str, Any]:
    """The app's entry of the rendered serveConfigV2, for a node that is not one of its worker group.

    The node-label pinning is replaced by ``label_selector`` (none by default: a single-node test has no
    worker groups), and ``cpu_mode`` zeroes num_gpus for a GPU app on a machine without a GPU.
    """
    from raybuild.manifest.render import serve_application as rendered

    # One node cannot hold replicas spread over nodes: the app as written, without `ha`'s spread.
    application = rendered(app.model_copy(update={"ha": False}))
    for deployment in application["deployments"]:
        actor = deployment["ray_actor_options"]
        actor.pop("label_selector", None)
        if label_selector:
            actor["label_selector"] = dict(label_selector)
        if cpu_mode and "num_gpus" in actor:
            actor["num_gpus"] = 0.0
        if not actor:
            del deployment["ray_actor_options"]
    return application


# Under qemu a head starts several times slower, and Ray gives its GCS 20 one-second tries to answer
# (ray_constants.NUM_REDIS_GET_RETRIES): on a loaded 2-core machine an emulated `ray start --head` failed
# with "Failed to start GCS" at that limit. An emulated head gets 120, Ray's own budget for a slow GCS.
EMULATED_HEAD_ENV = {"RAY_NUM_REDIS_GET_RETRIES": "120"}


# Ray waits a fixed 30 s for the raylet to register with the GCS (ray._private.node, not configurable):
# under qemu on a loaded 2-core machine a head sometimes misses it and exits ("The current node timed out
# during startup"). An emulated head that exits during start-up is started again, at most this many times;
# a native one that exits fails at once.
EMULATED_HEAD_ATTEMPTS = 3


class HeadExited(SmokeTestError):
    """The head's container stopped before KubeRay's probes passed."""


def _probed(engine: Engine, container: str, app: App) -> bool:
    """KubeRay's probes pass; a head that exited fails at once rather than at the (long) timeout."""
    if kuberay.probe(engine, container):
        return True
    state = engine.container_state(container)
    if state is not None and not state.get("Running", True):
        raise HeadExited(
            f"app {app.name!r}: the head exited before it passed KubeRay's probes; "
            f"last logs: {engine.logs(container, 5)!r}",
            hint="run `raybuild --debug test`",
        )
    return False


def _ready_head(
    stack: contextlib.ExitStack[bool | None],
    engine: Engine,
    spec: Callable[[], NodeSpec],
    app: App,
    timeout: float,
    progress: Progress,
) -> tuple[str, float]:
    """Start a head (its removal registered on ``stack``) and wait for KubeRay's probes: (name, seconds)."""
    first = spec()
    attempts = 1 if first.platform is None else EMULATED_HEAD_ATTEMPTS
    for attempt in range(1, attempts + 1):
        node = first if attempt == 1 else spec()
        with contextlib.ExitStack() as this_try:
            container = this_try.enter_context(kuberay.running(engine, node)).name
            started = time.monotonic()
            progress(f"{app.name}: waiting for KubeRay's probes in {container}")
            try:
                ready = wait_until(partial(_probed, engine, container, app), timeout)
            except HeadExited:
                if attempt == attempts:
                    raise
                progress(f"{app.name}: the emulated head exited during start-up; starting it again")
                continue
            if not ready:
                raise SmokeTestError(
                    f"app {app.name!r}: head never passed KubeRay's probes within {timeout:.0f}s; "
                    f"last logs: {engine.logs(container, 5)!r}",
                    hint="run `raybuild --debug test`",
                )
            stack.enter_context(this_try.pop_all())  # the caller's stack now removes the head
            return container, time.monotonic() - started
    raise AssertionError("attempts is at least 1")


@dataclass(frozen=True)
class SmokeResult:
    app: str
    image: str
    gpu: bool
    t_head: float
    t_serve: float
    status: int
    body: str
    gpus: float = 0.0  # GPUs Ray reported on the head (GPU mode only)
    platform: str = platforms.DEFAULT
    # Under emulation the times say how slow qemu is, not how fast a node starts: reported, never measured.
    emulated: bool = False

    def to_dict(self) -> dict[str, object]:
        data = self.__dict__.copy()
        if self.platform == platforms.DEFAULT and not self.emulated:
            del data["platform"], data["emulated"]  # a linux/amd64 test reports what it always did
        return data


def head_spec(
    image: str, num_cpus: int, project: str, gpus: int = 0, platform: str = platforms.DEFAULT
) -> NodeSpec:
    """A single-node cluster's head, as KubeRay starts it, with ``gpus`` GPUs; its dashboard published.

    ``project``: the id of the checkout that runs the test (state.project_id), for the container's labels.
    """
    return NodeSpec(
        name=f"raybuild-smoke-{uuid.uuid4().hex[:8]}",
        image=image,
        command=kuberay.head_command(num_cpus, num_gpus=gpus),
        labels=object_labels(project, "smoke"),
        publish={DASHBOARD_PORT: 0},
        gpus=gpus,
        platform=None if platforms.native(platform) else platform,
        env={} if platforms.native(platform) else EMULATED_HEAD_ENV,
    )


def smoke_test(
    app: App,
    image: str,
    engine: Engine,
    *,
    project: str,
    gpu: bool = False,
    timeout: float = 180.0,
    progress: Progress = silent,
    log_path: Path | None = None,
    platform: str = platforms.DEFAULT,
    dashboard_api: Dashboard = RAY_DASHBOARD,
) -> SmokeResult:
    """Start ``image`` as KubeRay would, deploy the app, and wait for HTTP 200 on its route.

    ``image`` is ``platform``'s: another platform than this machine's runs under emulation, and
    ``timeout`` (meant for native speed) is stretched for it (platforms.timeout_for).

    A deploy that Serve reports as failed stops the wait at once: the error names the app's exception,
    and ``log_path`` (when given) keeps Serve's whole message and the replica's log.
    """
    cpu_mode = app.device == "gpu" and not gpu
    num_gpus = required_gpus(app) if gpu else 0
    ray_gpus = 0.0
    timeout = platforms.timeout_for(platform, timeout)
    with contextlib.ExitStack() as stack:
        spec = partial(head_spec, image, required_cpus(app), project, num_gpus, platform)
        container, t_head = _ready_head(stack, engine, spec, app, timeout, progress)
        dashboard = f"http://127.0.0.1:{engine.published_port(container, DASHBOARD_PORT)}"
        if app.device == "gpu":
            check_cuda_libraries(engine, container, app)
        if gpu:
            ray_gpus = check_gpu_resources(engine, container, app, num_gpus)
            progress(f"{app.name}: Ray reports {ray_gpus:g} GPU(s) on the head")
        progress(f"{app.name}: head ready in {t_head:.1f}s; deploying Serve config through the dashboard")
        body = {"applications": [serve_application(app, cpu_mode=cpu_mode)]}
        deploy_started = time.monotonic()
        # The dashboard starts Serve's controller before it answers: 60 s natively, more under emulation.
        deploy_timeout = platforms.timeout_for(platform, 60)
        if platforms.native(platform):
            kuberay.deploy(
                dashboard, body, SmokeTestError, f"app {app.name!r}: ", deploy_timeout, api=dashboard_api
            )
        else:
            deploy_emulated(engine, container, body, app, deploy_timeout)
        route = app.route_prefix.rstrip("/") + "/"
        fetch = f"wget -q -S -O- http://localhost:{SERVE_PORT}{route} 2>&1"
        last: list[str] = [""]

        def answered() -> bool:
            result = engine.exec(container, ["bash", "-c", fetch], timeout=10)
            last[0] = result.output
            return result.returncode == 0 and " 200 " in result.output

        outcome = kuberay.wait_for_serve(
            dashboard, [app.name], answered, timeout, interval=0.5, api=dashboard_api
        )
        if outcome.failure is not None:
            log = log_path and kuberay.save_failure_log(engine, [container], outcome.failure, log_path)
            raise kuberay.deploy_error(SmokeTestError, app, outcome.failure, log)
        if not outcome.answered:
            raise SmokeTestError(
                f"app {app.name!r}: no HTTP 200 on {route} within {timeout:.0f}s: "
                f"{kuberay.app_status(dashboard, app.name, dashboard_api)}"
            )
        t_serve = time.monotonic() - deploy_started
        payload = last[0].strip().splitlines()[-1] if last[0].strip() else ""
        return SmokeResult(
            app.name,
            image,
            gpu,
            round(t_head, 2),
            round(t_serve, 2),
            200,
            payload,
            ray_gpus,
            platform,
            not platforms.native(platform),
        )


EMULATED_DEPLOY = BUNDLED_TEMPLATES / "probe" / "emulated_deploy.py"
_DEPLOYED = "@@raybuild-emulated-deploy "


def deploy_emulated(engine: Engine, container: str, body: dict[str, Any], app: App, timeout: float) -> None:
    """The dashboard's deploy, sent by a driver inside an emulated head (see probe/emulated_deploy.py:
    under qemu-user, Ray's drivers cannot find the local raylet, the dashboard's included)."""
    script = EMULATED_DEPLOY.read_text(encoding="utf-8")
    result = engine.exec(container, ["python", "-c", script, json.dumps(body)], timeout=timeout)
    said = next((ln[len(_DEPLOYED) :] for ln in result.output.splitlines() if ln.startswith(_DEPLOYED)), None)
    if said != "ok":
        reason = said or (result.output.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise SmokeTestError(f"app {app.name!r}: Serve deploy under emulation failed: {reason[:300]}")


# Libraries that the node provides, not the image, so a missing one is not an error here:
# - the driver's libcuda and libnvidia-ml, injected by the NVIDIA container runtime on a GPU node (some
#   wheels link the unversioned libcuda.so, which the runtime does not always provide, and dlopen it);
# - the interconnect stack (rdma-core's ibverbs, mlx5 and rdmacm, UCX, libfabric, PMIx, MPI, OpenSHMEM):
#   only the plugins that NVSHMEM and cuFile dlopen for multi-node transports link them, and only a
#   cluster configured for those transports loads them. torch's CUDA build ships all of these plugins.
NODE_PROVIDED_LIBS = (
    r"libcuda\.so|libnvidia-ml\.so|libibverbs\.so|libmlx5\.so|librdmacm\.so|libuc[mpst]\.so|"
    r"libfabric\.so|libpmix\.so|libmpi\.so|liboshmem\.so"
)
# Checked inside the image: every shared library of the app's packages resolves, except those above.
_LDD_CHECK = rf"""
set -o pipefail
missing=$(find /opt/app/site-packages -name '*.so*' -type f 2>/dev/null | while read -r lib; do
  ldd "$lib" 2>/dev/null | grep 'not found' | grep -v -E '{NODE_PROVIDED_LIBS}' | sed "s|^|$lib: |"
done)
if [ -n "$missing" ]; then echo "$missing"; exit 1; fi
"""


def check_cuda_libraries(engine: Engine, container: str, app: App) -> None:
    result = engine.exec(container, ["bash", "-c", _LDD_CHECK], timeout=60)
    if result.returncode != 0:
        raise SmokeTestError(f"app {app.name!r}: unresolved shared libraries: {result.output.strip()[:300]}")
    module = app.import_path.split(":", 1)[0]
    imported = engine.exec(container, ["python", "-c", f"import {module}"], timeout=60)
    if imported.returncode != 0:
        raise SmokeTestError(f"app {app.name!r}: `import {module}` failed: {imported.output.strip()[-300:]}")


_RESOURCES_MARKER = "raybuild-cluster-resources="
# Run inside the head as a Ray driver: what the cluster offers is what Serve's scheduler sees.
_RESOURCES_SCRIPT = (
    "import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
    f"print({_RESOURCES_MARKER!r} + json.dumps(ray.cluster_resources()))"
)


def parse_cluster_resources(output: str) -> dict[str, float] | None:
    for line in output.splitlines():
        if line.startswith(_RESOURCES_MARKER):
            data = json.loads(line[len(_RESOURCES_MARKER) :])
            return {str(k): float(v) for k, v in data.items()}
    return None


def check_gpu_resources(engine: Engine, container: str, app: App, expected: int) -> float:
    """The GPUs Ray reports in ``ray.cluster_resources()``; an error when fewer than the head was given."""
    result = engine.exec(container, ["python", "-c", _RESOURCES_SCRIPT], timeout=120)
    resources = parse_cluster_resources(result.output) if result.returncode == 0 else None
    if resources is None:
        raise SmokeTestError(
            f"app {app.name!r}: cannot read ray.cluster_resources() on the head: "
            f"{result.output.strip()[-300:]}"
        )
    found = resources.get("GPU", 0.0)
    if found < expected:
        raise SmokeTestError(
            f"app {app.name!r}: Ray reports {found:g} GPUs, the head was given {expected}",
            hint="check `nvidia-smi` inside the container: the NVIDIA runtime must inject the driver",
        )
    return found
