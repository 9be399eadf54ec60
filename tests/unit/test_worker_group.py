"""The pure parts of a worker group: the step message, the fingerprint, the version handshake, the
pipeline split of a llama model, and the refusals. No process, no socket: the group is faked."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models import gpt2, llama

from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.worker.distributed import (
    GroupFailure,
    GroupInfo,
    decode_versions,
    encode_versions,
    group_hosts,
    own_label,
    version_mismatch,
)
from mlxserve.services.worker.group_sync import (
    KIND_HEARTBEAT,
    KIND_STEP,
    Cancellation,
    RankState,
    Submission,
    decode_header,
    decode_payload,
    diverged,
    encode_header,
    encode_payload,
    fingerprint,
    seeded,
)
from mlxserve.services.worker.main import parse_args
from mlxserve.services.worker.pipeline import check_shardable, pipeline_llama
from mlxserve.v1 import requests
from mlxserve.v1.frames import TokenEvent


class FakeGroup:
    """What `PipelineMixin.pipeline` asks of an mx.distributed.Group."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def tiny_llama(layers: int = 5, heads: int = 4, kv_heads: int = 2, layer_types: list[str] | None = None) -> llama.Model:
    args = llama.ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=layers, intermediate_size=64,
                           num_attention_heads=heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-5, vocab_size=64,
                           layer_types=layer_types, sliding_window=4 if layer_types else None)
    mx.random.seed(3)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


# -- the step message ------------------------------------------------------------------------------

def summed(*contributions: list[int]) -> list[int]:
    return [sum(column) for column in zip(*contributions)]


def test_step_header_from_every_rank_sums_to_rank_0s_message_and_each_ranks_own_slot() -> None:
    zero = RankState(fingerprint=11, prefill_limit=8, active_memory=1000, memory_bytes=2000, pid=100)
    one = RankState(fingerprint=11, prefill_limit=3, active_memory=900, memory_bytes=1900, pid=200)
    header = summed(encode_header(0, 2, zero, kind=KIND_STEP, payload_len=42), encode_header(1, 2, one))
    kind, length, ranks = decode_header(header, 2)
    assert (kind, length, ranks) == (KIND_STEP, 42, [zero, one])


def test_step_header_that_is_not_ours_is_a_group_failure() -> None:
    state = RankState(0, 1, 0, 0, 1)
    follower_only = encode_header(1, 2, state)  # rank 0's fields missing
    with pytest.raises(GroupFailure, match="malformed"):
        decode_header(follower_only, 2)
    with pytest.raises(GroupFailure):
        decode_header(encode_header(0, 2, state, kind=KIND_HEARTBEAT), 3)  # another group size


def test_step_payload_round_trips_submissions_and_cancellations_in_order() -> None:
    request = requests.GenerationRequest(request_id="r1", prompt="hi", options=requests.SamplingOptions(seed=5, stop=("x",)))
    items = [Submission(requests.encode(request), [1, 2, 3], 16, 1), Cancellation("r0")]
    back = decode_payload(encode_payload(items))
    assert back == items
    assert requests.decode(back[0].request) == request
    assert encode_payload([]) == b"" and decode_payload(b"") == []


def event(rid: str, tokens: list[int], done: str = "") -> TokenEvent:
    return TokenEvent(request_id=rid, token_ids=tokens, done=bool(done), done_reason=done or None)


def test_fingerprint_tells_other_tokens_or_endings_apart_and_chains_steps() -> None:
    base = fingerprint([event("a", [5]), event("b", [7])])
    assert base == fingerprint([event("a", [5]), event("b", [7])])
    assert base != fingerprint([event("a", [5]), event("b", [8])])
    assert base != fingerprint([event("a", [5]), event("b", [7], done="stop")])
    assert fingerprint([event("a", [1])], previous=base) != fingerprint([event("a", [1])], previous=0)
    assert 0 <= base < 1 << 62  # fits an int64 slot summed with zeros


def test_diverged_names_the_ranks_whose_fingerprint_differs_from_rank_0() -> None:
    same = [RankState(9, 1, 0, 0, 1), RankState(9, 1, 0, 0, 2)]
    assert diverged(same, ("mac-a", "mac-b")) is None
    odd = [RankState(9, 1, 0, 0, 1), RankState(9, 1, 0, 0, 2), RankState(4, 1, 0, 0, 3)]
    assert diverged(odd, ("a", "b", "c")) == "the model's group diverged: rank 2 (c) produced other tokens than rank 0"


def test_unseeded_request_gets_a_seed_once_and_a_seeded_one_keeps_its_own() -> None:
    unseeded = requests.GenerationRequest(request_id="r", options=requests.SamplingOptions(temperature=0.8))
    given = seeded(unseeded)
    assert given.options.seed is not None and 0 <= given.options.seed < 1 << 63
    assert given.options.temperature == 0.8
    requests.encode(given)  # msgpack carries it to the followers
    kept = requests.GenerationRequest(request_id="r", options=requests.SamplingOptions(seed=12))
    assert seeded(kept) is kept


# -- the version handshake and host labels ------------------------------------------------------------

def test_versions_round_trip_through_their_fixed_size_record() -> None:
    versions = ("0.32.4", "0.32.2", "0.1.0")
    record = encode_versions(versions)
    assert len(record) == 3 * 48 and decode_versions(record) == versions


def test_version_mismatch_names_every_host_and_its_versions() -> None:
    same = [("0.32.4", "0.32.2", "0.1.0")] * 2
    assert version_mismatch(same, ("mac-a", "mac-b")) is None
    line = version_mismatch([("0.32.4", "0.32.2", "0.1.0"), ("0.31.0", "0.32.2", "0.1.0")], ("mac-a", "mac-b"))
    assert line is not None and "\n" not in line
    assert "rank 0 (mac-a): mlx 0.32.4, mlx-lm 0.32.2, mlxserve 0.1.0" in line
    assert "rank 1 (mac-b): mlx 0.31.0, mlx-lm 0.32.2, mlxserve 0.1.0" in line


def test_group_hosts_come_from_the_environment_one_per_rank() -> None:
    assert group_hosts(2, {"MLXSERVE_GROUP_HOSTS": '["mac-a", "mac-b:5000"]'}) == ("mac-a", "mac-b:5000")
    assert group_hosts(2, {}) == ("rank 0", "rank 1")
    with pytest.raises(InvalidArgument, match="must list 2 host names"):
        group_hosts(2, {"MLXSERVE_GROUP_HOSTS": '["only-one"]'})
    assert own_label({"MLX_RANK": "1", "MLXSERVE_GROUP_HOSTS": '["a", "b"]'}) == "rank 1 (b)"


def test_lost_rank_message_names_the_other_rank_of_two_and_every_other_rank_of_more() -> None:
    two = GroupInfo(None, 0, 2, ("mac-a", "mac-b"), "pipeline", "ring")
    assert two.lost_message(RuntimeError("[ring] lost")).startswith("the model's group lost rank 1 (mac-b)")
    three = GroupInfo(None, 0, 3, ("a", "b", "c"), "pipeline", "ring")
    assert "one of ranks 1 (b), 2 (c)" in three.lost_message(RuntimeError("x"))


# -- the pipeline split ---------------------------------------------------------------------------------

# mlx-lm's even split: contiguous runs, rank 0 the last layers, the low ranks taking the extra ones.
@pytest.mark.parametrize("rank, size, held", [(0, 2, [2, 3, 4]), (1, 2, [0, 1]), (0, 3, [3, 4]), (1, 3, [1, 2]), (2, 3, [0])])
def test_pipelined_llama_rank_holds_and_caches_only_its_own_layers(rank: int, size: int, held: list[int]) -> None:
    model = tiny_llama(layers=5)
    originals = list(model.model.layers)
    pipeline_llama(model)
    model.model.pipeline(FakeGroup(rank, size))
    assert [id(layer) for layer in model.layers] == [id(originals[i]) for i in held]
    assert len(model.make_cache()) == len(held)
    # The other stage's layers are gone from the parameters: evaluating them reads only this rank's weights.
    params = model.parameters()["model"]["layers"]
    assert [i for i, p in enumerate(params) if p] == list(held)


@pytest.mark.parametrize("layer_types", [None, ["sliding_attention", "full_attention"] * 2 + ["sliding_attention"]])
def test_pipelined_llama_of_one_stage_computes_what_llama_computes(layer_types: list[str] | None) -> None:
    from mlx_lm.models.cache import make_prompt_cache

    reference = tiny_llama(layers=5, layer_types=layer_types)
    model = tiny_llama(layers=5, layer_types=layer_types)  # same seed: same weights
    pipeline_llama(model)
    model.model.pipeline(FakeGroup(0, 1))
    prompt = mx.array([[1, 5, 9, 3, 7, 2, 8]])
    caches = make_prompt_cache(reference), make_prompt_cache(model)
    assert [type(c) for c in caches[0]] == [type(c) for c in caches[1]]
    for step in (prompt, mx.array([[4]]), mx.array([[6]])):  # prefill, then decode steps past the window
        assert mx.allclose(reference(step, cache=caches[0]), model(step, cache=caches[1]), atol=1e-5)


# -- refusals ---------------------------------------------------------------------------------------------

def test_tensor_strategy_is_refused_when_the_heads_do_not_divide_by_the_group_size() -> None:
    model = tiny_llama(heads=9, kv_heads=3)  # SmolLM2-135M's head counts
    with pytest.raises(Unsupported, match=r"attention heads \(9\) to divide by 2"):
        check_shardable(model, "tensor", 2)
    check_shardable(model, "tensor", 3)
    check_shardable(model, "pipeline", 2)


def test_architecture_without_pipeline_or_shard_is_refused_with_the_strategy_to_use() -> None:
    args = gpt2.ModelArgs(model_type="gpt2", n_ctx=16, n_embd=32, n_head=4, n_layer=2, n_positions=16,
                          layer_norm_epsilon=1e-5, vocab_size=64)
    model = gpt2.Model(args)
    with pytest.raises(Unsupported, match="architecture 'gpt2' has no pipeline support"):
        check_shardable(model, "pipeline", 2)
    with pytest.raises(Unsupported, match="architecture 'gpt2' has no tensor-parallel support"):
        check_shardable(model, "tensor", 2)


def test_pipeline_is_refused_over_more_ranks_than_layers() -> None:
    with pytest.raises(Unsupported, match="at least 3 layers"):
        check_shardable(tiny_llama(layers=2), "pipeline", 3)


def test_follower_arguments_are_checked() -> None:
    args = parse_args(["--model-path", "m", "--group-strategy", "pipeline", "--follower"])
    assert args.follower and args.socket is None and args.group_backend == "ring"
    for bad in (["--model-path", "m", "--follower"], ["--model-path", "m", "--group-strategy", "pipeline"],
                ["--model-path", "m", "--group-strategy", "pipeline", "--follower", "--socket", "s"],
                ["--model-path", "m", "--socket", "s", "--group-strategy", "diagonal"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
