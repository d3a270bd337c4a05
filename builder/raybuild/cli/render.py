"""`raybuild render`: the KubeRay RayService (or RayCluster) that runs the apps."""

from __future__ import annotations

from pathlib import Path

import click

from raybuild.cli.common import State, emit_json, engine_for, json_option, pass_state
from raybuild.errors import ManifestError, UsageError
from raybuild.fsutil import atomic_write
from raybuild.manifest.delta import Delta, diff_manifests, image_labels
from raybuild.manifest.render import KINDS, STORE_KINDS, Kind, StoreKind, render_manifest
from raybuild.manifest.validate import resolve_crds, validate_manifest
from raybuild.records import load_publish_record

# --with-gcs-store's value -> render_manifest's gcs_store_manifests.
_STORES: dict[str | None, bool | StoreKind] = {
    None: False,
    "": True,
    "redis": "redis",
    "dragonfly": "dragonfly",
}


def _store_choice(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # A bare --with-gcs-store arrives as "" (its flag_value): the store that raybuild.toml names.
    if value not in (None, "", *STORE_KINDS):
        raise click.BadParameter(f"{value!r} is not one of {', '.join(repr(s) for s in STORE_KINDS)}")
    return value


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the manifest to FILE (atomically) instead of stdout.",
)
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="RayService",
    show_default=True,
    help="RayService (Serve apps and cluster) or RayCluster (the cluster alone).",
)
@click.option(
    "--validate",
    "check",
    is_flag=True,
    help="Check the manifest against the KubeRay CRD and operator rules; write nothing if it fails.",
)
@click.option(
    "--crd",
    metavar="PATH|cluster",
    default=None,
    help="CRD file or folder for --validate (implied), or 'cluster' to read it with kubectl "
    "[default: $RAYBUILD_CRD_DIR, else the KubeRay v1.7.0 CRDs raybuild ships].",
)
@click.option(
    "--with-gcs-store",
    "gcs_store",
    metavar="[redis|dragonfly]",
    is_flag=False,
    flag_value="",
    default=None,
    callback=_store_choice,
    help="Put a PriorityClass and a Redis or Dragonfly GCS store before the cluster "
    "[default store: cluster.gcs.store]. The password Secret is not included.",
)
@click.option(
    "--diff",
    "deployed",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="PATH",
    help="Compare with the manifest deployed now: per image, whether its digest changed and why, and "
    "whether KubeRay upgrades the RayService (a new cluster). Prints that instead of the manifest.",
)
@click.option(
    "--prepull",
    is_flag=True,
    help="Add a DaemonSet that pulls every image (by digest) onto every node, so that autoscaled workers "
    "start without a pull; each node then keeps every image on its disk.",
)
@json_option
@pass_state
def render(state: State, out: Path | None, kind: Kind, check: bool, crd: str | None, gcs_store: str | None,
           deployed: Path | None, prepull: bool, as_json: bool) -> None:  # fmt: skip
    """Render the KubeRay RayService (or RayCluster) that runs the project's apps.

    Images are pinned by digest from .raybuild/publish.json (written by `raybuild publish`); without it,
    local tags are used and a warning says so. The structure comes from the templates in deploy/, which are
    yours to edit. Warnings go to stderr, so stdout stays a clean manifest.
    """
    config = state.config()
    deployed_text = read_deployed(deployed) if deployed is not None else None  # before any work
    record = load_publish_record(config)
    manifest = render_manifest(
        config, record, kind=kind, gcs_store_manifests=_STORES[gcs_store], prepull=prepull
    )
    for warning in manifest.warnings:
        click.secho(f"warning: {warning}", err=True, fg="yellow")
    check = check or crd is not None
    if check:
        errors = validate_manifest(manifest.documents(), resolve_crds(crd))
        if errors:
            for error in errors:
                click.echo(f"  {error}", err=True)
            plural = "s" if len(errors) != 1 else ""
            raise ManifestError(
                f"the rendered {kind} has {len(errors)} problem{plural} (listed above)",
                hint="fix raybuild.toml or the templates in deploy/; nothing was written",
            )
        click.echo(f"{kind} is valid against the KubeRay CRD and operator rules", err=True)
    delta = None
    if deployed is not None and deployed_text is not None:
        delta = diff_manifests(deployed_text, str(deployed), manifest.text, image_labels(engine_for(state)))
    if out is not None:
        atomic_write(out, manifest.text)
    if as_json:
        emit_json({
            "kind": kind,
            "out": str(out) if out is not None else None,
            "validated": check,
            "warnings": list(manifest.warnings),
            "manifest": manifest.text if out is None and delta is None else None,
            **({"diff": delta.to_dict()} if delta is not None else {}),
        })  # fmt: skip
        return
    if delta is not None:
        for line in delta.lines():
            click.echo(line)
    elif out is None:
        click.echo(manifest.text, nl=False)
    if out is not None:
        click.echo(f"wrote {kind} to {out}", err=delta is not None)


def read_deployed(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{path}: cannot read the deployed manifest ({exc.__class__.__name__})",
            hint="pass the manifest that is deployed now (`raybuild render` wrote it)",
        ) from None


def deployed_delta(state: State, deployed: Path, rendered: str) -> Delta:
    """What changes from the manifest at ``deployed`` to ``rendered`` (for `raybuild check --deployed`)."""
    text = read_deployed(deployed)
    return diff_manifests(text, str(deployed), rendered, image_labels(engine_for(state)))
