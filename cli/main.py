"""`mlxctl`: the admin CLI. Store and residency verbs over gRPC, `run` over the HTTP gateway."""

from __future__ import annotations

from typing import Optional

import typer

from mlxserve import __version__

from . import generate, loaded, maintenance, models, serve, transfer

app = typer.Typer(name="mlxctl", help="Run and manage mlxserve, a local LLM server on MLX.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def root(ctx: typer.Context, home: Optional[str] = typer.Option(None, "--home", help="mlxserve home (default $MLXSERVE_HOME or ~/.mlxserve)")) -> None:
    ctx.obj = {"home": home}


app.command("serve")(serve.serve)
app.command("run")(generate.run)
app.command("list")(models.list_models)
app.command("ls", hidden=True)(models.list_models)
app.command("create")(models.create)
app.command("show")(models.show)
app.command("cp")(models.copy)
app.command("rm")(models.remove)
app.command("pull")(transfer.pull)
app.command("push")(transfer.push)
app.command("pack")(transfer.pack)
app.command("verify")(maintenance.verify)
app.command("gc")(maintenance.gc)
app.command("ps")(loaded.ps)
app.command("stop")(loaded.stop)


@app.command("version")
def version() -> None:
    """Print mlxctl's version."""
    typer.echo(f"mlxctl version {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
