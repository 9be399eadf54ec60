"""Ollama Go templates converted to Jinja render the prompts Ollama renders from them.

The expected prompts are Ollama's own test data (tests/data/gotemplates, copied from Ollama's
repository with their source): its named templates on three conversations, and its library's
tool-calling templates on a conversation with tool calls and results. Templates are rendered the
way the worker renders them: transformers' chat-template renderer, with `tools` and
`enable_thinking` as keyword arguments.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.store.gotemplate import (
    bos_token_added,
    is_go_template,
    jinja_syntax_error,
    to_jinja,
    tool_parser_for,
)
from mlxserve.services.store.templates import BY_NAME, capabilities

DATA = Path(__file__).parents[1] / "data" / "gotemplates"
NAMED = sorted(p.name for p in (DATA / "template").glob("*.gotmpl"))
TOOL_TEMPLATES = sorted(p.stem for p in (DATA / "tools").glob("*.gotmpl"))

HELLO = {"role": "user", "content": "Hello, how are you?"}
GREAT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
SHOW = {"role": "user", "content": "I'd like to show off how chat templating works!"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {  # template_test.go TestTemplate
    "user": [HELLO],
    "user-assistant-user": [HELLO, GREAT, SHOW],
    "system-user-assistant-user": [SYSTEM, HELLO, GREAT, SHOW],
}
# TestTemplate drops one trailing space from these templates' output before comparing.
TRAILING_SPACE = {"chatqa.gotmpl", "llama2-chat.gotmpl", "mistral-instruct.gotmpl", "openchat.gotmpl", "vicuna.gotmpl"}


def render(template: str, messages: list[dict], tools: list[dict] | None = None, **kwargs: object) -> str:
    """What the worker's tokenizer renders: the generation prompt always on."""
    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=template,
                                       add_generation_prompt=True, **kwargs)
    return rendered[0]


def go(template: str, messages: list[dict], tools: list[dict] | None = None, **kwargs: object) -> str:
    return render(to_jinja(template), messages, tools, **kwargs)


@pytest.mark.parametrize("name", NAMED)
def test_every_template_ollama_ships_renders_the_prompts_ollama_renders(name: str) -> None:
    template = to_jinja((DATA / "template" / name).read_text())
    for case, messages in CONVERSATIONS.items():
        got = render(template, messages)
        if name in TRAILING_SPACE and got.endswith(" "):
            got = got[:-1]
        assert got == (DATA / "template" / "testdata" / name / case).read_text(), case


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_library_tool_templates_render_tools_calls_and_results_as_ollama_does(name: str) -> None:
    tools = json.loads((DATA / "tools" / "tools.json").read_text())
    messages = json.loads((DATA / "tools" / "messages.json").read_text())
    template = to_jinja((DATA / "tools" / f"{name}.gotmpl").read_text())
    assert render(template, messages, tools) == (DATA / "tools" / f"{name}.out").read_text()


MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_LEGACY_RESPONSE = MISTRAL_LEGACY + "{{ .Response }}"
MISTRAL_MESSAGES = ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
                    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
                    "{{- end }}")
FRIEND = [{"role": "user", "content": "Hello friend!"}, {"role": "assistant", "content": "Hello human!"},
          {"role": "user", "content": "What is your name?"}]


@pytest.mark.parametrize("template", [MISTRAL_LEGACY, MISTRAL_LEGACY_RESPONSE, MISTRAL_MESSAGES])
def test_legacy_prompt_response_templates_render_once_per_turn_like_messages_templates(template: str) -> None:
    # template_test.go TestExecuteWithMessages: the three forms of one template agree.
    assert go(template, FRIEND) == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    system = [{"role": "system", "content": "You are a helpful assistant!"}, *FRIEND]
    assert go(template, system) == ("[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] "
                                    "What is your name?[/INST] ")


@pytest.mark.parametrize("template", [
    "[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
    ('\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}')])
def test_an_unfinished_reply_is_continued_where_response_stands(template: str) -> None:
    messages = [*FRIEND, {"role": "assistant", "content": "My name is Ollama and I"}]
    assert go(template, messages) == ("[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
                                      "My name is Ollama and I")


def test_legacy_chatml_from_ollamas_docs_closes_earlier_turns_and_leaves_the_last_open() -> None:
    template = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
                "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
    messages = [{"role": "system", "content": "You are a helpful assistant!"}, *FRIEND]
    assert go(template, messages) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n")
    # Without {{ .Response }}, Ollama appends one at the end (template.Parse).
    docs = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
            "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")
    assert go(docs, FRIEND) == ("<|im_start|>user\nHello friend!<|im_end|>\n<|im_start|>assistant\nHello human!"
                                "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n")
    suffix = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
    assert go(suffix, [{"role": "user", "content": "hello"}]) == "hello"  # TestExecuteWithSuffix


def test_consecutive_messages_of_one_role_merge_but_tool_results_stay_apart() -> None:
    template = "{{- range .Messages }}[{{ .Role }}|{{ .Content }}|{{ .ToolName }}]{{ end }}{{ .System }}"
    messages = [{"role": "system", "content": "Be kind."}, {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}, {"role": "user", "content": "How are you?"},
                {"role": "tool", "content": "sunny", "name": "get_weather"},
                {"role": "tool", "content": "72F", "name": "get_temperature"}]
    assert go(template, messages) == ("[system|Be kind.\n\nBe brief.|][user|Hello\n\nHow are you?|]"
                                      "[tool|sunny|get_weather][tool|72F|get_temperature]Be kind.\n\nBe brief.")


CALL = [{"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"unit": "celsius", "city": "Tokyo"}}}]}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & later",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "City name", "minLength": 1},
        "days": {"type": ["integer", "null"], "enum": [1, 2]}}}}}]


def test_tool_call_arguments_print_as_json_and_range_in_key_order() -> None:
    # TestTemplateArgumentsJSON and TestTemplateArgumentsRange
    assert go("{{- range .Messages }}{{- range .ToolCalls }}{{ .Function.Arguments }} {{ json .Function.Arguments }}"
              "{{- end }}{{- end }}", CALL) == '{"city":"Tokyo","unit":"celsius"} {"city":"Tokyo","unit":"celsius"}'
    assert go("{{- range .Messages }}{{- range .ToolCalls }}{{- range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};"
              "{{- end }}{{- end }}{{- end }}", CALL) == "city=Tokyo;unit=celsius;"


def test_tools_print_as_go_encoding_json_writes_them() -> None:
    head = "{{- range .Messages }}{{- end }}"
    user = [{"role": "user", "content": "x"}]
    tool = ('{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e \\u0026 later",'
            '"parameters":{"type":"object","required":["location"],"properties":{"days":{"type":["integer","null"],'
            '"enum":[1,2]},"location":{"type":"string","description":"City name"}}}}}')
    # Struct field order, sorted property names, <>& escaped, JSON-schema keys Ollama has no field for dropped.
    assert go(head + "{{ .Tools }}|{{ json .Tools }}|{{ range .Tools }}{{ . }}{{ end }}", user, WEATHER) == \
        f"[{tool}]|[{tool}]|{tool}"
    # TestTemplatePropertiesJSON and TestTemplatePropertiesRange
    assert go(head + "{{- range .Tools }}{{ .Function.Parameters.Properties }}{{ end }}", user, WEATHER) == \
        '{"days":{"type":["integer","null"],"enum":[1,2]},"location":{"type":"string","description":"City name"}}'
    assert go(head + "{{- range .Tools }}{{- range $name, $p := .Function.Parameters.Properties }}{{ $name }}:{{ $p.Type }}"
              "={{ $p.Enum }};{{- end }}{{- end }}", user, WEATHER) == "days:[integer null]=[1 2];location:string=[];"
    assert go(head + "{{ if .Tools }}tools{{ else }}none{{ end }} {{ len .Tools }}", user) == "none 0"


def test_think_values_follow_the_requests_think_switch() -> None:
    template = "{{- range .Messages }}{{ end }}{{ if .Think }}<think>{{ else }}/no_think{{ end }} {{ .IsThinkSet }}"
    user = [{"role": "user", "content": "x"}]
    assert go(template, user, enable_thinking=True) == "<think> true"
    assert go(template, user, enable_thinking=False) == "/no_think true"
    assert go(template, user) == "/no_think false"
    thinking = [{"role": "assistant", "content": "4", "reasoning_content": "2+2"}]
    assert go("{{- range .Messages }}<think>{{ .Thinking }}</think>{{ .Content }}{{ end }}", thinking) == \
        "<think>2+2</think>4"


def test_go_functions_render_as_go_does() -> None:
    user = [{"role": "user", "content": "hey"}]
    assert go('{{- $x := printf "%s-%d-%v%%" "a" 3 true }}{{ $x }}|{{ print 1 2 "a" "b" 3 }}|{{ println "x" 1 }}',
              user) == "a-3-true%|1 2ab3|x 1\n"
    assert go("{{ .Prompt | len }} {{ slice .Prompt 1 }} {{ with .System }}{{ . }}{{ else }}-{{ end }}"
              " {{ and .Prompt .System }}|{{ or .System .Prompt }} {{ not .System }} {{ eq .Prompt \"x\" \"hey\" }}"
              " {{ lt 1 2 }} {{ .Missing }}", user) == "3 ey - |hey true true true <no value>"
    today = date.today()
    assert go("{{ range .Messages }}{{ end }}{{ currentDate }} {{ yesterdayDate }}", user) in {
        f"{d.isoformat()} {(d - timedelta(days=1)).isoformat()}" for d in (today, today + timedelta(days=1))}


def test_variables_keep_their_values_across_turns_and_scopes() -> None:
    # alpaca.gotmpl's pattern: a variable set before the range, changed inside it.
    template = ('{{- $seen := 0 }}{{- range $i, $m := .Messages }}{{- $seen = $i }}{{- $m.Role }}{{- range $.Messages }}'
                '{{- if eq .Role "user" }}{{ continue }}{{ end }}{{ break }}{{- end }}{{ end }}:{{ $seen }}'
                "{{ range .Messages }}{{ .Content }}{{ else }}none{{ end }}")
    assert go(template, [HELLO, GREAT]) == "userassistant:1Hello, how are you?I'm doing great. How can I help you today?"


def test_converted_templates_match_known_good_jinja_of_their_family() -> None:
    kwargs = {"bos_token": "<s>", "eos_token": "</s>"}
    for go_name, family, bos, messages in (("chatml.gotmpl", "chatml", None, [SYSTEM, HELLO, GREAT, SHOW]),
                                           ("phi-3.gotmpl", "phi3", None, [SYSTEM, HELLO, GREAT, SHOW]),
                                           ("llama3-instruct.gotmpl", "llama3", "<s>", [SYSTEM, HELLO, GREAT, SHOW]),
                                           ("gemma-instruct.gotmpl", "gemma", "<s>", [HELLO, GREAT, SHOW])):
        converted = to_jinja((DATA / "template" / go_name).read_text(), bos_token=bos)
        assert render(converted, messages, **kwargs) == render(BY_NAME[family].template, messages, **kwargs), go_name


def test_the_tool_call_format_a_template_teaches_picks_the_parser_that_reads_it() -> None:
    parsers = {name: tool_parser_for((DATA / "tools" / f"{name}.gotmpl").read_text()) for name in TOOL_TEMPLATES}
    assert {name: p for name, p in parsers.items() if p} == {
        "qwen2.5": "json_tools", "qwen3": "json_tools", "llama3-groq-tool-use": "json_tools", "mistral": "mistral"}
    assert tool_parser_for((DATA / "template" / "chatml.gotmpl").read_text()) is None


def test_bos_is_written_when_the_tokenizer_adds_it_unless_the_template_writes_it() -> None:
    assert render(to_jinja("{{ range .Messages }}{{ .Content }}{{ end }}", bos_token="<s>"), [HELLO],
                  bos_token="<s>") == "<s>Hello, how are you?"
    assert render(to_jinja("<s>{{ .Prompt }}", bos_token="<s>"), [HELLO], bos_token="<s>") == "<s>Hello, how are you?"
    assert bos_token_added({"bos_token": "<s>", "add_bos_token": True}, "") == "<s>"
    assert bos_token_added({"bos_token": "<s>", "add_bos_token": False}, "") is None
    processor = {"post_processor": {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}}
    assert bos_token_added({"bos_token": "<|begin_of_text|>"}, json.dumps(processor)) == "<|begin_of_text|>"
    assert bos_token_added({"bos_token": "<|endoftext|>"}, json.dumps({"post_processor": {"type": "ByteLevel"}})) is None


def test_capabilities_of_a_converted_template_follow_what_it_uses() -> None:
    plain = to_jinja((DATA / "template" / "chatml.gotmpl").read_text())
    assert capabilities(plain) == ["completion"]
    assert capabilities(to_jinja((DATA / "tools" / "qwen2.5.gotmpl").read_text())) == ["completion", "tools"]
    thinking = to_jinja("{{ range .Messages }}{{ .Content }}{{ end }}{{ if .Think }}/think{{ end }}")
    assert capabilities(thinking) == ["completion", "thinking"]


@pytest.mark.parametrize(("template", "named"), [
    ('{{ define "turn" }}x{{ end }}{{ template "turn" . }}', "named templates ({{ define }})"),
    ("{{ range .Messages }}{{ html .Content }}{{ end }}", "the html function"),
    ("{{ range .Messages }}{{ toTypeScriptType .Content }}{{ end }}", "toTypeScriptType"),
    ("{{ range .Messages }}{{ . }}{{ end }}", "printing a message"),
    ("{{ range .Messages }}{{ range .ToolCalls }}{{ . }}{{ end }}{{ end }}", "printing a tool call"),
    ("{{ range .Messages }}{{ .Text }}{{ end }}", ".Text is not a field of a message"),
    ("{{ range .Messages }}{{ if eq .Content nil }}{{ end }}{{ end }}", "nil"),
    ('{{ printf "%5s" .Prompt }}', "printf verb %5"),
    ("{{ range .Messages }}{{ .Content }}", "unclosed {{ range }}"),
    ("{{ .Prompt ", "unclosed action"),
    ("{{ .Prompt }}{{ end }}", "unexpected {{ end }}"),
    ("{{ .Prompt }}{{ $x }}", "undefined variable $x"),
    ("{{ .Prompt }}{{ break }}", "{{ break }} outside a range"),
    ("{{ .Prompt | upper }}", "the function 'upper'"),
    ("{{ index .Prompt 0 }}", "index of a string"),
])
def test_what_cannot_be_converted_is_refused_naming_it(template: str, named: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot convert this Ollama Go template") as refused:
        to_jinja(template)
    assert named in str(refused.value)


def test_go_templates_are_told_apart_from_jinja() -> None:
    assert is_go_template("{{ .Prompt }}") and is_go_template("{{- range .Messages }}{{ end }}")
    assert is_go_template("{{ if .System }}{{ .System }}{{ end }}") and is_go_template("{{ $x := 1 }}")
    assert not is_go_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not is_go_template("{{ '{{ .Prompt }}' }}")  # Jinja that quotes Go
    assert not is_go_template("{{ bos_token }}{{ messages[0]['content'] }}")
    assert jinja_syntax_error("{% for m in messages %}") is not None
    assert jinja_syntax_error("{% generation %}{{ m }}{% endgeneration %}{% for m in x %}{% break %}{% endfor %}") is None
