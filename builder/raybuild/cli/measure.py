"""`raybuild measure`: sizes and cold starts of the built app images, written as raybuild.measure/v1."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild.cli.common import (
    FiniteFloat,
    State,
    apps_argument,
    engine_for,
    pass_state,
    progress,
    remember_json,
    table,
)
from raybuild.fsutil import atomic_write, check_writable
from raybuild.state import DEFAULT_MEASURE_PATH
from raybuild.verify.measure import HEADERS, Options, summary_rows, to_markdown
from raybuild.verify.measure import measure as measure_apps
from raybuild.verify.scan import Trivy, scan_apps, with_vulnerabilities


@click.command()
@apps_argument
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Cold starts per app; the document keeps every sample and their median, min and max.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Write the document to FILE [default: {DEFAULT_MEASURE_PATH} next to raybuild.toml, "
    "where `raybuild check` looks].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=remember_json,
    help="Print the document (raybuild.measure/v1) on stdout instead of the summary table.",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the summary table as Markdown to FILE (for a PR comment or job summary).",
)
@click.option("--no-startup", is_flag=True, help="Measure sizes only: no containers are started (runs = 0).")
@click.option(
    "--no-pull",
    is_flag=True,
    help="Skip the cold node: t_pull and t_cold stay null.",
)
@click.option(
    "--runtime",
    type=click.Choice(["containerd", "docker"]),
    default="containerd",
    show_default=True,
    help="The cold node's container runtime: a freshly started containerd with an empty content store, "
    "as Kubernetes nodes pull (containerd and ctr come with docker.io), or a second dockerd under "
    "/var/lib/raybuild/cold for teams whose nodes run Docker (Docker 20.10 cannot pull zstd layers).",
)
@click.option(
    "--scan",
    is_flag=True,
    help="Also scan each image with trivy (from its SBOM) and store the findings in the document, "
    "where `raybuild check` compares them with the baseline's. trivy is checked for first.",
)
@click.option(
    "--timeout",
    type=FiniteFloat(min=1),
    default=180.0,
    show_default=True,
    help="Seconds to wait for each phase (head, worker, Serve route, cold-node head).",
)
@pass_state
def measure(
    state: State,
    apps: tuple[str, ...],
    runs: int,
    out: Path | None,
    as_json: bool,
    markdown_path: Path | None,
    no_startup: bool,
    no_pull: bool,
    runtime: str,
    scan: bool,
    timeout: float,
) -> None:
    """Measure the built images: sizes, layers, packages, and KubeRay-style cold starts.

    \b
    Size: uncompressed (docker image inspect), compressed (layer blobs in the local registry's
      manifest after a push to 127.0.0.1:5000/raybuild-measure/APP, else gzip of `docker save`),
      per-layer sizes with the instruction that made them, the 10 largest site-packages entries,
      bytes shared with the project's other app images, dive's efficiency, and prune savings.
    Startup (medians over --runs): t_head (container create to /api/healthz healthy), t_worker
      (a second container joins), t_serve (Serve config PUT to HTTP 200 on the route), t_pull (pull
      into an empty store on the cold node: containerd, or dockerd with --runtime docker) and t_cold
      (t_pull + the head's start there, until KubeRay's probes pass). The document records the runtime
      and its version. Compressed sizes are for [publish].compression (gzip, or zstd).

    With --scan, each image's trivy findings too (see `raybuild scan`): counts per severity and every
      HIGH and CRITICAL finding.

    Run `raybuild build` first. The document goes to .raybuild/measure.json (or --out FILE), which
    `raybuild check` compares with a baseline.
    """
    config = state.config()
    selected = config.select(apps)
    for target in (out, markdown_path):  # before the minutes of measuring, not after
        if target is not None:
            check_writable(target)
    engine = engine_for(state)
    trivy = None
    if scan:
        # Before any measuring: a missing scanner or database is reported in seconds, not after minutes.
        trivy = Trivy.find(engine)
        trivy.ensure_db()
    options = Options(
        runs=runs,
        startup=not no_startup,
        pull=not no_pull,
        timeout=timeout,
        runtime="docker" if runtime == "docker" else "containerd",
    )
    report = measure_apps(config, selected, engine, options, progress)
    document = report.measurement
    if trivy is not None:
        found = scan_apps(config, tuple(app.name for app in selected), trivy, progress=progress)
        document = with_vulnerabilities(document, found, trivy.version())
    path = out or config.root / DEFAULT_MEASURE_PATH
    document.write(path)
    if markdown_path is not None:
        atomic_write(markdown_path, to_markdown(document))
    if as_json:
        click.echo(document.to_json(), nl=False)
    else:
        table(HEADERS, summary_rows(document))
    click.echo(f"wrote {path}", err=True)
