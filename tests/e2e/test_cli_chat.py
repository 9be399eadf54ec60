"""`mlxctl chat` typed into a pseudo-terminal the way a person does, and `mlxctl run`'s flags,
against the real system (the tiny random model wherever the words do not matter)."""

from __future__ import annotations

import json
import time
from typing import Iterator

import pexpect
import pytest

from tests.e2e.conftest import SMOL, TINY
from tests.e2e.harness import MLXCTL, System

PROMPT = ">>> "


def spawn(system: System, *args: str) -> pexpect.spawn:
    """`mlxctl ARGS` on a terminal, waiting for its first prompt."""
    env = {**system.env(), "TERM": "xterm"}
    child = pexpect.spawn(MLXCTL[0], list(args), env=env, encoding="utf-8", timeout=60, dimensions=(40, 300))
    child.expect_exact(PROMPT)
    return child


def say(child: pexpect.spawn, line: str, expect: str | None = None) -> str:
    """Type `line` and Enter; wait for `expect` (if given) and the next prompt; the text in between."""
    child.sendline(line)
    if expect is not None:
        child.expect_exact(expect)
    child.expect_exact(PROMPT)
    return child.before


def leave(child: pexpect.spawn) -> int:
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


@pytest.fixture
def chat(system: System) -> Iterator[pexpect.spawn]:
    child = spawn(system, "chat", TINY)
    say(child, "/set parameter num_predict 8", "Set parameter 'num_predict' to '8'")
    say(child, "/set parameter seed 7", "Set parameter 'seed' to '7'")
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_a_message_gets_an_answer_and_the_prompt_comes_back_and_bye_exits_0(chat: pexpect.spawn) -> None:
    shown = say(chat, "hello there")
    answer = shown.split("hello there", 1)[1].strip()
    assert answer, f"no answer printed: {shown!r}"
    assert leave(chat) == 0


def test_system_message_show_and_clear(chat: pexpect.spawn) -> None:
    say(chat, "/set system You are a terse pirate.", "Set system message.")
    assert "You are a terse pirate." in say(chat, "/show system")
    assert "num_predict" in say(chat, "/show parameters", "User defined parameters:")
    assert "architecture" in say(chat, "/show info")
    say(chat, "/clear", "Cleared session context")
    assert "Unknown command '/frob'" in say(chat, "/frob")
    assert leave(chat) == 0


def test_save_keeps_the_multi_line_message_system_and_parameters_then_clear_forgets(system: System, chat: pexpect.spawn) -> None:
    saved, cleared = "chat-saved:e2e", "chat-cleared:e2e"
    try:
        say(chat, "/set system Be brief.", "Set system message.")
        chat.sendline('"""first line')
        chat.expect_exact("... ")
        say(chat, 'second line"""')
        say(chat, f"/save {saved}", f"Created new model '{saved}'")
        say(chat, "/clear", "Cleared session context")
        say(chat, f"/save {cleared}", f"Created new model '{cleared}'")
        assert leave(chat) == 0

        listed = system.mlxctl("list")
        assert saved in listed.stdout and cleared in listed.stdout
        shown = json.loads(system.mlxctl("show", saved, "--json").stdout)
        assert shown["system"] == "Be brief."
        assert ["num_predict", "8"] in [line.split() for line in shown["parameters"].splitlines()]
        assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
        assert shown["messages"][0]["content"] == "first line\nsecond line"
        assert "messages" not in json.loads(system.mlxctl("show", cleared, "--json").stdout)
    finally:
        system.mlxctl("rm", saved, cleared)


def test_load_switches_to_another_model_and_an_unknown_one_is_refused(system: System, chat: pexpect.spawn) -> None:
    assert "Error: model 'ghost:latest' not found; `mlxctl list` shows the models here" in say(chat, "/load ghost")
    say(chat, f"/load {SMOL}", f"Loading model '{SMOL}'")
    assert SMOL in system.mlxctl("ps").stdout  # /load started its worker
    assert leave(chat) == 0


def finished_requests(system: System) -> list[dict]:
    """The tiny worker's `finished` log events (one per request, with its eval_count and done_reason)."""
    log = system.home / "logs" / "worker-tiny_latest.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == "finished"]


def test_ctrl_c_stops_an_answer_and_returns_to_the_prompt(system: System, chat: pexpect.spawn) -> None:
    # JSON mode with greedy decoding keeps the random model going to num_predict: seconds of output.
    say(chat, "/set parameter num_predict 2000")
    say(chat, "/set parameter temperature 0")
    say(chat, "/set format json")
    before = len(finished_requests(system))
    chat.sendline("go on and on")
    chat.expect_exact("{")
    started = time.monotonic()
    chat.sendintr()
    chat.expect_exact(PROMPT, timeout=10)
    assert time.monotonic() - started < 2.0
    deadline = time.monotonic() + 5
    while len(finished_requests(system)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = finished_requests(system)[-1]
    assert stopped["eval_count"] < 2000 and stopped["done_reason"] != "length", stopped  # the server stopped too
    say(chat, "/set noformat", "Disabled format.")
    say(chat, "/set parameter num_predict 4")
    assert leave(chat) == 0


def test_history_is_kept_and_the_up_arrow_recalls_the_last_line(system: System) -> None:
    child = spawn(system, "chat", TINY)
    say(child, "/set parameter num_predict 3", "Set parameter 'num_predict' to '3'")
    child.sendeof()  # Ctrl-D leaves like /bye
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (system.home / "history").read_text().splitlines()[-1] == "/set parameter num_predict 3"

    again = spawn(system, "chat", TINY)
    again.send("\x1b[A")  # up arrow
    again.sendline("")
    again.expect_exact("Set parameter 'num_predict' to '3'")
    again.expect_exact(PROMPT)
    assert leave(again) == 0


def test_run_without_a_prompt_on_a_terminal_chats(system: System) -> None:
    child = spawn(system, "run", TINY, "-o", "num_predict=4")
    say(child, "/show parameters", "num_predict")
    assert leave(child) == 0


def test_chat_with_an_unknown_model_exits_with_the_not_found_code(system: System) -> None:
    result = system.mlxctl("chat", "ghost")
    assert result.returncode == 3
    assert result.stderr.strip() == "Error: model 'ghost:latest' not found; `mlxctl list` shows the models here"


# -- run's flags --------------------------------------------------------------------------------------------


def test_run_format_json_answers_json(system: System) -> None:
    """JSON mode constrains every token, so the answer opens a JSON object, and one that ends before
    num_predict cuts it (the model chose to stop) parses whole."""
    whole = 0
    for seed in range(1, 7):
        result = system.mlxctl("run", TINY, f"hi {seed}", "--format", "json", "-o", "num_predict=200", "-o", f"seed={seed}",
                               "--verbose")
        assert result.returncode == 0, result.stderr
        assert result.stdout.lstrip().startswith("{"), result.stdout
        eval_count = int(next(line for line in result.stderr.splitlines() if line.startswith("eval count:")).split()[2])
        if eval_count < 200:
            json.loads(result.stdout)
            whole += 1
            if whole == 2:
                break
    assert whole, "no JSON answer ended within 200 tokens"


def test_run_verbose_prints_timings(system: System) -> None:
    result = system.mlxctl("run", TINY, "hi", "-o", "num_predict=4", "--verbose", "--keepalive", "1m")
    assert result.returncode == 0, result.stderr
    for label in ("total duration:", "load duration:", "prompt eval count:", "eval count:", "eval rate:"):
        assert label in result.stderr


def test_run_think_on_a_model_that_cannot_think_is_one_line_and_a_bad_input_exit(system: System) -> None:
    result = system.mlxctl("run", TINY, "hi", "--think")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and line.endswith("does not support thinking")
    assert system.mlxctl("run", TINY, "hi", "--no-think", "-o", "num_predict=2").returncode == 0
