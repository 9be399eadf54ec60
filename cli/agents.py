"""`mlxctl launch`: start a coding agent (Claude Code, Codex) on a model this server runs.

Each agent is pointed at the server through its own environment and flags, as `ollama launch`
does; `--print` shows the exports and the command instead, for a shell profile or a script. The
README's "Agents" section says the same for setting it up by hand.

- Claude Code speaks Anthropic's Messages API (POST /v1/messages): the base URL and token come
  from ANTHROPIC_*; every model role (main loop, the small fast model, subagents) is the chosen
  model, so nothing asks for a Claude model this server does not have; traffic to Anthropic
  (telemetry, error reports, update checks) is off; and the per-prompt attribution line Claude
  Code puts before its system prompt is left out, so one session's prompt starts as the last
  one's did and the prefix cache serves it.
- Codex speaks the Responses API (POST /v1/responses): a model provider named `mlxserve` is
  defined on its command line (`-c`, nothing written to ~/.codex), with the token in
  MLXSERVE_API_KEY, the variable that sets the server's own key.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Optional

import typer

from mlxserve.services.common.errors import InvalidArgument, NotFound

from .backend import complete_model_names, exits_on_error, settings_from
from .gateway_client import base_url

# Claude Code insists on a token; a server without `api_key` takes any.
PLACEHOLDER_TOKEN = "mlxserve"
INSTALL = {"claude": "npm install -g @anthropic-ai/claude-code", "codex": "npm install -g @openai/codex"}


@dataclass(frozen=True)
class Launch:
    """How to start one agent: its command line, and the environment to set and unset for it."""

    argv: list[str]
    env: dict[str, str]
    unset: tuple[str, ...] = field(default=())

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.unset}
        env.update(self.env)
        return env

    def script(self) -> str:
        """The same as shell lines: unset, export, then the command."""
        lines = [f"unset {name}" for name in self.unset]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.env.items()]
        lines.append(shlex.join(self.argv))
        return "\n".join(lines)


def claude_code(url: str, model: str, token: str | None, args: list[str]) -> Launch:
    """Claude Code on `model` at `url` (Anthropic's Messages API)."""
    env = {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": token or PLACEHOLDER_TOKEN,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
    }
    # An Anthropic key in the user's environment would be sent here in place of the token.
    return Launch(["claude", *args], env, unset=("ANTHROPIC_API_KEY",))


def codex(url: str, model: str, token: str | None, args: list[str]) -> Launch:
    """Codex on `model` at `url` (the Responses API), through a provider defined on its command line.
    With a `token` (the server's api_key), Codex sends it from MLXSERVE_API_KEY, the variable the
    server reads it from; without one it sends none."""
    provider = f'name = "mlxserve", base_url = {json.dumps(url + "/v1")}, wire_api = "responses"'
    if token:
        provider += ', env_key = "MLXSERVE_API_KEY"'
    argv = ["codex", "-c", 'model_provider="mlxserve"', "-c", f"model_providers.mlxserve={{{provider}}}", "-m", model, *args]
    return Launch(argv, {"MLXSERVE_API_KEY": token} if token else {})


AGENTS = {"claude": claude_code, "codex": codex}


def complete_agents(incomplete: str) -> list[str]:
    return [name for name in AGENTS if name.startswith(incomplete)]


@exits_on_error
def launch(
    ctx: typer.Context,
    agent: str = typer.Argument(..., help="the agent: claude (Claude Code) or codex (Codex CLI)",
                                autocompletion=complete_agents),
    args: Optional[list[str]] = typer.Argument(None, help="arguments for the agent, after `--`"),
    model: str = typer.Option(..., "--model", "-m", help="the model the agent uses (one this server has)",
                              autocompletion=complete_model_names),
    print_only: bool = typer.Option(False, "--print", help="print the environment and the command instead of running it"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
) -> None:
    """Start a coding agent on a local model: `mlxctl launch claude -m qwen3:8b -- -p "hi"`.

    claude: sets ANTHROPIC_BASE_URL (this server), ANTHROPIC_AUTH_TOKEN (the api_key, if one is
    set), ANTHROPIC_MODEL and the default opus/sonnet/haiku/subagent models (the model),
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 and CLAUDE_CODE_ATTRIBUTION_HEADER=0, and unsets
    ANTHROPIC_API_KEY.

    codex: defines a Responses provider for this server's /v1 on the command line
    (`-c model_providers.mlxserve=...`), with the api_key, if one is set, in MLXSERVE_API_KEY.
    """
    if agent not in AGENTS:
        raise InvalidArgument(f"no agent named {agent!r}; choose one of {', '.join(AGENTS)}")
    settings = settings_from(ctx)
    plan = AGENTS[agent](base_url(host, settings.base_url), model, settings.api_key or None, list(args or []))
    if print_only:
        typer.echo(plan.script())
        return
    if shutil.which(plan.argv[0]) is None:
        raise NotFound(f"{plan.argv[0]} is not on PATH; install it with `{INSTALL[agent]}`")
    os.execvpe(plan.argv[0], plan.argv, plan.environment(dict(os.environ)))
