"""A model's stored SYSTEM, MESSAGE and PARAMETER defaults, as the worker applies them to requests.

Models are created in a real store from the tiny llama (ChatML template) and loaded by a
ModelRunner from their resolved view, the way the supervisor's workers load them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlxserve.services.common.errors import Internal
from mlxserve.services.store.recipes import CreateSpec, parse_modelfile
from mlxserve.services.store.store import VIEW_DEFAULTS_FILE, ModelStore
from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest, encode_prompt, render_prompt
from mlxserve.services.worker.runner import ModelRunner
from mlxserve.services.worker.sampling import SamplingOptions
from mlxserve.v1.frames import TokenEvent
from tests.fixtures.tiny_model import write_tiny_model

# Greedy, short: every model below derives from "base" and so inherits these.
BASE_PARAMETERS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("defaults")
    store = ModelStore(root / "models")
    store.create("base", CreateSpec(from_path=write_tiny_model(root / "src"), parameters=dict(BASE_PARAMETERS)))
    return store


_runners: dict[str, ModelRunner] = {}


def runner_for(store: ModelStore, name: str, **spec: object) -> ModelRunner:
    """A runner for model `name`, created from "base" with `spec`'s overrides (once per name)."""
    if name not in _runners:
        store.create(name, CreateSpec(from_model="base", **spec))  # type: ignore[arg-type]
        _runners[name] = ModelRunner(store.resolve(name).view_path, num_parallel=2, max_queue=4)
    return _runners[name]


_ids = iter(range(1_000_000))


def chat(*messages: tuple[str, str], **options: object) -> GenerationRequest:
    return GenerationRequest(request_id=f"r{next(_ids)}", is_chat=True,
                             messages=tuple(ChatMessage(role, content) for role, content in messages),
                             options=SamplingOptions(**options))  # type: ignore[arg-type]


def generate(prompt: str, *, system: str = "", raw: bool = False, **options: object) -> GenerationRequest:
    return GenerationRequest(request_id=f"r{next(_ids)}", prompt=prompt, system=system, raw=raw,
                             options=SamplingOptions(**options))  # type: ignore[arg-type]


def prompt_of(runner: ModelRunner, request: GenerationRequest) -> str:
    """The prompt text the runner feeds the model for `request` (and its token count agrees)."""
    effective = runner.defaults.apply(request)
    text = render_prompt(runner.tokenizer, effective)
    tokens = encode_prompt(runner.tokenizer, effective)
    assert runner.submit(request).prompt_tokens == len(tokens)
    runner.cancel(request.request_id)  # unseeded sampling could run long; only the prompt matters
    run(runner)
    return text


def run(runner: ModelRunner) -> dict[str, list[TokenEvent]]:
    frames: dict[str, list[TokenEvent]] = {}
    for _ in range(500):
        for e in runner.step():
            frames.setdefault(e.request_id, []).append(e)
        if not runner.has_work():
            return frames
    raise AssertionError("requests did not finish")


def result(runner: ModelRunner, request: GenerationRequest) -> tuple[str, int, str]:
    """(text, tokens generated, done_reason) of `request` run alone."""
    runner.submit(request)
    events = run(runner)[request.request_id]
    final = events[-1]
    assert final.done and final.error is None
    return "".join(e.text for e in events), final.stats.eval_count, final.done_reason


def test_view_carries_the_model_defaults_for_the_worker(store: ModelStore) -> None:
    store.create("described", CreateSpec(from_model="base", system="Be brief.", parameters={"top_k": 5},
                                         messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
    view = store.resolve("described").view_path
    doc = json.loads((view / VIEW_DEFAULTS_FILE).read_text())
    assert doc["system"] == "Be brief."
    assert doc["parameters"] == {**BASE_PARAMETERS, "top_k": 5, "stop": ["<|im_start|>", "<|im_end|>"]}
    assert doc["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert not (view / VIEW_DEFAULTS_FILE).is_symlink() and os.stat(view / VIEW_DEFAULTS_FILE).st_mode & 0o222 == 0


def test_view_built_without_the_defaults_file_is_rebuilt_with_it(store: ModelStore) -> None:
    store.create("older", CreateSpec(from_model="base", system="From the store."))
    view = store.resolve("older").view_path
    os.chmod(view, 0o755)
    (view / VIEW_DEFAULTS_FILE).unlink()  # what a view built by an earlier version looks like
    os.chmod(view, 0o555)
    rebuilt = store.resolve("older").view_path
    assert json.loads((rebuilt / VIEW_DEFAULTS_FILE).read_text())["system"] == "From the store."
    assert (rebuilt / "model.safetensors").is_file()


def test_view_with_stale_defaults_is_rebuilt(store: ModelStore) -> None:
    store.create("stale", CreateSpec(from_model="base", system="Current."))
    view = store.resolve("stale").view_path
    os.chmod(view, 0o755)
    os.chmod(view / VIEW_DEFAULTS_FILE, 0o644)
    (view / VIEW_DEFAULTS_FILE).write_text('{"system": "Tampered."}')
    assert json.loads((store.resolve("stale").view_path / VIEW_DEFAULTS_FILE).read_text())["system"] == "Current."


def test_model_system_is_used_when_the_chat_has_no_system_message(store: ModelStore) -> None:
    runner = runner_for(store, "pirate", system="You are a pirate.")
    assert prompt_of(runner, chat(("user", "Hello"))) == (
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    own = prompt_of(runner, chat(("system", "You are a poet."), ("user", "Hello")))
    assert "You are a poet." in own and "pirate" not in own


def test_model_system_is_used_by_generate_unless_the_request_sets_one(store: ModelStore) -> None:
    runner = runner_for(store, "pirate", system="You are a pirate.")
    assert prompt_of(runner, generate("Hello")).startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello")
    own = prompt_of(runner, generate("Hello", system="You are a poet."))
    assert "You are a poet." in own and "pirate" not in own


def test_model_messages_come_after_the_system_and_before_the_request(store: ModelStore) -> None:
    runner = runner_for(store, "primed", system="Sys.", messages=[
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}])
    expected = ("<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_of(runner, chat(("user", "Q2"))) == expected
    assert prompt_of(runner, generate("Q2")) == expected
    # The request's own system message still goes first, ahead of the model's messages.
    assert prompt_of(runner, chat(("system", "Mine."), ("user", "Q2"))) == expected.replace("Sys.", "Mine.")


def test_raw_generate_ignores_the_model_system_and_messages(store: ModelStore) -> None:
    runner = runner_for(store, "primed", system="Sys.", messages=[
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}])
    request = generate("Once upon a time", raw=True)
    assert prompt_of(runner, request) == "Once upon a time"
    assert runner.submit(generate("Once upon a time", raw=True)).prompt_tokens == len(runner.tokenizer.encode("Once upon a time"))
    run(runner)


def test_model_num_predict_ends_generations_unless_the_request_overrides_it(store: ModelStore) -> None:
    runner = runner_for(store, "terse", parameters={"num_predict": 3})
    _, count, reason = result(runner, chat(("user", "Tell me a story")))
    assert (count, reason) == (3, "length")
    _, count, reason = result(runner, chat(("user", "Tell me a story"), num_predict=5))
    assert (count, reason) == (5, "length")


def test_model_stop_ends_generation_and_a_request_stop_replaces_it(store: ModelStore) -> None:
    plain = runner_for(store, "plain")
    text, _, _ = result(plain, chat(("user", "Tell me a story")))
    assert len(text) > 8, "the tiny model should say something to stop on"
    stop = text[4:7]
    stopper = runner_for(store, "stopper", parameters={"stop": [stop]})
    assert result(stopper, chat(("user", "Tell me a story")))[::2] == (text[:text.index(stop)], "stop")
    # A request's stop list replaces the model's (it is not added to it).
    never = "\u2603\u2603"  # not in the tiny vocabulary
    assert result(stopper, chat(("user", "Tell me a story"), stop=(never,)))[::2] == (text, "length")


def test_request_option_overrides_model_parameter(store: ModelStore) -> None:
    # The model asks for sampling at a high temperature; a request at temperature 0 gets greedy.
    hot = runner_for(store, "hot", parameters={"temperature": 5.0, "top_k": 0, "top_p": 1.0})
    greedy = [result(hot, chat(("user", "Hi"), temperature=0))[0] for _ in range(2)]
    assert greedy[0] == greedy[1] == result(runner_for(store, "plain"), chat(("user", "Hi")))[0]
    sampled = {result(hot, chat(("user", "Hi"), seed=s))[0] for s in range(3)}
    assert len(sampled) > 1  # the model's temperature applies when the request does not set one


def test_modelfile_defaults_reach_the_worker(store: ModelStore, tmp_path: Path) -> None:
    recipe = tmp_path / "Modelfile"
    recipe.write_text('FROM base\nSYSTEM """Answer in French."""\nPARAMETER num_predict 2\n'
                      "PARAMETER repeat_penalty 1.1\nMESSAGE user Bonjour\nMESSAGE assistant Salut\n")
    store.create("french", parse_modelfile(recipe.read_text(), tmp_path))
    runner = ModelRunner(store.resolve("french").view_path, num_parallel=1, max_queue=1)
    assert runner.defaults.ignored == ()
    assert runner.defaults.options.repeat_penalty == 1.1  # a sampling default like the others
    text = prompt_of(runner, chat(("user", "Comment ça va ?")))
    assert text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nBonjour<|im_end|>")
    assert result(runner, chat(("user", "Comment ça va ?")))[1:] == (2, "length")


def test_folder_without_defaults_file_runs_requests_as_sent(tmp_path: Path) -> None:
    runner = ModelRunner(write_tiny_model(tmp_path / "bare"), num_parallel=1, max_queue=1)
    assert prompt_of(runner, generate("Hello")) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_damaged_defaults_file_fails_the_load_with_a_clear_error(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "damaged")
    (folder / VIEW_DEFAULTS_FILE).write_text("{not json")
    with pytest.raises(Internal, match="defaults"):
        ModelRunner(folder)


def test_the_store_and_the_worker_agree_on_which_parameters_the_runtime_applies() -> None:
    from mlxserve.services.store.recipes import RUNTIME_PARAMETERS
    from mlxserve.services.worker.defaults import _APPLIED

    assert set(_APPLIED) | {"stop"} == RUNTIME_PARAMETERS


def test_parameters_the_runtime_does_not_use_are_kept_and_said_not_used(tmp_path: Path) -> None:
    from mlxserve.services.store.recipes import CreateSpec
    from tests.fixtures.tiny_model import write_tiny_model

    store = ModelStore(tmp_path / "models")
    events = []
    store.create("m", CreateSpec(from_path=write_tiny_model(tmp_path / "tiny"),
                                 parameters={"temperature": 0.5, "num_thread": 8, "mirostat": 2}), events.append)
    shown = store.show("m")
    assert shown.parameters["num_thread"] == 8 and shown.parameters["temperature"] == 0.5
    assert shown.model_info["mlxserve.parameters_not_used"] == "mirostat, num_thread"
    assert "keeping parameters mlxserve does not use: mirostat, num_thread" in [e.status for e in events]
