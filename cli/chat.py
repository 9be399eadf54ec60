"""`mlxctl chat`: an interactive conversation with a model through the gateway's /api/chat.

`ChatSession` is the conversation and its settings (system, options, format, think, verbose) and
parses the REPL's commands into `Action`s; `InputAssembler` joins `\"\"\"` multi-line blocks; both
are plain code. `GatewayClient` (gateway_client.py) is the HTTP side, and `repl` the loop that ties them to a terminal
(readline editing and history, Ctrl-C stops an answer, Ctrl-D or /bye leaves).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

import typer

from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import InvalidArgument, MlxServeError
from mlxserve.services.store.recipes import normalize_parameters
from mlxserve.v1 import common_pb2, store_pb2

from .backend import complete_model_names, exits_on_error, settings_from
from .gateway_client import GatewayClient, base_url
from .models import show_text
from .options import check_format, parse_options
from .render import AnswerWriter, print_answer, print_timings

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'
HISTORY_LENGTH = 1000
SHOW_WHAT = ("info", "parameters", "system", "template", "modelfile", "license")

HELP = """\
Available commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? set          Help for /set
  /? show         Help for /show
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message."""

HELP_SET = """\
Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set think             Enable thinking
  /set nothink           Disable thinking
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats"""

HELP_SHOW = """\
Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template"""

HELP_SHORTCUTS = """\
Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line
  Ctrl + e            Move to the end of the line
  Up/Down             Recall earlier lines (history)
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from answering
  Ctrl + d            Exit (/bye)"""

HELP_PARAMETERS = """\
Usage: /set parameter <name> <value>
  e.g. /set parameter temperature 0.2, /set parameter num_predict 64, /set parameter stop <s> <s> ..."""


@dataclass
class Action:
    """What the terminal loop does for one input: `say` prints `arg`; `chat` sends it as the user's
    turn; `show`, `load` and `save` need the server (arg: what to show, the model, the new name);
    `bye` leaves; `none` does nothing."""

    kind: str
    arg: str = ""


class InputAssembler:
    """Joins Ollama's multi-line blocks: a line starting with \"\"\" (or `/set system \"\"\"`) opens
    one, and a line ending with \"\"\" closes it; the newlines between are kept."""

    def __init__(self) -> None:
        self._prefix: str | None = None
        self._lines: list[str] = []

    @property
    def pending(self) -> bool:
        """Whether a block is open (the prompt should read as a continuation)."""
        return self._prefix is not None

    def reset(self) -> None:
        self._prefix, self._lines = None, []

    def feed(self, line: str) -> str | None:
        """One typed line in; the whole input out once it is complete, else None."""
        if self._prefix is None:
            prefix, rest = self._opening(line)
            if prefix is None:
                return line
            if len(rest.rstrip()) >= len(FENCE) and rest.rstrip().endswith(FENCE):  # """one line"""
                return prefix + rest.rstrip()[: -len(FENCE)]
            self._prefix, self._lines = prefix, ([rest] if rest else [])
            return None
        if line.rstrip().endswith(FENCE):
            self._lines.append(line.rstrip()[: -len(FENCE)])
            text = self._prefix + "\n".join(self._lines)
            self.reset()
            return text
        self._lines.append(line)
        return None

    @staticmethod
    def _opening(line: str) -> tuple[str | None, str]:
        stripped = line.lstrip()
        if stripped.startswith(FENCE):
            return "", stripped[len(FENCE):]
        head, sep, rest = line.partition(FENCE)
        if sep and head.split() == ["/set", "system"]:
            return "/set system ", rest
        return None, ""


@dataclass
class ChatSession:
    """One conversation: the model, what the user set (system, options, format, think, verbose,
    keep-alive) and the turns so far. Builds request bodies and parses REPL commands."""

    model: str
    system: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    format: Optional[str] = None
    think: Optional[bool] = None
    verbose: bool = False
    keepalive: Optional[str] = None
    messages: list[dict[str, str]] = field(default_factory=list)

    # -- requests ----------------------------------------------------------------------------------

    def chat_body(self, text: str) -> dict[str, Any]:
        """The /api/chat body that asks for an answer to `text` after the conversation so far."""
        messages = ([{"role": "system", "content": self.system}] if self.system is not None else [])
        messages += [*self.messages, {"role": "user", "content": text}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.options:
            body["options"] = dict(self.options)
        if self.format:
            body["format"] = self.format
        if self.think is not None:
            body["think"] = self.think
        if self.keepalive is not None:
            body["keep_alive"] = self.keepalive
        return body

    def load_body(self) -> dict[str, Any]:
        """Ollama's load request: /api/chat with no messages starts the model without generating."""
        body: dict[str, Any] = {"model": self.model, "messages": []}
        if self.keepalive is not None:
            body["keep_alive"] = self.keepalive
        return body

    def record(self, text: str, answer: str, thinking: str = "") -> None:
        """Keep a finished exchange (an answer stopped with Ctrl-C is not kept, nor its question)."""
        reply = {"role": "assistant", "content": answer}
        if thinking:
            reply["thinking"] = thinking
        self.messages += [{"role": "user", "content": text}, reply]

    def save_body(self, name: str) -> dict[str, Any]:
        """The /api/create body for `/save NAME`: this model with the session's system, parameters
        and conversation (as MESSAGEs, which the model then opens every chat with)."""
        body: dict[str, Any] = {"model": name, "from": self.model, "stream": True}
        if self.system is not None:
            body["system"] = self.system
        if self.options:
            body["parameters"] = dict(self.options)
        if self.messages:
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        return body

    def switch(self, model: str) -> None:
        """`/load`: another model, a fresh conversation; system and options stay."""
        self.model = model
        self.messages = []

    # -- commands ----------------------------------------------------------------------------------

    def command(self, text: str) -> Action:
        """What one complete input means: a chat turn, or a slash command's effect."""
        if not text.strip():
            return Action("none")
        if not text.startswith("/"):
            return Action("chat", text)
        words = text.split()
        verb, args = words[0].lower(), words[1:]
        if verb in ("/bye", "/exit"):
            return Action("bye")
        if verb in ("/?", "/help"):
            topic = args[0].lower() if args else ""
            return Action("say", {"set": HELP_SET, "show": HELP_SHOW, "shortcuts": HELP_SHORTCUTS}.get(topic, HELP))
        if verb == "/clear":
            self.messages = []
            return Action("say", "Cleared session context")
        if verb == "/set":
            return self._set(text, args)
        if verb == "/show":
            if len(args) != 1 or args[0].lower() not in SHOW_WHAT:
                return Action("say", HELP_SHOW)
            return Action("show", args[0].lower())
        if verb in ("/load", "/save"):
            if len(args) != 1:
                return Action("say", f"Usage:\n  {verb} <modelname>")
            return Action(verb[1:], args[0])
        return Action("say", f"Unknown command '{words[0]}'. Type /? for help")

    def _set(self, text: str, args: list[str]) -> Action:
        what = args[0].lower() if args else ""
        if what == "parameter":
            if len(args) < 3:
                return Action("say", HELP_PARAMETERS)
            name, values = args[1], args[2:]
            try:
                value = normalize_parameters({name: values if name == "stop" else " ".join(values)})[name]
            except InvalidArgument as e:
                return Action("say", f"Couldn't set parameter: {e}")
            self.options[name] = value
            return Action("say", f"Set parameter '{name}' to '{', '.join(value) if name == 'stop' else value}'")
        if what == "system":
            # Everything after `/set system`, as typed (a multi-line block keeps its newlines).
            system = text.split(None, 2)[2] if len(args) > 1 else ""
            if not system.strip():
                return Action("say", "Usage:\n  /set system <message>   or   /set system \"\"\"<message>\"\"\"")
            system = system.strip()
            if len(system) >= 2 and system[0] == system[-1] == '"':  # /set system "Be brief."
                system = system[1:-1]
            self.system = system
            return Action("say", "Set system message.")
        if what == "format":
            if args[1:] != ["json"]:
                return Action("say", "Invalid or missing format. For 'json' mode use '/set format json'")
            self.format = "json"
            return Action("say", "Set format to 'json' mode.")
        if what == "noformat":
            self.format = None
            return Action("say", "Disabled format.")
        if what in ("think", "nothink"):
            self.think = what == "think"
            return Action("say", f"Set 'think' mode to {'on' if self.think else 'off'}.")
        if what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            return Action("say", "Set 'verbose' mode." if self.verbose else "Set 'quiet' mode.")
        return Action("say", HELP_SET if not what else f"Unknown /set option '{args[0]}'. Type /? set for help")

    # -- /show ---------------------------------------------------------------------------------------

    def show(self, what: str, shown: dict[str, Any]) -> str:
        """`/show WHAT` for this session, from the model's /api/show answer: the session's own
        system and parameters count over the model's."""
        if what == "info":
            return show_text(show_response(shown))
        if what == "parameters":
            lines = []
            if shown.get("parameters"):
                lines += ["Model defined parameters:", shown["parameters"].rstrip()]
            if self.options:
                lines += ["User defined parameters:"]
                for key, value in sorted(self.options.items()):
                    for v in value if isinstance(value, list) else [value]:
                        lines.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
            return "\n".join(lines) if lines else "No parameters were specified for this model."
        if what == "system":
            system = self.system if self.system is not None else shown.get("system")
            return system or "No system message was specified for this model."
        missing = {"template": "No prompt template was specified for this model.",
                   "license": "No license was specified for this model.",
                   "modelfile": "No Modelfile is available for this model."}
        return shown.get(what) or missing[what]


def show_response(shown: dict[str, Any]) -> store_pb2.ShowResponse:
    """The gateway's /api/show JSON back as the store's ShowResponse, so `/show info` prints what
    `mlxctl show` prints."""
    details = shown.get("details") or {}
    return store_pb2.ShowResponse(
        summary=store_pb2.ModelSummary(details=common_pb2.ModelDetails(
            family=details.get("family") or "", parameter_size=details.get("parameter_size") or "",
            quantization_level=details.get("quantization_level") or "", format=details.get("format") or "",
        )),
        parameters=shown.get("parameters") or "", system=shown.get("system") or "", license=shown.get("license") or "",
        model_info_json=json.dumps(shown.get("model_info") or {}), capabilities=shown.get("capabilities") or [],
    )


# -- the terminal loop ---------------------------------------------------------------------------------


class History:
    """readline's history kept in a file: loaded at start, the new lines appended on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._start = 0
        try:
            import readline  # importing it is what gives input() line editing and arrow keys
        except ImportError:  # a Python built without readline: no history, no line editing
            self._readline = None
            return
        self._readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(str(path))
        except OSError:
            pass  # no history yet
        self._start = readline.get_current_history_length()

    def save(self) -> None:
        if self._readline is None:
            return
        new = self._readline.get_current_history_length() - self._start
        if new <= 0:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)
            self._readline.append_history_file(new, str(self.path))
        except OSError as e:
            print(f"(history not saved: {e})", file=sys.stderr)


def answer(session: ChatSession, client: GatewayClient, text: str, out: TextIO) -> None:
    """Send one turn and print the answer as it streams; keep it only if it finished."""
    writer = AnswerWriter(out)
    with client.chat(session.chat_body(text)) as chunks:
        done = print_answer(chunks, writer, chat=True)
    session.record(text, writer.content, writer.thinking)
    if session.verbose and done:
        print_timings(done, out)
    out.write("\n")


def perform(session: ChatSession, client: GatewayClient, action: Action, out: TextIO) -> bool:
    """Carry out one action; False when the session should end."""
    if action.kind == "bye":
        return False
    if action.kind == "say":
        out.write(action.arg + "\n")
    elif action.kind == "chat":
        answer(session, client, action.arg, out)
    elif action.kind == "show":
        out.write(session.show(action.arg, client.show(session.model)) + "\n")
    elif action.kind == "load":
        client.show(action.arg)  # an unknown model is refused here, and the session stays as it was
        session.switch(action.arg)
        out.write(f"Loading model '{action.arg}'\n")
        client.load(session.load_body())
    elif action.kind == "save":
        for _ in client.create(session.save_body(action.arg)):
            pass
        out.write(f"Created new model '{action.arg}'\n")
    return True


def repl(session: ChatSession, client: GatewayClient, read: Callable[[str], str] = input, out: TextIO | None = None) -> int:
    """Read inputs until /bye or end of input; an error prints one line and the loop goes on."""
    out = out or sys.stdout
    assembler = InputAssembler()
    while True:
        try:
            line = read(CONTINUATION if assembler.pending else PROMPT)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            assembler.reset()
            out.write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        text = assembler.feed(line)
        if text is None:
            continue
        try:
            if not perform(session, client, session.command(text), out):
                return 0
        except KeyboardInterrupt:
            out.write("\n")  # the answer was stopped: its connection is closed, so the server cancels it
        except MlxServeError as e:
            out.write(f"Error: {e}\n")
        out.flush()


def start_chat(session: ChatSession, url: str, settings: Settings) -> int:
    """Check the model and the server, load the model, and chat on this terminal; the exit code."""
    client = GatewayClient.for_settings(url, settings)
    client.show(session.model)  # an unknown model, or no server, ends here with its exit code
    client.load(session.load_body())
    history = History(settings.home / "history")
    try:
        return repl(session, client)
    finally:
        history.save()


@exits_on_error
def chat(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="the model to chat with", autocompletion=complete_model_names),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
    keepalive: Optional[str] = typer.Option(None, "--keepalive", help="how long the model stays loaded after this (e.g. 5m, 0, -1)"),
    option: list[str] = typer.Option([], "--option", "-o", help="a model option as KEY=VALUE; repeatable"),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="let a reasoning model think first (shown apart), or not"),
    format_: Optional[str] = typer.Option(None, "--format", help="constrain the answers: json"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings after each answer"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
) -> None:
    """Chat with a model: /? for commands, \"\"\" for multi-line input, Ctrl-C stops an answer, Ctrl-D leaves."""
    settings = settings_from(ctx)
    check_format(format_)
    session = ChatSession(model=model, system=system, options=parse_options(option), format=format_, think=think,
                          verbose=verbose, keepalive=keepalive)
    raise typer.Exit(start_chat(session, base_url(host, settings.base_url), settings))
