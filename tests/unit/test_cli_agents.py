"""`mlxctl launch`: the environment and command line each coding agent gets, printed or run."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxserve.cli import agents
from mlxserve.cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("MLXSERVE_HOME", str(tmp_path))
    monkeypatch.setenv("MLXSERVE_PORT", "11500")
    for name in ("MLXSERVE_API_KEY", "MLXSERVE_HOST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def printed(*args: str) -> tuple[dict[str, str], set[str], list[str]]:
    """`mlxctl launch ... --print` as (exports, unsets, command line)."""
    out = runner.invoke(app, ["launch", "--print", *args])
    assert out.exit_code == 0, out.output
    exports, unsets = {}, set()
    *env_lines, command = out.output.strip().splitlines()
    for line in env_lines:
        verb, rest = line.split(" ", 1)
        if verb == "unset":
            unsets.add(rest)
        else:
            name, value = rest.split("=", 1)
            exports[name] = shlex.split(value)[0] if value else ""
    return exports, unsets, shlex.split(command)


def test_claude_code_is_pointed_at_this_server_with_every_model_role_on_the_chosen_model() -> None:
    exports, unsets, command = printed("claude", "-m", "qwen3:8b")
    assert exports["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:11500"
    assert exports["ANTHROPIC_AUTH_TOKEN"] == agents.PLACEHOLDER_TOKEN
    for role in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                 "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert exports[role] == "qwen3:8b", role
    # Nothing goes to Anthropic, and the prompt starts the same from one session to the next.
    assert exports["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert exports["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    assert unsets == {"ANTHROPIC_API_KEY"}
    assert command == ["claude"]


def test_codex_gets_a_responses_provider_for_this_server_on_its_command_line() -> None:
    exports, _, command = printed("codex", "-m", "qwen3:8b", "--host", "10.1.2.3:8080", "--", "exec", "Say hi.")
    assert command[0] == "codex" and command[-4:] == ["-m", "qwen3:8b", "exec", "Say hi."]
    overrides = [command[i + 1] for i, arg in enumerate(command) if arg == "-c"]
    config = tomllib.loads("\n".join(overrides))
    assert config["model_provider"] == "mlxserve"
    assert config["model_providers"]["mlxserve"] == {
        "name": "mlxserve", "base_url": "http://10.1.2.3:8080/v1", "wire_api": "responses"}
    assert exports == {}  # no key on the server: Codex sends none


def test_the_servers_api_key_becomes_each_agents_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXSERVE_API_KEY", "s3cret")
    claude_env, _, _ = printed("claude", "-m", "m")
    assert claude_env["ANTHROPIC_AUTH_TOKEN"] == "s3cret"
    codex_env, _, command = printed("codex", "-m", "m")
    provider = tomllib.loads(command[command.index("-c", 2) + 1])["model_providers"]["mlxserve"]
    assert provider["env_key"] == "MLXSERVE_API_KEY" and codex_env == {"MLXSERVE_API_KEY": "s3cret"}


def test_launch_runs_the_agent_with_its_arguments_in_that_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict = {}
    monkeypatch.setattr(agents.shutil, "which", lambda name: f"/usr/local/bin/{name}")
    monkeypatch.setattr(agents.os, "execvpe", lambda file, argv, env: ran.update(file=file, argv=argv, env=env))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-personal")
    monkeypatch.setenv("EDITOR", "vi")
    out = runner.invoke(app, ["launch", "claude", "--model", "gemma3:270m", "--", "-p", "Say hello.", "--max-turns", "1"])
    assert out.exit_code == 0, out.output
    assert ran["file"] == "claude" and ran["argv"] == ["claude", "-p", "Say hello.", "--max-turns", "1"]
    env = ran["env"]
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:11500" and env["ANTHROPIC_MODEL"] == "gemma3:270m"
    assert "ANTHROPIC_API_KEY" not in env  # a personal Anthropic key never goes to the local server
    assert env["EDITOR"] == "vi"  # the rest of the user's environment is kept


def test_a_missing_agent_is_named_with_the_command_that_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents.shutil, "which", lambda name: None)
    out = runner.invoke(app, ["launch", "codex", "-m", "m"])
    assert out.exit_code == 3
    assert "codex is not on PATH; install it with `npm install -g @openai/codex`" in out.output


def test_an_unknown_agent_is_refused_naming_the_ones_there_are() -> None:
    out = runner.invoke(app, ["launch", "cursor", "-m", "m"])
    assert out.exit_code == 2 and "no agent named 'cursor'; choose one of claude, codex" in out.output
