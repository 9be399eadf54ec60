"""`mlxctl chat`'s session logic without a terminal, and its loop against a fake gateway."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from mlxserve.cli.chat import ChatSession, InputAssembler, repl
from mlxserve.cli import gateway_client
from mlxserve.cli.gateway_client import GatewayClient
from mlxserve.cli.render import AnswerWriter
from mlxserve.cli.main import app
from mlxserve.services.common.config import load_settings
from tests.fixtures.http_gateway import InProcessGateway, Unreachable

runner = CliRunner()


# -- multi-line input ----------------------------------------------------------------------------------


def feed_all(lines: list[str]) -> list[str]:
    assembler, out = InputAssembler(), []
    for line in lines:
        text = assembler.feed(line)
        if text is not None:
            out.append(text)
    return out


def test_a_triple_quoted_block_becomes_one_message_with_its_newlines() -> None:
    assert feed_all(['"""Dear model,', "two lines", 'and the end."""', "next"]) == [
        "Dear model,\ntwo lines\nand the end.", "next"]


def test_a_block_opened_on_its_own_line_starts_with_the_next_line() -> None:
    assert feed_all(['"""', "first", "second", '"""']) == ["first\nsecond\n"]


def test_quotes_opening_and_closing_one_line_are_just_that_line() -> None:
    assert feed_all(['"""one line"""']) == ["one line"]


def test_the_continuation_prompt_shows_while_a_block_is_open() -> None:
    assembler = InputAssembler()
    assembler.feed('"""open')
    assert assembler.pending
    assembler.feed('closed"""')
    assert not assembler.pending


def test_a_multi_line_system_message_keeps_its_lines() -> None:
    session = ChatSession(model="m")
    (text,) = feed_all(['/set system """You are terse.', 'Answer in French."""'])
    session.command(text)
    assert session.system == "You are terse.\nAnswer in French."


# -- commands and the request body ---------------------------------------------------------------------


def test_set_parameter_types_the_value_and_sends_it_as_an_option() -> None:
    session = ChatSession(model="m")
    assert session.command("/set parameter num_predict 8").arg == "Set parameter 'num_predict' to '8'"
    session.command("/set parameter temperature 0.5")
    session.command("/set parameter stop END <|x|>")
    assert session.chat_body("hi")["options"] == {"num_predict": 8, "temperature": 0.5, "stop": ["END", "<|x|>"]}


def test_an_unknown_or_mistyped_parameter_is_refused_with_a_line_not_set() -> None:
    session = ChatSession(model="m")
    assert "unknown parameter 'nope'" in session.command("/set parameter nope 1").arg
    assert "must be an integer" in session.command("/set parameter num_predict lots").arg
    assert session.command("/set parameter num_predict").arg.startswith("Usage: /set parameter")
    assert "options" not in session.chat_body("hi")


def test_set_system_format_think_and_keepalive_shape_the_chat_request() -> None:
    session = ChatSession(model="m", keepalive="5m")
    session.command("/set system Be brief.")
    session.command("/set format json")
    session.command("/set think")
    body = session.chat_body("hi")
    assert body == {"model": "m", "stream": True, "format": "json", "think": True, "keep_alive": "5m",
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    session.command("/set nothink")
    session.command("/set noformat")
    assert session.chat_body("hi")["think"] is False
    assert "format" not in session.chat_body("hi")


def test_set_format_other_than_json_is_refused() -> None:
    session = ChatSession(model="m")
    assert "Invalid or missing format" in session.command("/set format yaml").arg
    assert session.format is None


def test_the_conversation_is_sent_with_each_turn_and_clear_forgets_it_but_not_the_settings() -> None:
    session = ChatSession(model="m", system="S", options={"num_predict": 4})
    session.record("one", "answer one")
    assert [m["content"] for m in session.chat_body("two")["messages"]] == ["S", "one", "answer one", "two"]
    assert session.command("/clear").arg == "Cleared session context"
    body = session.chat_body("three")
    assert [m["content"] for m in body["messages"]] == ["S", "three"]
    assert body["options"] == {"num_predict": 4}


def test_save_creates_a_model_from_this_one_with_system_parameters_and_conversation() -> None:
    session = ChatSession(model="tiny:latest", system="Be brief.", options={"num_predict": 8})
    session.record("hello", "hi there", thinking="the user greets")
    assert session.command("/save mine").kind == "save"
    assert session.save_body("mine") == {
        "model": "mine", "from": "tiny:latest", "stream": True, "system": "Be brief.", "parameters": {"num_predict": 8},
        "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}],
    }


def test_verbose_and_quiet_toggle_timings() -> None:
    session = ChatSession(model="m")
    session.command("/set verbose")
    assert session.verbose
    session.command("/set quiet")
    assert not session.verbose


@pytest.mark.parametrize("line, kind", [("/bye", "bye"), ("/load other", "load"), ("/show system", "show"),
                                        ("hello", "chat"), ("   ", "none"), ("/?", "say"), ("/help", "say")])
def test_inputs_map_to_actions(line: str, kind: str) -> None:
    assert ChatSession(model="m").command(line).kind == kind


def test_an_unknown_command_gets_a_one_line_hint() -> None:
    assert ChatSession(model="m").command("/frobnicate now").arg == "Unknown command '/frobnicate'. Type /? for help"
    assert "Unknown /set option 'colour'" in ChatSession(model="m").command("/set colour red").arg
    assert ChatSession(model="m").command("/show nonsense").arg.startswith("Available Commands:")
    assert ChatSession(model="m").command("/load").arg.startswith("Usage:")


def test_show_prefers_the_session_system_and_lists_both_kinds_of_parameters() -> None:
    shown = {"system": "model system", "parameters": "temperature 0.7", "template": "{{ x }}"}
    session = ChatSession(model="m")
    assert session.show("system", shown) == "model system"
    session.command("/set system mine")
    assert session.show("system", shown) == "mine"
    session.command("/set parameter num_predict 8")
    assert session.show("parameters", shown).splitlines() == [
        "Model defined parameters:", "temperature 0.7", "User defined parameters:", f"{'num_predict':<30} 8"]
    assert session.show("license", shown) == "No license was specified for this model."
    assert session.show("template", shown) == "{{ x }}"


def test_show_info_prints_the_models_facts() -> None:
    shown = {"details": {"family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
             "model_info": {"general.architecture": "llama", "llama.context_length": 2048}, "capabilities": ["completion"]}
    text = ChatSession(model="m").show("info", shown)
    assert "architecture" in text and "llama" in text and "2048" in text and "completion" in text


def test_thinking_is_printed_apart_before_the_answer() -> None:
    out = io.StringIO()
    writer = AnswerWriter(out)
    writer.add(thinking="Hmm, ")
    writer.add(thinking="a greeting.")
    writer.add(content="Hello!")
    writer.finish()
    assert out.getvalue() == "Thinking...\nHmm, a greeting.\n...done thinking.\n\nHello!\n"
    assert (writer.thinking, writer.content) == ("Hmm, a greeting.", "Hello!")


# -- the loop against a fake gateway ---------------------------------------------------------------------


class FakeGateway:
    """Answers /api/show, /api/chat (NDJSON; empty messages = load), /api/generate and /api/create, in-process."""

    url = "http://gateway.test"

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.handler = InProcessGateway(self.answer)

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict | list[dict], dict[str, str]]:
        assert body is not None
        self.requests.append((path, body))
        if body.get("model") == "ghost":
            return 404, {"error": "model 'ghost' not found"}, {}
        if path == "/api/show":
            return 200, {"system": "model system", "parameters": "temperature 0.7"}, {}
        if path == "/api/chat" and not body["messages"]:
            return 200, {"model": body["model"], "done": True, "done_reason": "load"}, {}
        if path == "/api/create":
            return 200, [{"status": "writing manifest"}, {"status": "success"}], {}
        if path == "/api/generate":
            return 200, [{"thinking": "Hmm.", "response": "", "done": False}, {"response": "{}", "done": False},
                         {"response": "", "done": True}], {}
        last = body["messages"][-1]["content"]
        return 200, [{"message": {"role": "assistant", "content": "You said: "}, "done": False},
                     {"message": {"role": "assistant", "content": last}, "done": False},
                     {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 2,
                      "eval_duration": 10**8}], {}

    def client(self) -> GatewayClient:
        return GatewayClient.for_settings(self.url, load_settings({}), opener=self.handler.opener())

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mxchat"))
    monkeypatch.setenv("MLXSERVE_HOME", str(d))
    monkeypatch.delenv("MLXSERVE_HOST", raising=False)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gateway(home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    """The gateway every mlxctl command reaches in this test, whatever its URL."""
    fake = FakeGateway()
    monkeypatch.setattr(gateway_client, "make_opener", fake.handler.opener)
    return fake


def typed(*lines: str | type[BaseException]):
    """A stand-in for input(): returns the lines in turn, raising the exception classes given."""
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, type):
            raise item()
        return item

    return read


def test_a_conversation_streams_answers_and_sends_the_history(gateway: FakeGateway) -> None:
    session = ChatSession(model="tiny")
    out = io.StringIO()
    code = repl(session, gateway.client(), typed("hello", "again", "/bye"), out)
    assert code == 0
    assert out.getvalue() == "You said: hello\n\nYou said: again\n\n"
    _, second = gateway.requests[-1]
    assert [m["content"] for m in second["messages"]] == ["hello", "You said: hello", "again"]


def test_errors_print_one_line_and_the_session_goes_on(gateway: FakeGateway) -> None:
    session = ChatSession(model="tiny")
    out = io.StringIO()
    code = repl(session, gateway.client(), typed("/load ghost", "/nonsense", "hi"), out)
    assert code == 0  # end of input leaves like Ctrl-D
    assert out.getvalue().splitlines()[:3] == ["Error: model 'ghost' not found; `mlxctl list` shows the models here",
                                               "Unknown command '/nonsense'. Type /? for help", "You said: hi"]
    assert session.model == "tiny"


def test_ctrl_c_at_the_prompt_drops_the_open_block_and_says_how_to_leave(gateway: FakeGateway) -> None:
    out = io.StringIO()
    repl(ChatSession(model="tiny"), gateway.client(),
         typed('"""half a', KeyboardInterrupt, "fresh"), out)
    assert "Use Ctrl + d or /bye to exit." in out.getvalue()
    assert gateway.requests[-1][1]["messages"][-1]["content"] == "fresh"


def test_load_switches_model_and_save_creates_one_through_the_gateway(gateway: FakeGateway) -> None:
    session = ChatSession(model="tiny", options={"num_predict": 8})
    out = io.StringIO()
    repl(session, gateway.client(),
         typed("hello", "/save mine", "/load other", "/show system", "/set verbose", "hi"), out)
    text = out.getvalue()
    assert "Created new model 'mine'" in text and "Loading model 'other'" in text and "model system" in text
    assert "eval rate:            20.00 tokens/s" in text
    create = next(b for p, b in gateway.requests if p == "/api/create")
    assert create["from"] == "tiny" and create["parameters"] == {"num_predict": 8} and len(create["messages"]) == 2
    assert gateway.requests[-1][1]["model"] == "other"
    assert [m["content"] for m in gateway.requests[-1][1]["messages"]] == ["hi"]  # /load started afresh


# -- the command line --------------------------------------------------------------------------------------


def test_chat_with_an_unknown_model_exits_with_the_not_found_code(gateway: FakeGateway) -> None:
    result = runner.invoke(app, ["chat", "ghost"])
    assert result.exit_code == 3
    assert result.stderr.strip() == "Error: model 'ghost' not found; `mlxctl list` shows the models here"


def test_chat_with_no_server_says_how_to_start_one(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_client, "make_opener", Unreachable().opener)
    result = runner.invoke(app, ["chat", "tiny"])
    assert result.exit_code == 4
    assert "mlxserve is not running" in result.stderr and "start it with `mlxctl serve`" in result.stderr


def test_chat_loads_the_model_then_reads_input_until_its_end(gateway: FakeGateway) -> None:
    result = runner.invoke(app, ["chat", "tiny", "--keepalive", "1m", "-o", "num_predict=4"], input="hello\n")
    assert result.exit_code == 0, result.stderr
    assert "You said: hello" in result.stdout
    assert gateway.paths() == ["/api/show", "/api/chat", "/api/chat"]
    assert gateway.requests[1][1] == {"model": "tiny", "messages": [], "keep_alive": "1m"}
    assert gateway.requests[2][1]["options"] == {"num_predict": 4}


def test_run_sends_format_and_think_and_prints_thinking_apart(gateway: FakeGateway) -> None:
    result = runner.invoke(app, ["run", "tiny", "hi", "--format", "json", "--no-think"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Thinking...\nHmm.\n...done thinking.\n\n{}\n"
    assert gateway.requests == [("/api/generate", {"model": "tiny", "prompt": "hi", "stream": True, "format": "json",
                                                   "think": False})]


def test_run_refuses_a_format_other_than_json(home: Path) -> None:
    result = runner.invoke(app, ["run", "tiny", "hi", "--format", "yaml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --format takes 'json', got 'yaml'"
