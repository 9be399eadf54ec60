"""Structured outputs: format "json" and JSON schemas hold even for a random-weight model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import mlx.core as mx
import pytest

from mlxserve.services.common.errors import InvalidArgument
from mlxserve.services.worker.constraints import Constraint, build_constraint, llg_tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}
BUDGET = 400  # generous: a bounded schema closes in ~100-150 tokens even from random weights
SEEDS = range(4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    import mlx_lm

    from tests.fixtures.tiny_model import write_tiny_model

    return mlx_lm.load(str(write_tiny_model(tmp_path_factory.mktemp("tiny"))))


def _prompt(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": "Answer in JSON."}], add_generation_prompt=True)


def _generate(model, tokenizer, processors: list, seed: int) -> tuple[str, str]:
    """Sample at temperature 1.0 with mlx-lm's own loop; returns (text, "stop" | "length")."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    out: list[int] = []
    steps = generate_step(mx.array(_prompt(tokenizer)), model, max_tokens=BUDGET,
                          sampler=make_sampler(temp=1.0), logits_processors=processors)
    for token, _ in steps:
        if int(token) in tokenizer.eos_token_ids:
            return tokenizer.decode(out), "stop"
        out.append(int(token))
    return tokenizer.decode(out), "length"


def _closing_bias(tokenizer, boost: float = 8.0):
    """A stand-in for a model that has learnt to close strings and objects: random weights alone
    wander inside an unbounded string for thousands of tokens, which says nothing about the format."""
    vocab = tokenizer._tokenizer.get_vocab()
    ids = [i for tok, i in vocab.items() if any(ch in tok for ch in '"}]')]
    bias = mx.zeros((len(vocab),)).at[mx.array(ids)].add(boost)

    def processor(tokens: mx.array, logits: mx.array) -> mx.array:
        return logits + bias[: logits.shape[-1]]

    return processor


def test_empty_format_asks_for_no_constraint(tiny) -> None:
    assert build_constraint("", tiny[1]) is None


@pytest.mark.parametrize(
    ("fmt", "complaint"),
    [
        ('{"type": "foo"}', "foo"),
        ('{"type": "string", "format": "weird"}', "weird"),
        ('{"type": "object", "minProperties": "a"}', "minProperties"),
        ('{"$ref": "#/definitions/missing"}', "missing"),
        ("[1, 2]", "JSON schema"),
        ("yaml please", "not valid JSON"),
    ],
)
def test_invalid_schema_is_refused_naming_the_problem(tiny, fmt: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        build_constraint(fmt, tiny[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_schema_output_from_random_weights_always_validates_and_ends_on_eos(tiny, seed: int) -> None:
    model, tokenizer = tiny
    constraint = build_constraint(json.dumps(PERSON), tokenizer)
    text, reason = _generate(model, tokenizer, [constraint], seed)
    assert reason == "stop", f"seed {seed}: cut at {BUDGET} tokens: {text!r}"
    jsonschema.validate(json.loads(text), PERSON)
    assert constraint.is_done() and constraint.error is None


@pytest.mark.parametrize("seed", SEEDS)
def test_json_format_output_is_one_json_object(tiny, seed: int) -> None:
    model, tokenizer = tiny
    constraint = build_constraint("json", tokenizer)
    # The constraint last, as the runner orders it: whatever earlier processors do, it has the final word.
    text, reason = _generate(model, tokenizer, [_closing_bias(tokenizer), constraint], seed)
    assert reason == "stop", f"seed {seed}: cut at {BUDGET} tokens: {text!r}"
    assert isinstance(json.loads(text), dict)


def test_json_format_cut_by_the_budget_is_a_valid_unfinished_prefix(tiny) -> None:
    # Random weights with no nudge open a string and rarely close it: the limit cuts the output,
    # which the caller sees (done_reason "length") and the constraint reports as unfinished.
    model, tokenizer = tiny
    constraint = build_constraint("json", tokenizer)
    from mlx_lm.generate import generate_step

    mx.random.seed(0)
    from mlx_lm.sample_utils import make_sampler

    tokens = [int(t) for t, _ in generate_step(mx.array(_prompt(tokenizer)), model, max_tokens=30,
                                                sampler=make_sampler(temp=1.0), logits_processors=[constraint])]
    assert not set(tokens) & set(tokenizer.eos_token_ids)
    assert tokenizer.decode(tokens).startswith("{")
    assert not constraint.is_accepting() and constraint.error is None


def test_constrained_and_free_requests_share_a_batch(tiny) -> None:
    """In BatchGenerator the constrained row validates and stops on EOS; the free row beside it
    decodes exactly as it does alone."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = tiny
    prompt = _prompt(tokenizer)
    eos = sorted(tokenizer.eos_token_ids)
    greedy = make_sampler(temp=0.0)

    def run(processors: list[list], samplers: list) -> list[tuple[list[int], str]]:
        mx.random.seed(3)
        gen = BatchGenerator(model, stop_tokens=[[t] for t in eos])
        uids = gen.insert([prompt] * len(processors), max_tokens=[BUDGET] * len(processors),
                          logits_processors=processors, samplers=samplers)
        out: dict[int, list[int]] = {u: [] for u in uids}
        done: dict[int, str] = {}
        while len(done) < len(uids):
            for r in gen.next_generated():
                out[r.uid].append(r.token)
                if r.finish_reason:
                    done[r.uid] = r.finish_reason
        return [(out[u], done[u]) for u in uids]

    constraint = build_constraint(json.dumps(PERSON), tokenizer)
    (tokens, reason), free = run([[constraint], []], [make_sampler(temp=1.0), greedy])
    assert reason == "stop" and tokens[-1] in eos
    jsonschema.validate(json.loads(tokenizer.decode(tokens[:-1])), PERSON)
    # BatchGenerator computes one step ahead, so the processor also saw the closing EOS.
    assert constraint.generated == len(tokens) and constraint.error is None
    assert free == run([[]], [greedy])[0]


def test_processor_consumes_each_sampled_token_once(tiny) -> None:
    """Repeated or skipped calls neither double-feed nor lose tokens: the matcher counts what it consumed."""
    _, tokenizer = tiny
    constraint = build_constraint("json", tokenizer)
    prompt = _prompt(tokenizer)
    body = tokenizer.encode('{"a": [1, 2], "b": "x"}')
    logits = mx.zeros((1, 512))
    constraint(mx.array(prompt), logits)  # first call: the prompt alone
    constraint(mx.array(prompt + body[:3]), logits)  # three tokens at once
    constraint(mx.array(prompt + body[:3]), logits)  # the same context again
    masked = constraint(mx.array(prompt + body), logits)
    assert constraint.generated == len(body) and constraint.error is None
    allowed = [i for i, v in enumerate(masked[0].tolist()) if v != float("-inf")]
    assert allowed == sorted(tokenizer.eos_token_ids)  # the object is closed: only EOS remains


def test_refused_token_forces_eos(tiny) -> None:
    _, tokenizer = tiny
    constraint = build_constraint("json", tokenizer)
    prompt = _prompt(tokenizer)
    constraint(mx.array(prompt), mx.zeros((1, 512)))
    masked = constraint(mx.array(prompt + tokenizer.encode("hello")), mx.zeros((1, 512)))
    assert constraint.error
    assert [i for i, v in enumerate(masked[0].tolist()) if v != float("-inf")] == sorted(tokenizer.eos_token_ids)


def test_wider_model_head_never_gets_padding_ids(tiny) -> None:
    _, tokenizer = tiny
    constraint = build_constraint("json", tokenizer)
    masked = constraint(mx.array(_prompt(tokenizer)), mx.zeros((1, 640)))
    assert masked.shape == (1, 640)
    assert all(v == float("-inf") for v in masked[0, 512:].tolist())


def test_llguidance_tokenizer_is_built_once_per_tokenizer(tiny) -> None:
    _, tokenizer = tiny
    assert llg_tokenizer(tokenizer) is llg_tokenizer(tokenizer)


@pytest.mark.smollm2
def test_smollm2_tokenizer_drives_a_schema(smollm2_gguf: Path, tmp_path: Path) -> None:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from mlxserve.services.store.store import ModelStore

    store = ModelStore(tmp_path / "models")
    store.create_from_path("smollm2", smollm2_gguf)
    tokenizer = load_tokenizer(store.resolve("smollm2").view_path)
    lltok = llg_tokenizer(tokenizer)
    assert lltok.vocab_size == 49152 and set(lltok.eos_tokens) == set(tokenizer.eos_token_ids)

    constraint = build_constraint(json.dumps(PERSON), tokenizer)
    assert isinstance(constraint, Constraint)
    instance = {"name": "Ada", "age": 36, "color": "blue", "tags": ["math"], "address": {"city": "London", "zip": 1}}
    body = tokenizer.encode(json.dumps(instance, separators=(",", ":")))
    prompt = _prompt(tokenizer)
    logits = mx.zeros((1, 49152))
    constraint(mx.array(prompt), logits)
    masked = constraint(mx.array(prompt + body), logits)
    assert constraint.error is None and constraint.is_done()
    assert [i for i, v in enumerate(masked[0].tolist()) if v != float("-inf")] == sorted(tokenizer.eos_token_ids)


def test_runner_ends_schema_requests_with_stop_and_valid_json(tmp_path: Path) -> None:
    """Through the worker's runner: seeded temperature-1 requests with a schema, batched beside a
    free one, each end with done_reason "stop" and text that validates."""
    from mlxserve.services.worker.prompts import ChatMessage, GenerationRequest
    from mlxserve.services.worker.runner import ModelRunner
    from mlxserve.services.worker.sampling import SamplingOptions
    from tests.fixtures.tiny_model import write_tiny_model

    runner = ModelRunner(write_tiny_model(tmp_path / "model"), num_parallel=4, max_queue=8)
    hi = (ChatMessage("user", "Describe a person."),)
    for seed in range(3):
        runner.submit(GenerationRequest(request_id=f"json-{seed}", is_chat=True, messages=hi, format=json.dumps(PERSON),
                                        options=SamplingOptions(temperature=1.0, seed=seed, num_predict=BUDGET)))
    runner.submit(GenerationRequest(request_id="free", is_chat=True, messages=hi,
                                    options=SamplingOptions(temperature=0, num_predict=20)))
    frames: dict[str, list] = {}
    for _ in range(2 * BUDGET):
        for event in runner.step():
            frames.setdefault(event.request_id, []).append(event)
        if not runner.has_work():
            break
    assert frames["free"][-1].done_reason == "length"
    for seed in range(3):
        events = frames[f"json-{seed}"]
        assert events[-1].done_reason == "stop"
        jsonschema.validate(json.loads("".join(e.text for e in events)), PERSON)


# -- closed objects: a schema's objects take only the keys it lists unless it says otherwise ------------


def test_objects_without_additional_properties_are_closed_at_every_depth() -> None:
    from mlxserve.services.worker.constraints import close_objects

    item = {"type": "object", "properties": {"x": {"type": "integer"}}}
    schema = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"a": {"type": "string"}}},
            "list": {"type": "array", "items": item},
            "either": {"anyOf": [item, {"type": "null"}]},
            "ref": {"$ref": "#/$defs/Thing"},
            "free": {"type": "object"},                                                  # any object: stays open
            "open": {"type": "object", "properties": {}, "additionalProperties": True},  # asked for extras
            "typed": {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
            "choice": {"enum": [{"properties": {}}]},                                    # a value, not a schema
        },
        "$defs": {"Thing": {"properties": {"b": {"type": "boolean"}}}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    props = closed["properties"]
    assert props["inner"]["additionalProperties"] is False
    assert props["list"]["items"]["additionalProperties"] is False
    assert props["either"]["anyOf"][0]["additionalProperties"] is False
    assert closed["$defs"]["Thing"]["additionalProperties"] is False
    assert "additionalProperties" not in props["free"]
    assert props["open"]["additionalProperties"] is True
    assert props["typed"]["additionalProperties"] == {"type": "integer"}
    assert props["choice"] == {"enum": [{"properties": {}}]}
    assert "additionalProperties" not in schema  # the caller's schema is not changed


def test_objects_merged_by_all_of_stay_satisfiable() -> None:
    from mlxserve.services.worker.constraints import close_objects

    schema = {"allOf": [{"$ref": "#/$defs/Base"}, {"properties": {"b": {"type": "integer"}}}],
              "$defs": {"Base": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    closed = close_objects(schema)
    assert "additionalProperties" not in closed["allOf"][1]
    assert "additionalProperties" not in closed["$defs"]["Base"]  # closing it would refuse "b"


def _accepts(tokenizer, schema: dict, text: str) -> bool:
    constraint = build_constraint(json.dumps(schema), tokenizer)
    prompt = _prompt(tokenizer)
    constraint(mx.array(prompt), mx.zeros((1, 512)))
    constraint(mx.array(prompt + tokenizer.encode(text)), mx.zeros((1, 512)))
    return constraint.error is None and constraint.is_accepting()


def test_extra_keys_are_refused_unless_the_schema_allows_them(tiny) -> None:
    _, tokenizer = tiny
    pydantic_like = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "title": "Person"}
    assert _accepts(tokenizer, pydantic_like, '{"name": "Ada"}')
    assert not _accepts(tokenizer, pydantic_like, '{"name": "Ada", "age": 3}')
    assert _accepts(tokenizer, {**pydantic_like, "additionalProperties": True}, '{"name": "Ada", "age": 3}')
    nested = {"type": "object", "properties": {"p": pydantic_like}, "required": ["p"]}
    assert not _accepts(tokenizer, nested, '{"p": {"name": "Ada", "age": 3}}')
    assert _accepts(tokenizer, {"type": "object"}, '{"anything": [1, 2]}')  # no properties listed: any object


def _open(schema: Any) -> Any:
    """`schema` with every `additionalProperties` left out, as pydantic writes it."""
    if isinstance(schema, dict):
        return {k: _open(v) for k, v in schema.items() if k != "additionalProperties"}
    return [_open(v) for v in schema] if isinstance(schema, list) else schema


@pytest.mark.parametrize("seed", range(2))
def test_schema_without_additional_properties_yields_only_listed_keys(tiny, seed: int) -> None:
    """From random weights, which would otherwise add keys until cut off."""
    model, tokenizer = tiny
    constraint = build_constraint(json.dumps(_open(PERSON)), tokenizer)
    text, reason = _generate(model, tokenizer, [constraint], seed)
    assert reason == "stop", f"seed {seed}: cut at {BUDGET} tokens: {text!r}"
    jsonschema.validate(json.loads(text), PERSON)  # PERSON: the same schema, closed explicitly
