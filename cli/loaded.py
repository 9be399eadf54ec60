"""Residency verbs: ps (models loaded in memory) and stop (unload one now)."""

from __future__ import annotations

import json

import typer

from mlxserve.v1 import supervisor_pb2

from .backend import Backend, complete_loaded_models, exits_on_error, settings_from
from .models import details_dict
from .render import human_size, relative_time, table


def processor(m: supervisor_pb2.LoadedModel) -> str:
    """Where the model runs, as `ollama ps` says it (and over how many processes, for a group)."""
    where = "100% GPU" if m.size_vram > 0 else "100% CPU"
    return f"{where}, {len(m.ranks)} ranks ({m.strategy})" if m.ranks else where


def ps_rows(m: supervisor_pb2.LoadedModel) -> list[tuple[str, ...]]:
    """The model's row of `mlxctl ps`; a group adds one row per rank with the memory it holds there."""
    size = sum(r.memory_bytes for r in m.ranks) if m.ranks else m.memory_bytes
    rows = [(m.name, m.digest[:12], human_size(size or m.size), processor(m), relative_time(m.expires_at))]
    rows += [(f"  rank {r.rank} on {r.host}", "", human_size(r.memory_bytes), f"pid {r.pid}", "") for r in m.ranks]
    return rows


def ps_json(m: supervisor_pb2.LoadedModel) -> dict:
    out = {"name": m.name, "model": m.model or m.name, "digest": m.digest, "size": m.size, "size_vram": m.size_vram,
           "memory_bytes": m.memory_bytes, "expires_at": m.expires_at, "details": details_dict(m.details),
           "pid": m.pid, "in_flight": m.in_flight, "context_length": m.context_length,
           "compute_dtype": m.compute_dtype, "blas": m.blas, "blas_gflops": round(m.blas_gflops, 1)}
    if m.ranks:
        out["strategy"] = m.strategy
        out["ranks"] = [{"rank": r.rank, "host": r.host, "pid": r.pid, "memory_bytes": r.memory_bytes,
                         "active_memory": r.active_memory} for r in m.ranks]
    return out


@exits_on_error
def ps(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the models loaded in memory."""
    resp = Backend(settings_from(ctx)).call("supervisor", "ListLoaded", supervisor_pb2.ListLoadedRequest())
    if as_json:
        typer.echo(json.dumps({"models": [ps_json(m) for m in resp.models]}, indent=2))
        return
    typer.echo(table(("NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"), [row for m in resp.models for row in ps_rows(m)]))


@exits_on_error
def stop(ctx: typer.Context, model: str = typer.Argument(..., help="the model to unload", autocompletion=complete_loaded_models)) -> None:
    """Unload a model from memory now."""
    Backend(settings_from(ctx)).call("supervisor", "Stop", supervisor_pb2.StopRequest(model=model))
