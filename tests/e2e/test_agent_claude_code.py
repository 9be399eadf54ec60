"""Claude Code (`@anthropic-ai/claude-code` 2.1.x from npm, pinned in tests/clients), unmodified, on
the real system through Anthropic's Messages API (issue 17), offline and non-interactive
(`claude -p PROMPT --max-turns 1`; tests/e2e/agent_sandbox.py: a scratch HOME, the network limited
to loopback where a namespace can be made, and a proxy trap that fails the test if Claude Code
tries to reach anything else).

Claude Code sends one streamed `POST /v1/messages?beta=true` per turn (tests/data/agents/ has the
two shapes):
- the minimal form (`--bare --system-prompt ... --tools ""`: 1.2 KB, no tools) on the demo model,
  started through `mlxctl launch claude`, so the environment that verb sets is what is tested;
- the full default form (76 KB, ~19k tokens: three system blocks, 24 tools, a system message after
  the user turn, adaptive thinking, `max_tokens: 32000`) on Gemma 3 270M, the real GGUF with a
  32k context, twice: the second run's prompt is the first one's, and comes from the prefix cache.
  Gemma's template has no tools, so the model is made here from the GGUF with a Gemma template
  that lists tools (Hermes-style `<tool_call>` calls), greedy, and answering one line (a base model
  would otherwise run to `max_tokens`, which Claude Code retries and then reports as an error).

Claude Code stops with an error when an answer ends at `max_tokens`, so each run caps its output
(CLAUDE_CODE_MAX_OUTPUT_TOKENS) well above what the answer takes. What is checked is what a user
sees: Claude Code exits 0 and prints exactly the text the server streamed to it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_sandbox import NODE_BIN, AgentRun, AgentSandbox, cli_binary
from tests.e2e.conftest import SMOL
from tests.e2e.harness import MLXCTL, System, http_json

pytestmark = pytest.mark.timeout(1800)

GEMMA = "claude-gemma3:270m"
PROMPT = "Say hello in one short sentence."
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."
RUN_TIMEOUT_S = 1200  # the full form's first turn prefills ~19k tokens on two shared CPU cores
MAX_OUTPUT = "400"    # the cap on an answer: far above a one-line answer, far below the context

# Gemma 3's turns, with the tools listed before the first user message and the system prompt
# (Gemma has no system role: the first system message opens the first user turn, later ones are
# user turns of their own, so an earlier prefix never changes).
GEMMA_TOOLS_TEMPLATE = r"""{{- bos_token -}}
{%- set ns = namespace(preamble='', first=true) -%}
{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.preamble = messages[0]['content'] -%}{%- endif -%}
{%- if tools -%}
{%- set ns.preamble = ns.preamble + '\n\n# Tools\n\nTo call a tool, answer with <tool_call>{"name": <tool name>, "arguments": <arguments object>}</tool_call>. The tools:\n<tools>' -%}
{%- for tool in tools -%}{%- set ns.preamble = ns.preamble + '\n' + (tool | tojson) -%}{%- endfor -%}
{%- set ns.preamble = ns.preamble + '\n</tools>' -%}
{%- endif -%}
{%- for message in messages -%}
{%- if loop.first and message['role'] == 'system' -%}
{%- elif message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\n' + ((message['content'] or '') | trim) -}}
{%- for call in message.tool_calls or [] -%}
{%- if call.function is defined -%}{%- set call = call.function -%}{%- endif -%}
{{- '<tool_call>{"name": "' + call.name + '", "arguments": ' + (call.arguments | tojson) + '}</tool_call>' -}}
{%- endfor -%}
{{- '<end_of_turn>\n' -}}
{%- elif message['role'] == 'tool' -%}
{{- '<start_of_turn>user\n<tool_response>\n' + message['content'] + '\n</tool_response><end_of_turn>\n' -}}
{%- else -%}
{%- if ns.first and ns.preamble -%}{%- set text = ns.preamble + '\n\n' + message['content'] -%}{%- else -%}{%- set text = message['content'] -%}{%- endif -%}
{%- set ns.first = false -%}
{{- '<start_of_turn>user\n' + (text | trim) + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"""


@pytest.fixture(scope="module", autouse=True)
def messages_api(system: System) -> None:
    """Fail every test here, clearly, while the gateway has no Messages API."""
    status, body = http_json("POST", f"{system.url}/v1/messages", {
        "model": SMOL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
    if status == 404 and SMOL not in json.dumps(body):
        pytest.fail(f"the gateway has no POST /v1/messages (issue 17 item 1), which Claude Code needs: {body}")


@pytest.fixture(scope="module")
def sandbox(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentSandbox]:
    box = AgentSandbox(system.url, tmp_path_factory.mktemp("claude-sandbox"))
    yield box
    box.close()


@pytest.fixture(scope="module")
def gemma3_tools(system: System, gemma3_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Gemma 3 270M (32k context) from the real GGUF, under a template that takes tools."""
    modelfile = tmp_path_factory.mktemp("claude-gemma3") / "Modelfile"
    modelfile.write_text(f'FROM {gemma3_gguf}\nTEMPLATE """{GEMMA_TOOLS_TEMPLATE}"""\n'
                         'PARAMETER temperature 0\nPARAMETER stop """\n"""\n')
    out = system.mlxctl("create", GEMMA, "-f", str(modelfile), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    yield GEMMA
    system.mlxctl("stop", GEMMA)
    system.mlxctl("rm", GEMMA)


def claude_env(sandbox: AgentSandbox) -> dict[str, str]:
    """What the issue names, plus the output cap."""
    return {"ANTHROPIC_BASE_URL": sandbox.url, "ANTHROPIC_AUTH_TOKEN": "mlxserve", "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": MAX_OUTPUT}


def usage(run: AgentRun) -> dict[str, int]:
    """The turn's usage as Claude Code reads it: message_start's, updated by message_delta's."""
    [turn] = run.posts("/v1/messages")
    got: dict[str, int] = {}
    for name, data in turn.sse():
        if name == "message_start":
            got.update(data["message"]["usage"])
        elif name == "message_delta":
            got.update({k: v for k, v in data.get("usage", {}).items() if v is not None})
    return got


def check_answered(run: AgentRun, model: str) -> dict:
    """Claude Code exited 0 after one turn and printed what the server streamed; the request it sent."""
    assert not run.egress, f"Claude Code tried to reach past loopback: {run.egress}\n{run.describe()}"
    assert run.returncode == 0, run.describe()
    turns = run.posts("/v1/messages")
    assert len(turns) == 1 and turns[0].status == 200, run.describe()
    events = turns[0].sse()
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop", run.describe()
    [reason] = [data["delta"]["stop_reason"] for name, data in events if name == "message_delta"]
    assert reason in ("end_turn", "stop_sequence"), run.describe()
    streamed = "".join(data["delta"]["text"] for name, data in events
                       if name == "content_block_delta" and data["delta"]["type"] == "text_delta")
    assert streamed.strip(), run.describe()
    assert run.stdout.strip() == streamed.strip(), run.describe()
    request = turns[0].json()
    assert request["model"] == model and request["stream"] is True
    return request


def test_claude_code_minimal_form_answers_on_the_demo_model_through_mlxctl_launch(sandbox: AgentSandbox,
                                                                                  tmp_path: Path) -> None:
    cli_binary("claude")
    argv = [*MLXCTL, "launch", "claude", "--model", SMOL, "--host", sandbox.url, "--",
            "-p", PROMPT, "--max-turns", "1", "--bare", "--system-prompt", SYSTEM_PROMPT, "--tools", ""]
    env = {"PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": MAX_OUTPUT}
    run = sandbox.run(argv, home=tmp_path / "home", env=env, cwd=tmp_path / "project", timeout=RUN_TIMEOUT_S)
    print(f"\nclaude --bare on {SMOL}: {run.seconds:.1f} s, isolated={run.isolated}, usage={usage(run)}")
    request = check_answered(run, SMOL)
    assert request["tools"] == [] and SYSTEM_PROMPT in [block["text"] for block in request["system"]]


@pytest.fixture(scope="module")
def full_form(sandbox: AgentSandbox, gemma3_tools: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Claude Code's default request, run as a user would in one project: a HOME and a working
    directory kept across runs (the prompt names both)."""
    home = tmp_path_factory.mktemp("claude-home")

    def run() -> AgentRun:
        argv = [str(cli_binary("claude")), "-p", PROMPT, "--model", gemma3_tools, "--max-turns", "1"]
        return sandbox.run(argv, home=home, env=claude_env(sandbox), cwd=home / "project", timeout=RUN_TIMEOUT_S)

    yield run


@pytest.fixture(scope="module")
def first_full_run(full_form) -> AgentRun:
    started = time.monotonic()
    run = full_form()
    print(f"\nclaude (default form) on {GEMMA}, first run: {time.monotonic() - started:.1f} s, "
          f"isolated={run.isolated}, usage={usage(run)}")
    return run


def test_claude_code_default_form_answers_on_gemma3(first_full_run: AgentRun) -> None:
    request = check_answered(first_full_run, GEMMA)
    assert len(request["tools"]) >= 20 and len(request["system"]) == 3 and request["max_tokens"] == int(MAX_OUTPUT)
    counted = usage(first_full_run)
    prompt = counted.get("input_tokens", 0) + counted.get("cache_creation_input_tokens", 0) + counted.get("cache_read_input_tokens", 0)
    assert prompt > 10_000, counted  # the whole agent prompt reached the model, none of it cut


def test_claude_code_second_run_reads_its_prompt_from_the_prefix_cache(first_full_run: AgentRun, full_form) -> None:
    check_answered(first_full_run, GEMMA)
    started = time.monotonic()
    second = full_form()
    seconds = time.monotonic() - started
    counted = usage(second)
    print(f"\nclaude (default form) on {GEMMA}, second run: {seconds:.1f} s (first {first_full_run.seconds:.1f} s), "
          f"usage={counted}")
    check_answered(second, GEMMA)
    prompt = counted.get("input_tokens", 0) + counted.get("cache_creation_input_tokens", 0) + counted.get("cache_read_input_tokens", 0)
    assert counted.get("cache_read_input_tokens", 0) >= 0.9 * prompt, counted
    # Greedy, on the same prompt: the same answer.
    assert second.stdout.strip() == first_full_run.stdout.strip()
