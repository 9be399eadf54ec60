"""`mlxctl`: the admin CLI. Store and residency verbs over gRPC, `run` over the HTTP gateway."""

from __future__ import annotations

import os
import secrets
from typing import Optional

import typer

from mlxserve import __version__
from mlxserve.services.common import logs

from . import generate, loaded, maintenance, models, serve, transfer

LOG_LEVEL_ENV = "MLXSERVE_LOG_LEVEL"

app = typer.Typer(name="mlxctl", help="Run and manage mlxserve, a local LLM server on MLX.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def root(
    ctx: typer.Context,
    home: Optional[str] = typer.Option(None, "--home", help="mlxserve home (default $MLXSERVE_HOME or ~/.mlxserve)"),
    verbose: bool = typer.Option(False, "-v", "--verbose",
                                 help="debug output on stderr (each call with its request id and full error detail); "
                                      "`mlxctl -v serve` runs the services at debug level"),
) -> None:
    ctx.obj = {"home": home, "verbose": verbose}
    # Every gRPC call of this command carries one request id (rpc.call_sync takes the bound
    # one), so the services' log lines for it can be found with a single grep.
    request_id = f"cli-{secrets.token_hex(6)}"
    logs.bind_request_id(request_id)
    if verbose:
        logs.configure("mlxctl", "debug", None)
        logs.get_logger().debug("mlxctl", command=ctx.invoked_subcommand, request_id=request_id)
        # The services `serve` starts read their level from the environment (flags still win).
        previous = os.environ.get(LOG_LEVEL_ENV)
        os.environ[LOG_LEVEL_ENV] = "debug"
        ctx.call_on_close(lambda: _restore_env(LOG_LEVEL_ENV, previous))
    ctx.call_on_close(logs.unbind_request_id)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


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
