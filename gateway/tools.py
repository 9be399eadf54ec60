"""Tools in every dialect → the worker's typed Tool, ToolCall and ToolChoice.

One place decides what a tool choice means: AUTO (the model decides), NONE (no call: the tools
stay out of the template), REQUIRED (a call to one of `allowed`, all tools when empty, with
arguments valid against the tool's schema: the worker enforces it by constrained decoding), and
`single` for at most one call (OpenAI's `parallel_tool_calls: false`, a named function, legacy
`function_call`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlxserve.v1.frames import ToolCall
from mlxserve.v1.requests import Tool, ToolChoice

from .request_types import FunctionDef, ToolDef
from .validation import BadField, UnsupportedField

AUTO = "auto"
NONE = "none"
REQUIRED = "required"
MODES = {"auto": AUTO, "none": NONE, "required": REQUIRED}


def function_tool(fn: FunctionDef) -> Tool:
    return Tool(name=fn.name, description=fn.description or "", parameters=fn.parameters)


def chat_tools(tools: list[ToolDef] | None, where: str = "tools") -> tuple[list[Tool], list[str]]:
    """Ollama and OpenAI chat tool definitions → (Tools, paths of `strict` flags asked for).

    Only function tools exist in these APIs' local use; a custom (free-text) tool is refused: the
    model could not call it.
    """
    out: list[Tool] = []
    strict: list[str] = []
    for i, tool in enumerate(tools or []):
        at = f"{where}[{i}]"
        if tool.type != "function":
            raise UnsupportedField(f"{at}.type", f"tools of type {tool.type!r} are not supported ('{at}.type'); use \"function\"")
        if tool.function is None:
            raise BadField(f"{at}.function", f"'{at}.function' is required")
        out.append(function_tool(tool.function))
        if tool.function.strict:
            strict.append(f"{at}.function.strict")
    return out, strict


@dataclass
class ToolPlan:
    """What a request asks about tools: the tools the model sees, the choice, and an optional call limit."""

    tools: list[Tool] = field(default_factory=list)
    mode: str = AUTO
    allowed: list[str] = field(default_factory=list)
    single: bool = False
    max_calls: int | None = None  # calls past this many are dropped (Responses' max_tool_calls)
    strict: list[str] = field(default_factory=list)  # `strict` flags, honoured only when the call is forced

    def only(self, names: list[str], where: str) -> None:
        """Keep only the tools named (OpenAI's allowed_tools)."""
        known = {t.name for t in self.tools}
        for name in names:
            if name not in known:
                raise BadField(where, f"'{where}' names {name!r}, which is not one of the request's tools")
        self.tools = [t for t in self.tools if t.name in names]

    def force(self, name: str, where: str) -> None:
        """One call to the function `name`, which must be one of the tools (OpenAI's "forced
        function": call exactly that one function, once)."""
        if name not in {t.name for t in self.tools}:
            raise BadField(where, f"'{where}' names {name!r}, which is not one of the request's tools")
        self.mode, self.allowed, self.single = REQUIRED, [name], True

    def choice(self, where: str) -> ToolChoice:
        """The ToolChoice for the worker; forcing a call with no tools to call is a 400."""
        if self.mode == REQUIRED and not self.tools:
            raise BadField(where, f"'{where}' asks for a tool call, but the request has no tools")
        return ToolChoice(mode=self.mode, allowed=tuple(self.allowed), single=self.single)

    def ignored(self) -> list[str]:
        """`strict` asks for arguments that follow the schema: only a forced call is constrained."""
        return [] if self.mode in (REQUIRED, NONE) else list(self.strict)

    @property
    def limit(self) -> int | None:
        return 1 if self.single else self.max_calls


def chat_choice(plan: ToolPlan, value: Any, where: str = "tool_choice") -> None:
    """OpenAI chat's tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
    | {"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type": "function", "function": {"name"}}]}}."""
    if value is None:
        return
    if isinstance(value, str):
        plan.mode = MODES[value]
        return
    if value.type == "function":
        if value.function is None:
            raise BadField(f"{where}.function", f"'{where}.function' is required")
        plan.force(value.function.name, f"{where}.function.name")
    elif value.type == "allowed_tools":
        if value.allowed_tools is None:
            raise BadField(f"{where}.allowed_tools", f"'{where}.allowed_tools' is required")
        names = [_tool_name(t, f"{where}.allowed_tools.tools[{i}]", nested=True) for i, t in enumerate(value.allowed_tools.tools)]
        plan.only(names, f"{where}.allowed_tools.tools")
        plan.mode = MODES[value.allowed_tools.mode]
    elif value.type == "custom":
        raise UnsupportedField(f"{where}.type", f"'{where}': custom tools are not supported; use function tools")
    else:
        raise BadField(f"{where}.type", f"'{where}.type' must be \"function\" or \"allowed_tools\"; got {value.type!r}")


def responses_choice(plan: ToolPlan, value: Any, where: str = "tool_choice") -> None:
    """The Responses API's tool_choice: "auto" | "none" | "required" | {"type": "function", "name"}
    | {"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}]}; forcing a hosted tool is refused."""
    if value is None:
        return
    if isinstance(value, str):
        plan.mode = MODES[value]
        return
    if value.type == "function":
        if not value.name:
            raise BadField(f"{where}.name", f"'{where}.name' is required")
        plan.force(value.name, f"{where}.name")
    elif value.type == "allowed_tools":
        if value.mode is None or value.tools is None:
            raise BadField(f"{where}.mode" if value.mode is None else f"{where}.tools",
                           f"'{where}' of type allowed_tools needs 'mode' and 'tools'")
        names = [_tool_name(t, f"{where}.tools[{i}]", nested=False) for i, t in enumerate(value.tools)]
        plan.only(names, f"{where}.tools")
        plan.mode = MODES[value.mode]
    else:
        raise UnsupportedField(f"{where}.type", f"'{where}': {value.type!r} is a hosted tool, which this server does not "
                                                "run; force a function tool instead")


def _tool_name(tool: dict[str, Any], where: str, *, nested: bool) -> str:
    """The function named by an allowed_tools entry ({"type": "function", "function": {"name"}} in chat, flat in Responses)."""
    if tool.get("type", "function") != "function":
        raise UnsupportedField(f"{where}.type", f"'{where}': only function tools can be allowed here")
    holder = tool.get("function") if nested else tool
    name = holder.get("name") if isinstance(holder, dict) else None
    if not isinstance(name, str) or not name:
        key = f"{where}.function.name" if nested else f"{where}.name"
        raise BadField(key, f"'{key}' must be a non-empty string")
    return name


def tool_call(call_id: str | None, name: str, arguments_json: str) -> ToolCall:
    return ToolCall(name=name, arguments=arguments_json or "{}", id=call_id or "")
