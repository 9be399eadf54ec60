"""`mlxctl`: the admin CLI. Store and residency verbs over gRPC, `run` over the HTTP gateway."""

from __future__ import annotations

import json
import os
import secrets
from typing import Optional

import typer
from typer.completion import completion_init, get_completion_script, install

from mlxserve import __version__
from mlxserve.services.common import logs

from . import agents, chat, generate, import_ollama, loaded, maintenance, models, serve, transfer
from . import bench
from . import logs as logs_cli
from . import service

LOG_LEVEL_ENV = "MLXSERVE_LOG_LEVEL"
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
# Typer registers its shell classes only for its own completion options, which mlxctl replaces
# (see `root`); `_MLXCTL_COMPLETE=complete_bash mlxctl ...`, what the scripts run, needs them too.
completion_init()

app = typer.Typer(name="mlxctl", help="Run and manage mlxserve, a local LLM server on MLX.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


def _shell(value: str) -> str:
    if value not in SHELLS:
        raise typer.BadParameter(f"'{value}' is not a shell mlxctl completes; choose one of {', '.join(SHELLS)}")
    return value


def _show_completion(ctx: typer.Context, value: Optional[str]) -> None:
    if value is None or ctx.resilient_parsing:
        return
    typer.echo(get_completion_script(prog_name="mlxctl", complete_var="_MLXCTL_COMPLETE", shell=_shell(value)))
    raise typer.Exit(0)


def _install_completion(ctx: typer.Context, value: Optional[str]) -> None:
    if value is None or ctx.resilient_parsing:
        return
    shell, path = install(shell=_shell(value), prog_name="mlxctl", complete_var="_MLXCTL_COMPLETE")
    typer.echo(f"{shell} completion installed in {path}; it takes effect in a new shell")
    raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    # The shell is named, not guessed: detection from the process tree fails under IDEs, tmux and
    # scripts, and a wrong guess writes into the wrong rc file.
    _install: Optional[str] = typer.Option(None, "--install-completion", metavar="SHELL", is_eager=True,
                                           expose_value=False, callback=_install_completion,
                                           help="install shell completion for SHELL (bash, zsh, fish, powershell)"),
    _show: Optional[str] = typer.Option(None, "--show-completion", metavar="SHELL", is_eager=True,
                                        expose_value=False, callback=_show_completion,
                                        help="print the completion script for SHELL, to install it by hand"),
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
app.command("chat")(chat.chat)
app.command("list")(models.list_models)
app.command("ls", hidden=True)(models.list_models)
app.command("create")(models.create)
app.command("show")(models.show)
app.command("cp")(models.copy)
app.command("rm")(models.remove)
app.command("pull")(transfer.pull)
app.command("push")(transfer.push)
app.command("pack")(transfer.pack)
app.command("import-ollama")(import_ollama.import_ollama)
app.command("verify")(maintenance.verify)
app.command("gc")(maintenance.gc)
app.command("ps")(loaded.ps)
app.command("stop")(loaded.stop)
app.command("bench")(bench.bench)
app.command("logs")(logs_cli.logs)
app.command("launch")(agents.launch)
app.add_typer(service.app, name="service")


@app.command("version")
def version(as_json: bool = typer.Option(False, "--json", help='print {"version": ...}')) -> None:
    """Print mlxctl's version."""
    typer.echo(json.dumps({"version": __version__}) if as_json else f"mlxctl version {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
