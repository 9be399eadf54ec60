"""Store upkeep verbs: verify (re-hash every blob) and gc (collect what nothing uses)."""

from __future__ import annotations

import json
import sys

import typer

from mlxserve.v1 import store_pb2

from .backend import Backend, exits_on_error, settings_from
from .render import human_size, progress_view

EXIT_DAMAGED = 1  # verify found corrupt or missing blobs, or unreadable manifests


def verify_json(r: store_pb2.VerifyReport) -> dict:
    return {
        "checked": r.checked,
        "corrupt": [{"digest": b.digest, "models": list(b.models)} for b in r.corrupt],
        "missing": [{"digest": b.digest, "models": list(b.models)} for b in r.missing],
        "damaged_manifests": list(r.damaged_manifests),
    }


def verify_text(r: store_pb2.VerifyReport) -> str:
    lines = []
    for kind, problems in (("corrupt", r.corrupt), ("missing", r.missing)):
        for b in problems:
            users = f"breaks {', '.join(b.models)}" if b.models else "used by no model"
            lines.append(f"{kind} blob {b.digest} ({users})")
    lines += [f"damaged manifest {m}" for m in r.damaged_manifests]
    problems = len(r.corrupt) + len(r.missing) + len(r.damaged_manifests)
    blobs = f"{r.checked} blob{'s' if r.checked != 1 else ''}"
    lines.append(f"checked {blobs}: " + ("all good" if not problems else
                 f"{problems} problem{'s' if problems != 1 else ''}; `mlxctl rm` the broken models and pull or create them again"))
    return "\n".join(lines)


@exits_on_error
def verify(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Re-hash every blob; report corrupt or missing ones and the models they break (exit 1 if any)."""
    backend = Backend(settings_from(ctx))
    report = store_pb2.VerifyReport()
    # Progress goes to stderr so that stdout carries only the report.
    view = None if as_json else progress_view(sys.stderr)
    try:
        for event in backend.stream("store", "Verify", store_pb2.VerifyRequest()):
            if event.HasField("report"):
                report = event.report
            elif view is not None and event.progress.status != "success":
                view.update("verifying blobs", event.progress.total, event.progress.completed)
    finally:
        if view is not None:
            view.close()
    typer.echo(json.dumps(verify_json(report), indent=2) if as_json else verify_text(report))
    if report.corrupt or report.missing or report.damaged_manifests:
        raise typer.Exit(EXIT_DAMAGED)


@exits_on_error
def gc(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Delete blobs no model uses and stale partial downloads."""
    r = Backend(settings_from(ctx)).call("store", "Gc", store_pb2.GcRequest(), timeout=None)
    if as_json:
        typer.echo(json.dumps({"removed_blobs": list(r.removed_blobs), "freed_bytes": r.freed_bytes,
                               "removed_partials": list(r.removed_partials)}, indent=2))
        return
    n, m = len(r.removed_blobs), len(r.removed_partials)
    typer.echo(f"removed {n} blob{'s' if n != 1 else ''} and {m} partial download{'s' if m != 1 else ''}, "
               f"freed {human_size(r.freed_bytes)}")
