"""The clients people use, unmodified, on the real system (issue 16): each on the paths it takes.

langchain-ollama, langchain-openai, instructor, pydantic-ai, litellm and `llm` + llm-ollama drive
the session system (test_clients.py covers the ollama and openai SDKs route by route, and
test_clients_npm.py their npm twins); where a client's request shape matters more than the client
(Codex, Vercel's Ollama provider, AutoGen), the test sends that shape over raw HTTP or the openai SDK.
The Ollama parity items (generate context, Go templates at create, embedding truncation, load time)
go through ollama-python.

Which model answers what:
- TINY (random weights, a few tokens each) answers where only the protocol is checked: chat and
  streaming agree, usage numbers, context round trips, extra fields, templates.
- SMOL_TOOLS, the demo SmolLM2 weights with a Hermes-style template that lists tools and writes
  `<tool_call>` (made here through the store from a Modelfile, removed after), answers forced tool
  calls and structured outputs. SmolLM2-135M would not choose a tool by itself; a forced call must
  still come back as a call of an allowed tool with arguments valid against its schema.

Each test asserts what the client hands its user: the parsed object, the tool and its arguments,
the embedding, the usage numbers.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import importlib.resources
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

# litellm downloads a model price list when imported unless told to use the copy it ships; the
# tests talk to 127.0.0.1 only.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import instructor
import litellm
import ollama
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.e2e.conftest import TINY
from tests.e2e.harness import System
from tests.fixtures.minilm import find_minilm_dir
from tests.fixtures.templates import TOOLS_TEMPLATE

pytestmark = pytest.mark.timeout(300)

SMOL_TOOLS = "smollm2-tools:135m"
EMBEDDER = "real-clients-minilm:latest"
SAY = "Say something."
EXTRACT = "Extract the user: Jason is 25 years old."
TINY_OPTIONS = {"num_predict": 4, "temperature": 0}
CALL_TOKENS = 64  # a forced call of User or get_weather is ~35 tokens in this template's format
LLM_BIN = str(Path(sys.executable).with_name("llm"))


class User(BaseModel):
    """A user extracted from text (instructor's own example)."""

    name: str
    age: int


WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


@tool
def get_time(city: str) -> str:
    """Get the local time in a city."""
    return f"noon in {city}"


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tools(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo weights under a tools-capable template, made with `mlxctl create -f Modelfile`."""
    modelfile = tmp_path_factory.mktemp("smol-tools") / "Modelfile"
    modelfile.write_text(f'FROM smollm2:135m\nTEMPLATE """{TOOLS_TEMPLATE}"""\n')
    out = system.mlxctl("create", SMOL_TOOLS, "-f", str(modelfile), timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tools" in (ollama.Client(host=system.url).show(SMOL_TOOLS).capabilities or [])
    yield SMOL_TOOLS
    system.mlxctl("stop", SMOL_TOOLS)
    system.mlxctl("rm", SMOL_TOOLS)


@pytest.fixture(scope="module")
def embedder(system: System) -> Iterator[str]:
    out = system.mlxctl("create", EMBEDDER, "--from", str(find_minilm_dir()), timeout=240)
    assert out.returncode == 0, out.stderr
    yield EMBEDDER
    system.mlxctl("stop", EMBEDDER)
    system.mlxctl("rm", EMBEDDER)


def chat_openai(system: System, model: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=system.url + "/v1", api_key="unused", temperature=0, max_retries=0,
                      timeout=120, **kwargs)


def post(system: System, path: str, body: dict, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def ignored(headers: Mapping[str, str]) -> set[str]:
    """The fields the server says it ignored (X-Mlxserve-Ignored; `headers` keyed in lower case or case-blind)."""
    return {f.strip() for f in headers.get("x-mlxserve-ignored", "").split(",") if f.strip()}


def run_llm(system: System, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The `llm` CLI with llm-ollama pointed at the system, in a user dir of its own."""
    env = {**os.environ, "OLLAMA_HOST": system.url, "LLM_USER_PATH": str(tmp_path / "llm-user")}
    return subprocess.run([LLM_BIN, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


# --- LangChain: langchain-ollama ---------------------------------------------------------------------


def test_langchain_ollama_chat_and_stream_agree_and_report_usage(system: System) -> None:
    llm_ = ChatOllama(model=TINY, base_url=system.url, num_predict=4, temperature=0)
    whole = llm_.invoke([HumanMessage(SAY)])
    assert isinstance(whole, AIMessage) and whole.content
    assert whole.usage_metadata["output_tokens"] == 4 and whole.response_metadata["done_reason"] == "length"
    chunks = list(llm_.stream([HumanMessage(SAY)]))
    assert "".join(c.content for c in chunks) == whole.content
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 4


def test_langchain_ollama_structured_output_is_the_pydantic_object(system: System, smol_tools: str) -> None:
    # with_structured_output's default method sends format=User.model_json_schema() (no additionalProperties).
    llm_ = ChatOllama(model=smol_tools, base_url=system.url, num_predict=CALL_TOKENS, temperature=0)
    raw = llm_.with_structured_output(User, include_raw=True).invoke(EXTRACT)
    assert raw["parsing_error"] is None, raw["raw"].content
    assert isinstance(raw["parsed"], User)
    assert set(json.loads(raw["raw"].content)) == {"name", "age"}, raw["raw"].content


# --- LangChain: langchain-openai ----------------------------------------------------------------------


def test_langchain_openai_chat_and_stream_agree_and_report_usage(system: System) -> None:
    llm_ = chat_openai(system, TINY, max_tokens=4)
    whole = llm_.invoke([HumanMessage(SAY)])
    assert isinstance(whole.content, str) and whole.response_metadata["finish_reason"] == "length"
    assert whole.usage_metadata["output_tokens"] == 4 and whole.usage_metadata["input_tokens"] > 1
    chunks = list(llm_.stream([HumanMessage(SAY)], stream_usage=True))
    assert "".join(c.content for c in chunks) == whole.content
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["input_tokens"] == whole.usage_metadata["input_tokens"] and usage[-1]["output_tokens"] == 4


def test_langchain_openai_structured_output_by_function_calling(system: System, smol_tools: str) -> None:
    # Sends tools=[User] with tool_choice {"type": "function", "function": {"name": "User"}}.
    llm_ = chat_openai(system, smol_tools, max_tokens=CALL_TOKENS)
    raw = llm_.with_structured_output(User, method="function_calling", include_raw=True).invoke(EXTRACT)
    assert raw["parsing_error"] is None, raw["raw"]
    assert isinstance(raw["parsed"], User)
    call = raw["raw"].tool_calls[0]
    assert call["name"] == "User" and set(call["args"]) == {"name", "age"}


def test_langchain_openai_bind_tools_with_forced_choices(system: System, smol_tools: str) -> None:
    llm_ = chat_openai(system, smol_tools, max_tokens=CALL_TOKENS)
    question = [HumanMessage("What's the weather like in Paris?")]
    # A named function is "call exactly one specific function" in OpenAI's function-calling guide.
    named = llm_.bind_tools([get_weather, get_time], tool_choice="get_time").invoke(question)
    assert [c["name"] for c in named.tool_calls] == ["get_time"], named.tool_calls
    assert isinstance(named.tool_calls[0]["args"]["city"], str) and set(named.tool_calls[0]["args"]) == {"city"}
    anyone = llm_.bind_tools([get_weather, get_time], tool_choice="any").invoke(question)  # sent as "required"
    assert anyone.tool_calls and anyone.tool_calls[0]["name"] in {"get_weather", "get_time"}, anyone.content
    assert isinstance(anyone.tool_calls[0]["args"]["city"], str)
    assert anyone.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_openai_embeddings_send_token_ids(system: System, embedder: str, oai: openai.OpenAI,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAIEmbeddings tokenizes with tiktoken (cl100k_base: litellm ships the file, so no download)
    # and posts the token ids; the same ids through the SDK must embed the same.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(importlib.resources.files("litellm") / "litellm_core_utils" / "tokenizers"))
    emb = OpenAIEmbeddings(model=embedder, base_url=system.url + "/v1", api_key="unused", max_retries=0)
    docs = emb.embed_documents(["a cat sat on the mat", "the dog barks"])
    query = emb.embed_query("a cat sat on the mat")
    assert len(docs) == 2 and all(len(d) == 384 for d in docs) and len(query) == 384
    assert query == pytest.approx(docs[0], abs=1e-5) and docs[0] != pytest.approx(docs[1], abs=1e-3)
    ids = oai.embeddings.create(model=embedder, input=[[64, 8415, 7731, 389, 279, 5634]], encoding_format="float")
    assert ids.data[0].embedding == pytest.approx(docs[0], abs=1e-5) and ids.usage.prompt_tokens == 6


# --- instructor -----------------------------------------------------------------------------------------


def test_instructor_tools_mode_forces_the_response_model(system: System, smol_tools: str, oai: openai.OpenAI) -> None:
    client = instructor.from_openai(oai)  # Mode.TOOLS: tool_choice names the model's function
    user, completion = client.chat.completions.create_with_completion(
        model=smol_tools, response_model=User, messages=[{"role": "user", "content": EXTRACT}],
        max_tokens=CALL_TOKENS, temperature=0, max_retries=0)
    assert isinstance(user, User)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and [c.function.name for c in choice.message.tool_calls] == ["User"]


def test_instructor_streams_partial_objects_of_a_forced_call(system: System, smol_tools: str, oai: openai.OpenAI) -> None:
    client = instructor.from_openai(oai)
    partials = list(client.chat.completions.create_partial(
        model=smol_tools, response_model=User, messages=[{"role": "user", "content": EXTRACT}],
        max_tokens=CALL_TOKENS, temperature=0, max_retries=0))
    final = partials[-1]  # one or more partial objects, as the arguments arrive
    assert isinstance(final, User) and isinstance(final.name, str) and isinstance(final.age, int), partials


def test_instructor_json_schema_mode_gives_only_the_models_keys(system: System, smol_tools: str, oai: openai.OpenAI) -> None:
    client = instructor.from_openai(oai, mode=instructor.Mode.JSON_SCHEMA)  # response_format json_schema
    user, completion = client.chat.completions.create_with_completion(
        model=smol_tools, response_model=User, messages=[{"role": "user", "content": EXTRACT}],
        max_tokens=CALL_TOKENS, temperature=0, max_retries=0)
    assert isinstance(user, User)
    content = completion.choices[0].message.content
    assert set(json.loads(content)) == {"name", "age"}, content


# --- pydantic-ai ------------------------------------------------------------------------------------------


def pydantic_ai_model(system: System, model: str) -> OpenAIChatModel:
    return OpenAIChatModel(model, provider=OpenAIProvider(base_url=system.url + "/v1", api_key="unused"))


def test_pydantic_ai_chat_and_stream_agree(system: System) -> None:
    agent = Agent(pydantic_ai_model(system, TINY))
    settings = {"max_tokens": 4, "temperature": 0}
    whole = agent.run_sync(SAY, model_settings=settings)
    assert isinstance(whole.output, str)
    assert whole.usage().output_tokens == 4 and whole.usage().input_tokens > 1
    streamed = agent.run_stream_sync(SAY, model_settings=settings)
    assert "".join(streamed.stream_text(delta=True)) == whole.output


def test_pydantic_ai_structured_output_uses_a_required_tool_call(system: System, smol_tools: str) -> None:
    # Tool output with no text allowed: pydantic-ai sends tool_choice "required" (or names its one tool).
    agent = Agent(pydantic_ai_model(system, smol_tools), output_type=User, retries=0)
    result = agent.run_sync(EXTRACT, model_settings={"max_tokens": CALL_TOKENS, "temperature": 0})
    assert isinstance(result.output, User)
    calls = [p for m in result.all_messages() for p in getattr(m, "parts", []) if isinstance(p, ToolCallPart)]
    assert [c.tool_name for c in calls] == ["final_result"]
    assert result.usage().requests == 1  # no retry was needed


# --- litellm -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ollama_chat", "openai"])
def test_litellm_chat_and_stream_agree_and_count_the_whole_prompt(system: System, provider: str) -> None:
    api_base = system.url if provider == "ollama_chat" else system.url + "/v1"
    args = {"model": f"{provider}/{TINY}", "api_base": api_base, "api_key": "unused", "messages": [{"role": "user", "content": SAY}],
            "max_tokens": 4, "temperature": 0, "num_retries": 0, "timeout": 120}
    first = litellm.completion(**args)
    again = litellm.completion(**args)  # the prompt is cached now: its tokens still count
    assert isinstance(first.choices[0].message.content, str) and first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 4 and first.usage.prompt_tokens > 1
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    chunks = list(litellm.completion(**args, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content


def test_usage_counts_the_whole_prompt_in_every_client(system: System, oai: openai.OpenAI, oll: ollama.Client) -> None:
    # Item 9: a repeated prompt is served from the prefix cache, and every client still reports all of
    # its tokens; OpenAI's cached_tokens shows the cached share.
    messages = [{"role": "user", "content": "Count these words: one two three four five six seven eight."}]
    cold = oll.chat(model=TINY, messages=messages, options=TINY_OPTIONS)
    n = cold.prompt_eval_count
    assert n > 10
    assert oll.chat(model=TINY, messages=messages, options=TINY_OPTIONS).prompt_eval_count == n
    lc = ChatOllama(model=TINY, base_url=system.url, num_predict=4, temperature=0).invoke(messages[0]["content"])
    assert lc.usage_metadata["input_tokens"] == n
    lo = chat_openai(system, TINY, max_tokens=4).invoke(messages[0]["content"])
    assert lo.usage_metadata["input_tokens"] == n
    warm = oai.chat.completions.create(model=TINY, messages=messages, max_tokens=4, temperature=0)
    assert warm.usage.prompt_tokens == n and warm.usage.prompt_tokens_details.cached_tokens > 0
    lite = litellm.completion(model=f"ollama_chat/{TINY}", api_base=system.url, messages=messages, max_tokens=4,
                              temperature=0, num_retries=0)
    assert lite.usage.prompt_tokens == n


# --- llm + llm-ollama -----------------------------------------------------------------------------------------


def test_llm_cli_streamed_and_not_agree(system: System, tmp_path: Path) -> None:
    args = ["-m", f"ollama/{TINY}", "-o", "num_predict", "4", "-o", "temperature", "0", "--no-log", SAY]
    streamed = run_llm(system, tmp_path, *args)
    whole = run_llm(system, tmp_path, "--no-stream", *args)
    assert streamed.returncode == 0 and whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout.strip() and streamed.stdout == whole.stdout


def test_llm_cli_schema_gives_only_the_schemas_keys(system: System, smol_tools: str, tmp_path: Path) -> None:
    # `--schema 'name, age int'` becomes a JSON schema with no additionalProperties, sent as format.
    out = run_llm(system, tmp_path, "-m", f"ollama/{smol_tools}", "--schema", "name, age int", "-o", "num_predict",
                  str(CALL_TOKENS), "-o", "temperature", "0", "--no-log", EXTRACT)
    assert out.returncode == 0, out.stderr
    value = json.loads(out.stdout)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and isinstance(value["age"], int), out.stdout


def test_llm_python_api_lists_the_models_and_chats(system: System, tmp_path: Path) -> None:
    script = (
        "import json, llm\n"
        "ids = [m.model_id for m in llm.get_models()]\n"
        f"r = llm.get_model('ollama/{TINY}').prompt({SAY!r}, num_predict=4, temperature=0)\n"
        "print(json.dumps({'ids': ids, 'text': r.text(), 'usage': [r.usage().input, r.usage().output]}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "OLLAMA_HOST": system.url, "LLM_USER_PATH": str(tmp_path / "llm-user")})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert f"ollama/{TINY}" in got["ids"] and got["text"]
    assert got["usage"][1] == 4 and got["usage"][0] > 1


# --- ollama-python: structured outputs and Ollama parity --------------------------------------------------------


def test_ollama_python_format_pydantic_schema_gives_only_the_models_keys(oll: ollama.Client, smol_tools: str) -> None:
    # Item 3: model_json_schema() says nothing of additionalProperties and the object is closed, as in
    # Ollama. Left open, SmolLM2 goes on with "gender", "location", ... until it is cut off.
    for prompt in (EXTRACT, "Describe a person."):
        r = oll.chat(model=smol_tools, messages=[{"role": "user", "content": prompt}], format=User.model_json_schema(),
                     options={"num_predict": CALL_TOKENS, "temperature": 0})
        assert r.done_reason == "stop", r.message.content
        assert set(json.loads(r.message.content)) == {"name", "age"}, r.message.content
        User.model_validate_json(r.message.content)


def test_ollama_python_generate_context_continues_the_conversation(oll: ollama.Client) -> None:
    first = oll.generate(model=TINY, prompt="My name is Ann.", options=TINY_OPTIONS)
    assert first.context and all(isinstance(t, int) for t in first.context)
    assert len(first.context) == first.prompt_eval_count + first.eval_count  # the prompt and the answer, as Ollama
    second = oll.generate(model=TINY, prompt="What is my name?", context=first.context, options=TINY_OPTIONS)
    alone = oll.generate(model=TINY, prompt="What is my name?", options=TINY_OPTIONS)
    assert second.context[:len(first.context)] == first.context
    assert second.prompt_eval_count == len(first.context) + alone.prompt_eval_count


# Ollama's own ChatML Go template (template/chatml.gotmpl): what a Modelfile from Ollama's library carries.
GO_CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def test_ollama_python_create_with_a_go_template_then_chat(oll: ollama.Client) -> None:
    # Item 10: converted at create time; it renders what the tiny model's own (Jinja) ChatML renders.
    assert oll.create(model="clients-gotemplate", from_=TINY, template=GO_CHATML).status == "success"
    try:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SAY}]
        converted = oll.chat(model="clients-gotemplate", messages=messages, options=TINY_OPTIONS)
        native = oll.chat(model=TINY, messages=messages, options=TINY_OPTIONS)
        assert converted.prompt_eval_count == native.prompt_eval_count
        assert converted.message.content == native.message.content
    finally:
        oll.generate(model="clients-gotemplate", prompt="", keep_alive=0)
        oll.delete("clients-gotemplate")


def test_ollama_python_embed_over_num_ctx_without_truncate_is_refused(oll: ollama.Client, embedder: str) -> None:
    # Item 11: num_ctx bounds an embedding input; truncate=False makes an input over it a 400.
    long_text = "the cat sat on the mat " * 8
    cut = oll.embed(model=embedder, input=long_text, options={"num_ctx": 16})
    assert len(cut.embeddings[0]) == 384 and cut.prompt_eval_count <= 16
    with pytest.raises(ollama.ResponseError) as e:
        oll.embed(model=embedder, input=long_text, truncate=False, options={"num_ctx": 16})
    assert e.value.status_code == 400, e.value.error


def test_ollama_python_load_duration_counts_a_load(oll: ollama.Client) -> None:
    # Item 11: a request that had to load the model says how long that took.
    oll.generate(model=TINY, prompt="", keep_alive=0)
    assert TINY not in {m.model for m in oll.ps().models}
    r = oll.generate(model=TINY, prompt=SAY, options=TINY_OPTIONS)
    assert r.load_duration > 0 and r.total_duration >= r.load_duration


# --- request shapes of clients too heavy to install: AutoGen, Vercel, Codex ------------------------------------


def test_autogen_style_named_messages_reach_the_template(oai: openai.OpenAI, smol_tools: str) -> None:
    # AutoGen names the author of every message; the template writes the name, so the prompt grows.
    def prompt_tokens(named: bool) -> int:
        names = ({"name": "user_proxy"}, {"name": "assistant"}) if named else ({}, {})
        r = oai.chat.completions.create(model=smol_tools, max_tokens=1, temperature=0, messages=[
            {"role": "system", "content": "You are a helpful AI assistant."},
            {"role": "user", "content": "What is 2 + 2?", **names[0]},
            {"role": "assistant", "content": "4", **names[1]},
            {"role": "user", "content": "And 3 + 3?", **names[0]}])
        return r.usage.prompt_tokens

    assert prompt_tokens(named=True) > prompt_tokens(named=False)


def test_vercel_ollama_provider_extra_fields_are_ignored_and_named(system: System) -> None:
    status, headers, body = post(system, "/api/chat", {
        "model": TINY, "messages": [{"role": "user", "content": SAY}], "stream": True,
        "options": {"num_predict": 3, "temperature": 0}, "temperature": 0, "top_p": 0.9, "max_output_tokens": 100,
        "tool_choice": "auto"})
    assert status == 200, body
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 3  # options were honoured
    assert {"temperature", "top_p", "max_output_tokens", "tool_choice"} <= ignored(headers)


def test_newer_openai_chat_fields_are_accepted(oai: openai.OpenAI, smol_tools: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=smol_tools, messages=[{"role": "user", "content": "Say hello."}], max_tokens=-1, stop=[".", "!", "\n"],
        temperature=0, prompt_cache_key="thread-1", safety_identifier="user-hash", verbosity="low",
        metadata={"session": "abc"}, store=True, user="u1")
    r = raw.parse()
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content
    assert r.usage.completion_tokens >= 1
    # Advisory fields are taken silently; the ones that would change an OpenAI answer and do nothing
    # here are named.
    named = ignored(raw.headers)
    assert not named & {"prompt_cache_key", "safety_identifier", "metadata", "max_tokens", "user"}, named
    assert {"verbosity", "store"} <= named, named


def test_legacy_functions_force_a_function_call(oai: openai.OpenAI, smol_tools: str) -> None:
    r = oai.chat.completions.create(
        model=smol_tools, messages=[{"role": "user", "content": "What's the weather like in Paris?"}],
        functions=[{"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMETERS}],
        function_call={"name": "get_weather"}, max_tokens=CALL_TOKENS, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call", choice
    assert choice.message.function_call.name == "get_weather"
    args = json.loads(choice.message.function_call.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)


def test_api_version_is_the_ollama_level_codex_requires(system: System) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
    conn.request("GET", "/api/version")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    # Codex --oss parses `version` as semver and needs Ollama 0.13.4 or newer.
    level = tuple(int(p) for p in body["version"].split("-")[0].split("."))
    assert level >= (0, 13, 4), body
    assert body["mlxserve_version"] == importlib.metadata.version("mlxserve"), body


CODEX_TOOLS = [
    {"type": "function", "name": "shell", "description": "Runs a shell command and returns its output.", "strict": False,
     "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}},
                                                     "workdir": {"type": "string"}},
                    "required": ["command"], "additionalProperties": False}},
    {"type": "web_search"},
    {"type": "namespace", "name": "collaboration", "description": "Agents working beside you.", "tools": [
        {"type": "function", "name": "spawn_agent", "description": "Start an agent.",
         "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
]


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    events, name = [], ""
    for line in body.decode().splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: ") and line != "data: [DONE]":
            events.append((name, json.loads(line[len("data: "):])))
    return events


def test_codex_responses_request_is_answered(system: System, smol_tools: str) -> None:
    # What Codex --oss posts on a first turn: hosted tools the server cannot run, include,
    # client_metadata, store false, streaming. (Codex adds `reasoning` only for reasoning models such
    # as gpt-oss; this one cannot think, and asking it to is a 400.)
    status, headers, body = post(system, "/v1/responses", {
        "model": smol_tools, "instructions": "You are Codex, a coding agent.", "tools": CODEX_TOOLS,
        "tool_choice": "auto", "parallel_tool_calls": False, "store": False, "stream": True, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0199a6c2-thread",
        "client_metadata": {"x-codex-installation-id": "e2e"}, "max_output_tokens": 8,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files here."}]},
        ]})
    assert status == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    assert {"tools[1]", "tools[2]"} <= ignored(headers), headers  # web_search and the namespace never reach the model
    events = sse_events(body)
    assert events[0][0] == "response.created" and events[-1][0] in ("response.completed", "response.incomplete"), events[-1]
    final = events[-1][1]["response"]
    assert final["usage"]["input_tokens"] > 0 and 0 < final["usage"]["output_tokens"] <= 8
    text = "".join(e["delta"] for name, e in events if name == "response.output_text.delta")
    shown = "".join(part["text"] for item in final["output"] if item["type"] == "message" for part in item["content"])
    assert text == shown
    assert final["output"] and {item["type"] for item in final["output"]} <= {"message", "function_call", "reasoning"}
    for item in final["output"]:
        if item["type"] == "reasoning":
            assert not item.get("encrypted_content")  # nothing to include here
        if item["type"] == "function_call":
            assert item["name"] == "shell"
