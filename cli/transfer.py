"""Store verbs that move models between machines: pull, push, pack."""

from __future__ import annotations

from pathlib import Path

import typer

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.v1 import store_pb2

from .backend import Backend, complete_model_names, exits_on_error, settings_from
from .models import run_progress


def pull_source(text: str) -> str:
    """A tarball on this machine travels as its absolute path (the store resolves nothing relative);
    URLs and model names go as they are."""
    if text.startswith(("http://", "https://")):
        return text
    path = Path(text).expanduser()
    if path.is_file():
        return str(path.resolve())
    if text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".tar"):
        raise InvalidArgument(f"'{text}' does not exist or is not a file")
    return text


@exits_on_error
def pull(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="gemma3:270m (Ollama's library), hf.co/ORG/REPO[:QUANT] (Hugging Face), "
                                         "host[:port]/namespace/name[:tag] (a registry), or a tarball (path or URL)"),
    insecure: bool = typer.Option(False, "--insecure", help="allow a registry over plain http://"),
) -> None:
    """Pull a model: from Ollama's library by Ollama's names, from the Hugging Face hub (MLX or GGUF
    repos), from an OCI registry, or from a tarball that `mlxctl pack` wrote."""
    backend = Backend(settings_from(ctx))
    run_progress(backend, "Pull", store_pb2.PullRequest(name=pull_source(name), insecure=insecure))


@exits_on_error
def push(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="host[:port]/namespace/name[:tag]: the registry is the name's host",
                              autocompletion=complete_model_names),
    insecure: bool = typer.Option(False, "--insecure", help="allow a registry over plain http://"),
) -> None:
    """Push a model to an OCI registry (only the blobs it lacks, then the manifest)."""
    backend = Backend(settings_from(ctx))
    run_progress(backend, "Push", store_pb2.PushRequest(name=name, insecure=insecure))


@exits_on_error
def pack(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the model to pack", autocompletion=complete_model_names),
    output: Path = typer.Option(..., "--output", "-o", help="the tarball to write, e.g. smollm2.tar"),
) -> None:
    """Write a model as an OCI image-layout tarball (`mlxctl pull FILE.tar` reads it back)."""
    out = output.expanduser().resolve()
    if not out.parent.is_dir():
        raise InvalidArgument(f"folder '{out.parent}' does not exist")
    if out.is_dir():
        raise InvalidArgument(f"'{out}' is a folder; give a file name such as {name.split(':')[0].split('/')[-1]}.tar")
    backend = Backend(settings_from(ctx))
    run_progress(backend, "Pack", store_pb2.PackRequest(name=name, out_path=str(out)))
