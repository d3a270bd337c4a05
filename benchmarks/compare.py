"""raybuild against the naive image a user would write, side by side in one run, with the same code.

    sudo scripts/setup && .venv/bin/python benchmarks/compare.py [--app hello] [--runs 3]

It builds, for one bundled app:
  (a) the naive single-stage image: Debian with python3, python3-venv and wget, a venv, and `pip install`
      of the app's own lockfile (benchmarks/naive/Dockerfile);
  (b) raybuild's image of the same app;
then measures both with raybuild measure (size, compressed size, t_head, t_serve, t_pull, t_cold), times a
rebuild after a one-line change to the app's code, and measures the floor: `ray start --head` in a plain
venv on the host. The pull path (benchmarks/pullpath.py) follows: raybuild's image is also pushed with zstd
layers, and the naive image, raybuild's gzip and raybuild's zstd are pulled in turns, each on a freshly
started containerd (t_pull, t_cold), then started in turns as KubeRay heads (t_head, --head-runs each).
It writes benchmarks/results/<date>.json and <date>.md; the README shows the latest table.

The naive base cannot come from a registry here, so it is `debian:bookworm`'s package set reconstructed
with mmdebstrap (minbase variant, plus the packages a Dockerfile would apt-get install).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pullpath import Variant, cold_pulls, head_starts, pull_path_table, spread_note, zstd_copy

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder, default_ca_bundle
from raybuild.lock.resolve import uv_binary
from raybuild.records import BuiltImage, save_build_record
from raybuild.reference import ImageRef
from raybuild.state import state_dir
from raybuild.verify.measure import Options, measure
from raybuild.verify.results import Measurement
from raybuild.verify.sizes import measure_ref

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAIVE_BASE = "raybuild-bench/naive-base:bookworm"
NAIVE_PACKAGES = ("python3", "python3-venv", "wget", "ca-certificates")
PUBLISHED = {
    "rayproject/ray:2.41.0-py39 (CPU)": {"size": 2.21e9, "compressed": 874e6},
    "Kueue ray-mini (python slim + ray[default,serve])": {"size": 415e6, "compressed": 144e6},
}


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def make_project(work: Path, app_name: str) -> LoadedConfig:
    """A copy of the bundled project with one extra app, `<app>-naive`, whose image is the naive build."""
    root = work / "project"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for folder in ("apps", "lockfiles", "images"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "raybuild.toml").read_text()
    config = load_config(REPO / "raybuild.toml")
    app = next(a for a in config.apps if a.name == app_name)
    naive = (
        "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        + f"""

[[apps]]
name = "{app.name}-naive"
path = "{app.path}"
requirements = "{app.requirements}"
import_path = "{app.import_path}"
route_prefix = "{app.route_prefix}-naive"
"""
    )
    if app.env:
        # The same Serve config: env vars become a runtime_env, which changes how replicas start.
        naive += "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(app.env.items())) + " }\n"
    for deployment in app.deployments:
        naive += f'\n[[apps.deployments]]\nname = "{deployment.name}"\nnum_replicas = 1\n'
        if deployment.ray_actor_options.num_cpus is not None:
            naive += f"ray_actor_options = {{ num_cpus = {deployment.ray_actor_options.num_cpus} }}\n"
    (root / "raybuild.toml").write_text(naive)
    shutil.copy2(root / "lockfiles" / f"{app.name}.txt", root / "lockfiles" / f"{app.name}-naive.txt")
    return load_config(root / "raybuild.toml")


def ensure_naive_base(engine: Engine) -> None:
    if engine.image_exists(NAIVE_BASE):
        return
    log(f"bootstrapping {NAIVE_BASE} (minbase + {' '.join(NAIVE_PACKAGES)})")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "naive.tar"
        engine.runner.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(NAIVE_PACKAGES),
                "bookworm",
                str(tarball),
                "http://deb.debian.org/debian",
            ],
            what="mmdebstrap naive base",
        )
        engine.import_tarball(tarball, NAIVE_BASE)


def build_naive(
    engine: Engine, config: LoadedConfig, app_name: str, ca_bundle: Path | None
) -> tuple[str, float]:
    """The naive image of ``app_name``; returns its reference and the build's wall time."""
    app = next(a for a in config.apps if a.name == app_name)
    context = state_dir(config) / "naive-context"
    if context.exists():
        shutil.rmtree(context)
    shutil.copytree(
        config.app_dir(app), context / "app", ignore=shutil.ignore_patterns("__pycache__", "*.in")
    )
    shutil.copy2(config.lockfile(app), context / "requirements.txt")
    shutil.copy2(HERE / "naive" / "Dockerfile", context / "Dockerfile")
    secrets = {"ca_bundle": ca_bundle} if ca_bundle else {}
    started = time.monotonic()
    image_id = engine.build(
        context,
        context / "Dockerfile",
        iidfile=context / "iid",
        secrets=secrets,
        build_args={"BASE": NAIVE_BASE},
        what="naive build",
    )
    elapsed = time.monotonic() - started
    ref = f"raybuild-bench/{app.name}:{image_id.split(':')[1][:12]}"
    engine.tag(image_id, ref)
    return ref, elapsed


def touch_code(config: LoadedConfig, app_name: str) -> None:
    app = next(a for a in config.apps if a.name == app_name)
    module = config.app_dir(app) / (app.import_path.split(":")[0].replace(".", "/") + ".py")
    module.write_text(module.read_text() + f"\n# benchmark edit {time.time_ns()}\n")


def floor(work: Path, runs: int) -> list[float]:
    """`ray start --head` in a plain venv on the host, until the agent's /api/healthz reports success."""
    venv = work / "floor-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log("creating the floor venv (ray from lockfiles/ray.txt)")
        subprocess.run([uv_binary(), "venv", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [
                uv_binary(),
                "pip",
                "install",
                "--compile-bytecode",
                "--python",
                str(python),
                "--require-hashes",
                "-r",
                str(REPO / "lockfiles" / "ray.txt"),
            ],
            check=True,
        )
    ray = venv / "bin" / "ray"
    samples = []
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    for _ in range(runs):
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env)
        started = time.monotonic()
        subprocess.run(
            [
                str(ray),
                "start",
                "--head",
                "--num-cpus=1",
                "--dashboard-agent-listen-port=52365",
                "--disable-usage-stats",
            ],
            capture_output=True,
            env=env,
            check=True,
        )
        while time.monotonic() - started < 120:
            try:
                with urllib.request.urlopen("http://127.0.0.1:52365/api/healthz", timeout=2) as response:
                    if response.status == 200 and b"success" in response.read():
                        break
            except OSError:
                pass
            time.sleep(0.1)
        samples.append(round(time.monotonic() - started, 3))
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env)
    return samples


def median(doc: Measurement, app: str, metric: str) -> float | None:
    stat = getattr(doc.apps[app].startup, metric)
    return None if stat is None else float(stat.median)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def table(result: dict[str, Any]) -> str:
    raybuild, naive = result["raybuild"], result["naive"]
    rows = [
        ("size (MB)", raybuild["size"] / 1e6, naive["size"] / 1e6),
        ("compressed (MB)", raybuild["compressed"] / 1e6, naive["compressed"] / 1e6),
        *((f"{m} median (s)", raybuild[m], naive[m]) for m in ("t_head", "t_serve", "t_pull", "t_cold")),
        ("rebuild after a code edit (s)", raybuild["rebuild_s"], naive["rebuild_s"]),
    ]
    lines = [
        f"Benchmark {result['date']}: app `{result['app']}`, Ray {result['ray_version']}, "
        f"{result['runs']} runs (medians), measured on this machine in one run.",
        "",
        "| metric | naive | raybuild | naive / raybuild |",
        "|---|---|---|---|",
    ]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {_fmt(theirs)} | {_fmt(ours)} | {ratio(theirs, ours)} |")
    lines += [
        "",
        f"Floor: `ray start --head` in a plain venv on the host until `/api/healthz` succeeds: "
        f"{_fmt(result['floor_s'])} s median; raybuild's t_head / floor = "
        f"{ratio(raybuild['t_head'], result['floor_s'])} (the container adds its own start-up).",
        "",
        "Published figures (not measured here):",
        "",
        "| image | size (MB) | compressed (MB) |",
        "|---|---|---|",
    ]
    for name, figures in PUBLISHED.items():
        lines.append(f"| {name} | {figures['size'] / 1e6:.0f} | {figures['compressed'] / 1e6:.0f} |")
    if result.get("pull_path"):
        lines += ["", *pull_path_table(result["pull_path"])]
    return "\n".join(lines) + "\n"


def pull_path(
    engine: Engine, config: LoadedConfig, app_name: str, naive_name: str, doc: Measurement, args: Any
) -> dict[str, Any]:
    """gzip and zstd against the naive image on containerd, interleaved; with the targets' verdicts."""
    namespace = config.project.registry
    app, naive = config.select((app_name,))[0], config.select((naive_name,))[0]
    ours, theirs = doc.apps[app_name].image, doc.apps[naive_name].image
    zstd_ref = measure_ref(ours, f"{app_name}-zstd", namespace)
    log(f"pushing {ours} with zstd layers to {zstd_ref}")
    zstd_size = zstd_copy(engine, ours, zstd_ref)
    variants = [
        Variant("naive (gzip)", naive, measure_ref(theirs, naive_name, namespace)),
        Variant("raybuild (gzip)", app, measure_ref(ours, app_name, namespace)),
        Variant("raybuild (zstd 19)", app, zstd_ref),
    ]
    log(f"cold pulls on containerd, {args.runs} interleaved rounds")
    cold = cold_pulls(engine, variants, args.runs, log)
    log(f"head starts on containerd, {args.head_runs} of each, alternating")
    heads = head_starts(engine, variants[:2], args.head_runs, log)
    heads["raybuild (zstd 19)"] = heads["raybuild (gzip)"]  # the same image once unpacked
    sizes = {
        "naive (gzip)": doc.apps[naive_name].size.compressed,
        "raybuild (gzip)": doc.apps[app_name].size.compressed,
        "raybuild (zstd 19)": zstd_size,
    }

    def med(name: str, metric: str) -> float:
        value = cold[name][metric]["median"] if metric != "t_head" else heads[name]["median"]
        return float(value)

    gz, zs, nv = "raybuild (gzip)", "raybuild (zstd 19)", "naive (gzip)"
    verdicts = [
        f"hello compressed with zstd: {zstd_size / 1e6:.1f} MB (target <= 100 MB): "
        + ("met" if zstd_size <= 100e6 else "missed"),
        f"t_pull zstd / gzip: {med(zs, 't_pull') / med(gz, 't_pull'):.2f}x (target <= 0.75x): "
        + ("met" if med(zs, "t_pull") <= 0.75 * med(gz, "t_pull") else "missed"),
        f"t_cold raybuild (zstd) / naive: {med(zs, 't_cold') / med(nv, 't_cold'):.2f}x (target <= 0.65x): "
        + ("met" if med(zs, "t_cold") <= 0.65 * med(nv, "t_cold") else "missed"),
        f"t_head raybuild / naive (interleaved): {med(gz, 't_head') / med(nv, 't_head'):.2f}x "
        "(target <= 1.0x): " + ("met" if med(gz, "t_head") <= med(nv, "t_head") else "missed"),
    ]
    notes = [
        spread_note(heads[gz], heads[nv], "t_head raybuild", "naive"),
        spread_note(cold[zs]["t_pull"], cold[gz]["t_pull"], "t_pull zstd", "gzip"),
    ]
    return {
        "runtime": cold[gz]["runtime"],
        "runs": args.runs,
        "head_runs": args.head_runs,
        "compressed": sizes,
        "cold": cold,
        "head": heads,
        "verdicts": verdicts,
        "notes": notes,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="hello", help="the bundled CPU app to compare")
    parser.add_argument("--runs", type=int, default=3, help="cold starts per image")
    parser.add_argument("--head-runs", type=int, default=5, help="interleaved head starts per image")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    work = HERE / "work"
    engine = Engine()
    engine.ping()
    ca_bundle = default_ca_bundle()
    config = make_project(work, args.app)
    naive_name = f"{args.app}-naive"
    (app,) = config.select((args.app,))
    log(f"building raybuild's image of {args.app}")
    Builder(config, engine, ca_bundle=ca_bundle, progress=log).build((app,))
    ensure_naive_base(engine)
    log(f"building the naive image of {args.app}")
    naive_ref, _ = build_naive(engine, config, naive_name, ca_bundle)
    save_build_record(
        config,
        [BuiltImage(naive_name, ImageRef.parse(naive_ref), engine.inspect(naive_ref)["Id"], "cpu", False)],
    )
    log(f"measuring both images ({args.runs} runs each)")
    report = measure(
        config, [app, *config.select((naive_name,))], engine, Options(runs=args.runs), progress=log
    )
    doc = report.measurement
    log("timing a rebuild after a one-line code change, for each")
    touch_code(config, args.app)
    started = time.monotonic()
    Builder(config, engine, ca_bundle=ca_bundle).build((app,))
    rebuild_raybuild = time.monotonic() - started
    _, rebuild_naive = build_naive(engine, config, naive_name, ca_bundle)
    log("measuring the floor: ray start --head on the host")
    floor_samples = floor(work, args.runs)
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "app": args.app,
        "ray_version": doc.ray_version,
        "runs": args.runs,
        "floor_s": statistics.median(floor_samples),
        "floor_samples": floor_samples,
        "published": PUBLISHED,
    }
    for key, name, rebuild in (
        ("raybuild", args.app, rebuild_raybuild),
        ("naive", naive_name, rebuild_naive),
    ):
        size = doc.apps[name].size
        result[key] = {
            "image": doc.apps[name].image,
            "size": size.uncompressed,
            "compressed": size.compressed,
            "rebuild_s": round(rebuild, 2),
            **{m: median(doc, name, m) for m in ("t_head", "t_worker", "t_serve", "t_pull", "t_cold")},
        }
    result["measurement"] = json.loads(doc.to_json())
    result["pull_path"] = pull_path(engine, config, args.app, naive_name, doc, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / result["date"]
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
