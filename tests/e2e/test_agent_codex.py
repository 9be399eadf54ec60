"""Codex CLI (`@openai/codex` from npm, pinned in tests/clients), unmodified, completes a one-turn
prompt on the real system (issue 17): in `--oss` mode, its Ollama provider (GET /v1/models,
/api/version, /api/tags, then a streamed POST /v1/responses), and with a custom Responses provider
from config.toml (`wire_api = "responses"`, an `env_key` whose value goes out as the Bearer token).

Codex sends eight tools and ~6k tokens of instructions with every turn, so the model must take
tools (the demo SmolLM2 does not: its template never mentions them, and a tools request is a 400,
as on Ollama). It runs here on the demo weights under the Hermes-style template the client tests
use, made through the store from a Modelfile that also makes it greedy, so its answer is short and
fixed. Codex runs offline (tests/e2e/agent_sandbox.py): a scratch HOME, the network limited to
loopback where a namespace can be made, and the proxies pointed at a trap that fails the test if
Codex tries to reach anything else. Its config turns off the features that call home (plugin
marketplaces on github.com, apps on chatgpt.com, update checks, analytics).

What is checked is what a user sees: Codex exits 0 and prints, as its final message, exactly the
text that the server streamed to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_sandbox import AgentRun, AgentSandbox, cli_binary
from tests.e2e.harness import System
from tests.fixtures.templates import TOOLS_TEMPLATE

pytestmark = pytest.mark.timeout(900)

MODEL = "codex-smollm2:135m"
PROMPT = "Say hello."
RUN_TIMEOUT_S = 600  # a cold first turn prefills ~6k tokens on two shared CPU cores

# Codex as a user runs it against a local server, less everything that reaches the internet.
QUIET_CONFIG = """\
check_for_update_on_startup = false
web_search = "disabled"

[analytics]
enabled = false

[feedback]
enabled = false

[agents]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
tool_suggest = false
goals = false
image_generation = false
computer_use = false
browser_use = false
in_app_browser = false
"""


@pytest.fixture(scope="module")
def codex_model(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo weights with a template that takes tools, greedy and short."""
    modelfile = tmp_path_factory.mktemp("codex-model") / "Modelfile"
    modelfile.write_text(f'FROM smollm2:135m\nTEMPLATE """{TOOLS_TEMPLATE}"""\n'
                         "PARAMETER temperature 0\nPARAMETER num_predict 48\n")
    out = system.mlxctl("create", MODEL, "-f", str(modelfile), timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    yield MODEL
    system.mlxctl("stop", MODEL)
    system.mlxctl("rm", MODEL)


@pytest.fixture(scope="module")
def sandbox(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentSandbox]:
    box = AgentSandbox(system.url, tmp_path_factory.mktemp("codex-sandbox"))
    yield box
    box.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch HOME and project for the module: Codex's prompt names both, so the second run's
    prompt starts as the first one's did and the server's prefix cache serves it."""
    return tmp_path_factory.mktemp("codex-home")


def run_codex(sandbox: AgentSandbox, home: Path, config: str, args: list[str], env: dict[str, str]) -> AgentRun:
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(config)
    argv = [str(cli_binary("codex")), "exec", "--skip-git-repo-check", *args, PROMPT]
    run = sandbox.run(argv, home=home, env=env, cwd=home / "project", timeout=RUN_TIMEOUT_S)
    usage = [data["response"].get("usage") for e in run.posts("/v1/responses") for name, data in e.sse()
             if name == "response.completed"]
    print(f"\ncodex {' '.join(args)}: {run.seconds:.1f} s, isolated={run.isolated}, usage={usage}, "
          f"requests: {[(e.method, e.path, e.status) for e in run.exchanges]}")
    return run


def streamed_answer(run: AgentRun) -> str:
    """The text of the one /v1/responses answer, as the server streamed it."""
    [turn] = run.posts("/v1/responses")
    assert turn.status == 200, run.describe()
    events = turn.sse()
    assert events[-1][0] == "response.completed", run.describe()
    return "".join(data["delta"] for name, data in events if name == "response.output_text.delta")


def check_answered(run: AgentRun) -> None:
    assert not run.egress, f"Codex tried to reach past loopback: {run.egress}\n{run.describe()}"
    assert run.returncode == 0, run.describe()
    answer = streamed_answer(run)
    assert answer.strip(), run.describe()
    # `codex exec` prints the agent's last message alone on stdout.
    assert run.stdout.strip() == answer.strip(), run.describe()


def test_codex_oss_mode_answers_through_the_ollama_provider(sandbox: AgentSandbox, codex_model: str, home: Path) -> None:
    run = run_codex(sandbox, home, QUIET_CONFIG, ["--oss", "--local-provider", "ollama", "-m", codex_model],
                    {"CODEX_OSS_BASE_URL": sandbox.url + "/v1"})
    check_answered(run)
    # The provider checks the server and finds the model before the turn (no pull).
    paths = [(e.method, e.path.split("?")[0]) for e in run.exchanges]
    assert ("GET", "/api/tags") in paths and ("POST", "/api/pull") not in paths, run.describe()
    assert all(e.status == 200 for e in run.exchanges), run.describe()


def test_codex_answers_through_a_custom_responses_provider(sandbox: AgentSandbox, codex_model: str, home: Path) -> None:
    config = (f'model_provider = "mlxserve"\n{QUIET_CONFIG}\n'
              "[model_providers.mlxserve]\n"
              'name = "mlxserve"\n'
              f'base_url = "{sandbox.url}/v1"\n'
              'wire_api = "responses"\n'
              'env_key = "MLXSERVE_API_KEY"\n')
    run = run_codex(sandbox, home, config, ["-m", codex_model], {"MLXSERVE_API_KEY": "mlxserve"})
    check_answered(run)
    assert [(e.method, e.path) for e in run.exchanges] == [("POST", "/v1/responses")], run.describe()
    request = run.exchanges[0].json()
    assert request["model"] == codex_model and request["stream"] is True and request["tools"], request.keys()
