"""Store verbs: list (ls), create, rm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.v1 import common_pb2, store_pb2

from .backend import Backend, exits_on_error, settings_from
from .render import ProgressPrinter, human_size, relative_time, table


def details_dict(d: common_pb2.ModelDetails) -> dict:
    return {
        "parent_model": d.parent_model, "format": d.format, "family": d.family, "families": list(d.families),
        "parameter_size": d.parameter_size, "quantization_level": d.quantization_level,
    }


@exits_on_error
def list_models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the models in the store."""
    resp = Backend(settings_from(ctx)).call("store", "List", store_pb2.ListRequest())
    if as_json:
        typer.echo(json.dumps({"models": [
            {"name": m.name, "model": m.model or m.name, "digest": m.digest, "size": m.size,
             "modified_at": m.modified_at, "details": details_dict(m.details)}
            for m in resp.models
        ]}, indent=2))
        return
    typer.echo(table(
        ("NAME", "ID", "SIZE", "MODIFIED"),
        [(m.name, m.digest[:12], human_size(m.size), relative_time(m.modified_at)) for m in resp.models],
    ))


def create_model(backend: Backend, name: str, source: Path) -> None:
    """Import `source` as `name` through the store, printing its progress lines."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise InvalidArgument(f"source '{source}' does not exist")
    printer = ProgressPrinter()
    try:
        for p in backend.stream("store", "Create", store_pb2.CreateRequest(name=name, from_path=str(source))):
            printer.update(p.status, p.total, p.completed)
    finally:
        printer.close()


@exits_on_error
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="name for the new model, e.g. smollm2 or me/smollm2:q4"),
    source: Path = typer.Option(..., "--from", "-f", help="a GGUF file or a model folder on this machine"),
) -> None:
    """Create a model from a local GGUF file or model folder."""
    create_model(Backend(settings_from(ctx)), name, source)


@exits_on_error
def remove(ctx: typer.Context, models: List[str] = typer.Argument(..., help="models to delete")) -> None:
    """Delete models from the store."""
    backend = Backend(settings_from(ctx))
    for name in models:
        backend.call("store", "Remove", store_pb2.RemoveRequest(name=name))
        typer.echo(f"deleted '{name}'")
