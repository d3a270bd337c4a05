"""A torch GPU app: raybuild's image against a reconstruction of the official way, layer by layer.

    sudo scripts/setup && .venv/bin/python benchmarks/gpu_torch.py [--keep-images] [--skip-naive]

It makes a throwaway project (benchmarks/work/gpu-torch) with one GPU app that serves from torch 2.9.1 built
for CUDA 12.8, then:
  (a) locks it with raybuild (`gpu_torch_backend = "cu128"`; where download.pytorch.org is unreachable,
      `"none"`, which takes PyPI's torch 2.9.1, the same CUDA 12.8 build without the +cu128 label), builds it,
      and smoke-tests it in CPU mode (no GPU here: the libraries must resolve and torch must import);
  (b) builds the naive comparison: the official rayproject/ray GPU images start FROM
      nvidia/cuda:12.x-cudnn-devel, which cannot be pulled here, so its CUDA toolkit is reconstructed from
      NVIDIA's pip wheels (nvcc, CCCL headers, runtime) on a Debian minbase with python3 and a venv, then
      `pip install` of the app's lockfile in one stage. That is a lower bound: the devel image also has
      static libraries, cuDNN and cuBLAS development files and tools that no wheel carries. The published
      figure for rayproject/ray GPU images is listed beside it, labelled as such;
  (c) measures every layer: its size, and its gzip size (level 6, what `docker push` sends), read by
      streaming `docker save`; and the download sizes of the torch wheels from PyPI's metadata, with
      PyPI's CPU-only builds of the same torch release for scale.
It writes benchmarks/results/gpu-torch-<date>.json and .md. It downloads about 4 GB of wheels per build.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import IO, Any

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.errors import LockError, RaybuildError
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.lock import resolve as locking
from raybuild.state import STATE_DIR, project_id
from raybuild.verify.smoke import smoke_test

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "gpu-torch"
RESULTS = HERE / "results"
TORCH = "torch==2.9.1"
NAIVE_BASE = "raybuild-bench/naive-gpu-base:bookworm"
NAIVE_REF = "raybuild-bench/torchgpu-naive:latest"
NAIVE_PACKAGES = ("python3", "python3-venv", "wget", "ca-certificates")
# The CUDA 12.8 toolkit as wheels: the compiler (with NVVM), the CCCL headers, the runtime and its headers.
DEVEL_WHEELS = (
    "nvidia-cuda-nvcc-cu12==12.8.93",
    "nvidia-cuda-cccl-cu12==12.8.90",
    "nvidia-cuda-runtime-cu12==12.8.90",
)
# (image, uncompressed bytes, compressed bytes or None): figures from elsewhere, labelled as such.
PUBLISHED: list[tuple[str, float, float | None]] = [
    (
        "rayproject/ray GPU (FROM nvidia/cuda:12.1.1-cudnn8-devel; README's figure, not measured here)",
        12e9,
        None,
    ),
]
CONFIG = """\
[project]
name = "gpu-torch-bench"
ray_version = "2.60.0"
python = "3.11"
registry = "127.0.0.1:5000/bench"
gpu_torch_backend = "{backend}"

[[apps]]
name = "torchgpu"
path = "apps/torchgpu"
requirements = "apps/torchgpu/requirements.in"
device = "gpu"
import_path = "torch_app:app"
route_prefix = "/torch"
workers = {{ replicas = 0, min_replicas = 0, max_replicas = 2, gpu = 1 }}
# Triton's JIT (torch.compile, Triton kernels) compiles against these headers on the GPU node at run time;
# the default "headers-and-static-libs" rule would remove them.
prune = {{ keep = ["triton/backends/nvidia/include"] }}

[[apps.deployments]]
name = "TorchInfo"
num_replicas = 1
ray_actor_options = {{ num_cpus = 0.5, num_gpus = 1 }}
"""
APP = '''\
"""Reports what torch sees, and multiplies two matrices on the GPU when there is one."""

from typing import Any

import torch
from ray import serve


@serve.deployment
class TorchInfo:
    def __call__(self) -> dict[str, Any]:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.ones(256, 256, device=device)
        return {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": device,
            "devices": torch.cuda.device_count(),
            "sum": float((x @ x).sum()),
        }


app = TorchInfo.bind()
'''
NAIVE_DOCKERFILE = """\
# A reconstruction of the official GPU image's approach (see benchmarks/gpu_torch.py): a CUDA toolkit first,
# then one venv with everything pip-installed, single stage. The CA bundle is a BuildKit secret only because
# pip cannot reach PyPI through this machine's TLS-intercepting proxy without it.
ARG BASE
FROM ${BASE}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY devel.txt /tmp/devel.txt
RUN --mount=type=secret,id=ca_bundle \\
    PIP_CERT=/run/secrets/ca_bundle pip install --no-cache-dir -r /tmp/devel.txt
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=secret,id=ca_bundle \\
    PIP_CERT=/run/secrets/ca_bundle pip install --no-cache-dir -r requirements.txt
COPY app/ .
ENV PYTHONPATH=/app
"""


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def make_project(backend: str) -> LoadedConfig:
    if WORK.exists():
        shutil.rmtree(WORK)
    app_dir = WORK / "apps" / "torchgpu"
    app_dir.mkdir(parents=True)
    (app_dir / "torch_app.py").write_text(APP)
    (app_dir / "requirements.in").write_text(f"{TORCH}\n")
    (WORK / "raybuild.toml").write_text(CONFIG.format(backend=backend))
    return load_config(WORK / "raybuild.toml")


def lock_project() -> tuple[LoadedConfig, str]:
    """Lock with the cu128 backend, or with PyPI's torch where the PyTorch index is out of reach."""
    config = make_project("cu128")
    try:
        locking.lock(config, config.apps, progress=lambda name: log(f"locking {name} (cu128 backend)"))
        return config, "torch 2.9.1+cu128 from download.pytorch.org (uv --torch-backend cu128)"
    except LockError as exc:
        if "PyTorch index" not in exc.message:
            raise
        log(f"{exc.message}; taking PyPI's torch 2.9.1 (its Linux x86_64 wheel is the CUDA 12.8 build)")
    config = make_project("none")
    locking.lock(config, config.apps, progress=lambda name: log(f"locking {name} (PyPI torch)"))
    return config, "torch 2.9.1 from PyPI: the CUDA 12.8 build (download.pytorch.org was unreachable)"


def ensure_naive_base(engine: Engine) -> None:
    if engine.image_exists(NAIVE_BASE):
        return
    log(f"bootstrapping {NAIVE_BASE} with mmdebstrap (minbase + {', '.join(NAIVE_PACKAGES)})")
    with tempfile.TemporaryDirectory(prefix="raybuild-bench-") as tmp:
        tarball = Path(tmp) / "base.tar"
        engine.runner.run(
            ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(NAIVE_PACKAGES), "bookworm",
             str(tarball), "http://deb.debian.org/debian"],
            what="mmdebstrap naive base",
        )  # fmt: skip
        engine.import_tarball(tarball, NAIVE_BASE)


def build_naive(engine: Engine, config: LoadedConfig, ca_bundle: Path | None) -> float:
    app = config.apps[0]
    context = WORK / STATE_DIR / "naive-context"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(
        config.app_dir(app), context / "app", ignore=shutil.ignore_patterns("__pycache__", "*.in")
    )
    shutil.copyfile(config.lockfile(app), context / "requirements.txt")
    (context / "devel.txt").write_text("".join(f"{wheel}\n" for wheel in DEVEL_WHEELS))
    (context / "Dockerfile").write_text(NAIVE_DOCKERFILE)
    started = time.monotonic()
    image_id = engine.build(
        context,
        context / "Dockerfile",
        iidfile=context / "iid",
        secrets={"ca_bundle": ca_bundle} if ca_bundle else None,
        build_args={"BASE": NAIVE_BASE},
        what="naive build",
        on_line=lambda line: log(line[:120]) if re.match(r"^#\d+ \[", line) else None,
    )
    engine.tag(image_id, NAIVE_REF)
    return time.monotonic() - started


def _gzip_size(stream: IO[bytes]) -> tuple[int, int]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip stream, as `docker push` writes
    raw = packed = 0
    while chunk := stream.read(1 << 20):
        raw += len(chunk)
        packed += len(compressor.compress(chunk))
    return raw, packed + len(compressor.flush())


def layer_sizes(engine: Engine, ref: str) -> dict[str, Any]:
    """Every layer of ``ref``: the instruction that made it, its size, and its gzip size."""
    proc = subprocess.Popen([engine.docker.path, "save", ref], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    sizes: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    manifest: list[dict[str, Any]] = []
    image_config: dict[str, Any] = {}
    configs: dict[str, bytes] = {}
    with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
        for member in archive:
            if member.name.endswith("/layer.tar") and member.issym():
                links[member.name] = os.path.normpath(
                    os.path.join(os.path.dirname(member.name), member.linkname)
                )
            elif member.name.endswith("/layer.tar") and member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                sizes[member.name] = _gzip_size(handle)
            elif member.name.endswith(".json") and member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                configs[member.name] = handle.read()
    if proc.wait() != 0:
        raise RaybuildError(f"docker save {ref} failed")
    manifest = json.loads(configs["manifest.json"])
    image_config = json.loads(configs[manifest[0]["Config"]])
    steps = [h.get("created_by", "") for h in image_config["history"] if not h.get("empty_layer")]
    layers = []
    for path, step in zip(manifest[0]["Layers"], steps, strict=True):
        size, compressed = sizes[links.get(path, path)]
        layers.append({"step": _short(step) or "(imported rootfs)", "size": size, "compressed": compressed})
    return {
        "ref": ref,
        "size": engine.inspect(ref)["Size"],
        "compressed": sum(layer["compressed"] for layer in layers),
        "layers": layers,
    }


def _short(step: str) -> str:
    step = re.sub(r"^/bin/sh -c (#\(nop\) )?", "", step).replace("|", "/")
    step = re.sub(r"--mount=\S+ ", "", step)
    return re.sub(r"\s+", " ", step).strip()[:110]


def wheel_sizes(lock_text: str) -> dict[str, Any]:
    """Download sizes (PyPI metadata) of the locked torch wheels, and PyPI's CPU-only builds of that torch."""
    pins = locking.parse_pins(lock_text)
    torch_version = pins["torch"].split("+")[0]
    wheels: dict[str, int] = {}
    cpu_only: dict[str, int] = {}
    for name in sorted(n for n in pins if n in ("torch", "triton") or n.startswith("nvidia-")):
        request = urllib.request.Request(
            f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        version = pins[name].split("+")[0]
        for entry in files:
            filename = entry["filename"]
            if f"-{version}-" not in filename or not filename.endswith(".whl"):
                continue
            if "x86_64" in filename and ("cp311" in filename or "-py3-none-" in filename):
                wheels.setdefault(name, entry["size"])
            elif (
                name == "torch" and "cp311" in filename and ("aarch64" in filename or "win_amd64" in filename)
            ):
                cpu_only[filename] = entry["size"]
    return {
        "torch_version": torch_version,
        "cuda_build": wheels,
        "cuda_build_total": sum(wheels.values()),
        "cpu_only_builds_on_pypi": cpu_only,
        "note": "the +cpu Linux x86_64 wheel is on download.pytorch.org only; where that is unreachable, "
        "PyPI's CPU-only builds of the same release (Linux aarch64, Windows) stand in for its size",
    }


def markdown(result: dict[str, Any]) -> str:
    mb = 1e6
    lines = [
        f"# torch GPU image: raybuild vs a reconstruction of the official approach ({result['date']})",
        "",
        f"torch: {result['torch_source']}. Lockfile header: `# CUDA: {result['cuda']}`.",
        "",
        "| image | size (MB) | compressed (MB) | layers |",
        "|---|---:|---:|---:|",
    ]
    for name, image in result["images"].items():
        size, compressed = image["size"] / mb, image["compressed"] / mb
        lines.append(f"| {name} | {size:,.0f} | {compressed:,.0f} | {len(image['layers'])} |")
    for name, published_size, published_compressed in PUBLISHED:
        packed = f"{published_compressed / mb:,.0f}" if published_compressed is not None else "n/a"
        lines.append(f"| {name} | ~{published_size / mb:,.0f} | {packed} | |")
    for name, image in result["images"].items():
        lines += ["", f"## {name}: layers", "", "| step | size (MB) | compressed (MB) |", "|---|---:|---:|"]
        lines += [
            f"| `{layer['step']}` | {layer['size'] / mb:,.1f} | {layer['compressed'] / mb:,.1f} |"
            for layer in image["layers"]
        ]
    wheels = result["wheels"]
    lines += [
        "",
        f"## Wheels to download for torch {wheels['torch_version']} (PyPI metadata)",
        "",
        f"- CUDA build (torch, triton and {len(wheels['cuda_build']) - 2} NVIDIA wheels): "
        f"{wheels['cuda_build_total'] / mb:,.0f} MB, "
        f"of which torch {wheels['cuda_build']['torch'] / mb:,.0f} MB",
    ]
    lines += [
        f"- CPU-only `{name}`: {size / mb:,.0f} MB"
        for name, size in wheels["cpu_only_builds_on_pypi"].items()
    ]
    lines += [f"- {wheels['note']}", ""]
    if result.get("smoke"):
        lines += [f"CPU-mode smoke test of the raybuild image: {json.dumps(result['smoke'])}", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep-images", action="store_true", help="keep both images after measuring")
    parser.add_argument("--skip-naive", action="store_true", help="build and measure raybuild's image only")
    args = parser.parse_args()
    engine = Engine(echo=log)
    engine.ping()
    ca_bundle = default_ca_bundle() or next(
        (p for p in [Path("/etc/ssl/certs/ca-certificates.crt")] if p.is_file()), None
    )
    config, torch_source = lock_project()
    app = config.apps[0]
    lock_text = config.lockfile(app).read_text()
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "torch_source": torch_source,
        "cuda": locking.check_cuda(config, app),
        "images": {},
        "build_seconds": {},
    }
    started = time.monotonic()
    built = Builder(config, engine, ca_bundle, progress=log).build(config.apps)
    result["build_seconds"]["raybuild"] = round(time.monotonic() - started, 1)
    ref = next(str(image.ref) for image in built if image.app == app.name)
    try:
        smoke = smoke_test(app, ref, engine, project=project_id(config), timeout=600, progress=log)
        result["smoke"] = {"t_head": smoke.t_head, "t_serve": smoke.t_serve, "body": smoke.body}
    except RaybuildError as exc:
        result["smoke"] = {"error": exc.message}
    refs = {"raybuild": ref}
    if not args.skip_naive:
        ensure_naive_base(engine)
        result["build_seconds"]["naive"] = round(build_naive(engine, config, ca_bundle), 1)
        refs["naive reconstruction (CUDA toolkit wheels + pip, single stage)"] = NAIVE_REF
    log("measuring layers (gzip of docker save, both images at once)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(layer_sizes, engine, image) for name, image in refs.items()}
        result["images"] = {name: future.result() for name, future in futures.items()}
    result["wheels"] = wheel_sizes(lock_text)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"gpu-torch-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    if not args.keep_images:
        for image in [*refs.values(), f"{config.image_name(app)}:latest"]:
            engine.remove_image(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
