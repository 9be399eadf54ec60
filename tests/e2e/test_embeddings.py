"""all-MiniLM-L6-v2 from PyPI, imported through the store and embedded by our MLX BERT encoder."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.store.store import ModelStore
from mlxserve.services.worker.embeddings import EmbeddingRunner, is_embedding_model
from mlxserve.services.worker.engine import Engine
from mlxserve.v1 import worker_pb2
from tests.fixtures.minilm import MODEL_NAME, find_minilm_dir
from tests.fixtures.minilm_store import assert_close, minilm_store, minilm_view, reference  # noqa: F401 - fixtures

@pytest.fixture(scope="module")
def runner(minilm_view: Path) -> Iterator[EmbeddingRunner]:
    """The runner as the worker drives it: loaded and stepped by the engine thread."""
    engine = Engine(lambda: EmbeddingRunner(minilm_view, model_name=MODEL_NAME))
    loaded = engine.start(lambda event: None)
    assert isinstance(loaded, EmbeddingRunner)
    yield loaded
    engine.stop()


def test_import_makes_an_embedding_model_with_a_flat_pooling_config(minilm_store: ModelStore, minilm_view: Path) -> None:
    shown = minilm_store.show(MODEL_NAME)
    assert shown.config.capabilities == ["embedding"]
    assert (shown.summary.details.family, shown.summary.details.parameter_size) == ("bert", "22.71M")
    assert shown.config.context_length == 256  # sentence_bert_config.json's max_seq_length
    names = {p.name for p in minilm_view.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "modules.json", "pooling_config.json", "sentence_bert_config.json"} <= names
    assert is_embedding_model(minilm_view)


def test_import_refuses_a_pooling_mode_the_encoder_lacks(tmp_path: Path) -> None:
    src = find_minilm_dir()
    assert src is not None
    folder = tmp_path / "maxpool"
    folder.mkdir()
    for p in src.iterdir():
        if p.is_file():
            os.symlink(p, folder / p.name)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(InvalidArgument, match="pooling_mode_max_tokens is not supported"):
        ModelStore(tmp_path / "models").create_from_path("maxpool", folder)


def test_embeddings_match_the_sentence_transformers_reference(runner: EmbeddingRunner, reference: dict) -> None:
    assert runner.context_length == reference["max_seq_length"]
    result = runner.embed(reference["inputs"])
    assert_close(result.embeddings, reference["embeddings"])
    for vec in result.embeddings:
        assert math.isclose(math.fsum(v * v for v in vec), 1.0, abs_tol=1e-5)
    assert result.prompt_tokens == sum(len(ids) for ids in runner.tokenize(reference["inputs"]))
    assert result.total_duration_ns > 0


def test_a_batch_of_mixed_lengths_equals_embedding_one_by_one(runner: EmbeddingRunner, reference: dict) -> None:
    inputs = reference["inputs"] + ["word " * 40]
    before = runner.forward_passes
    together = runner.embed(inputs).embeddings
    assert runner.forward_passes == before + 1  # one padded batch for the whole request
    alone = [runner.embed([text]).embeddings[0] for text in inputs]
    assert_close(together, alone, 1e-5)


def test_concurrent_requests_share_one_forward_pass(minilm_view: Path, reference: dict) -> None:
    # This test thread plays the engine thread, so the three requests are surely queued together.
    runner = EmbeddingRunner(minilm_view)
    inputs = reference["inputs"][:3]
    results: dict[int, list[float]] = {}

    def call(i: int) -> None:
        results[i] = runner.embed([inputs[i]]).embeddings[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while runner.counts()[1] < 3:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.01)
    runner.step()
    for t in threads:
        t.join(10)
    assert runner.forward_passes == 1
    assert_close([results[i] for i in range(3)], reference["embeddings"][:3])


def test_dimensions_keep_the_first_values_renormalized(runner: EmbeddingRunner, reference: dict) -> None:
    full = reference["embeddings"][0]
    short = runner.embed([reference["inputs"][0]], dimensions=64).embeddings[0]
    assert len(short) == 64
    norm = math.sqrt(math.fsum(v * v for v in full[:64]))
    assert_close([short], [[v / norm for v in full[:64]]])
    with pytest.raises(InvalidArgument, match="dimensions must be between 1 and 384"):
        runner.embed(["hello"], dimensions=385)


def test_over_long_input_is_cut_to_max_seq_length_or_refused_when_truncate_is_false(runner: EmbeddingRunner) -> None:
    long_text = "token " * 400
    for truncate in (None, True):
        (ids,) = runner.tokenize([long_text], truncate)
        assert len(ids) == 256 and (ids[0], ids[-1]) == (101, 102)  # [CLS] ... [SEP] kept, as sentence-transformers cuts
    with pytest.raises(InvalidArgument, match=r"input 1 is \d+ tokens, longer than the model's maximum of 256"):
        runner.embed(["short", long_text], truncate=False)
    assert runner.embed(["short"], truncate=False).prompt_tokens == 3


def test_token_id_inputs_embed_as_the_same_text_does(runner: EmbeddingRunner, reference: dict) -> None:
    texts = reference["inputs"][:3]
    ids = runner.tokenize(texts)  # with the model's [CLS] ... [SEP], as the text path adds them
    by_ids = runner.embed([], token_inputs=ids)
    assert_close(by_ids.embeddings, runner.embed(texts).embeddings, 1e-5)
    assert by_ids.prompt_tokens == sum(len(i) for i in ids)


@pytest.mark.parametrize(("token_inputs", "complaint"), [
    ([[101, 30522, 102]], "input 0, position 1: token id 30522 is not in the model's vocabulary"),
    ([[101, 102], [101, -1]], "input 1, position 1: token id -1"),
    ([[101, 102], []], "input 1 is an empty list of token ids"),
])
def test_bad_token_id_inputs_are_refused_naming_the_input(runner: EmbeddingRunner, token_inputs, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        runner.embed([], token_inputs=token_inputs)


def test_texts_and_token_ids_together_are_refused(runner: EmbeddingRunner) -> None:
    with pytest.raises(InvalidArgument, match="either texts or token ids"):
        runner.embed(["hello"], token_inputs=[[101, 102]])


def test_num_ctx_cuts_inputs_or_refuses_them_when_truncate_is_false(runner: EmbeddingRunner) -> None:
    text = "word " * 40
    (cut,) = runner.tokenize([text], limit=16)
    assert len(cut) == 16 and (cut[0], cut[-1]) == (101, 102)  # [CLS] ... [SEP] kept
    for truncate in (None, True):
        result = runner.embed([text], num_ctx=16, truncate=truncate)
        assert result.prompt_tokens == 16
        assert_close(result.embeddings, runner.embed([], token_inputs=[cut]).embeddings, 1e-5)
        assert runner.embed([], token_inputs=[list(range(1000, 1040))], num_ctx=16, truncate=truncate).prompt_tokens == 16
    with pytest.raises(InvalidArgument, match=r"input 1 is 42 tokens, longer than num_ctx \(16\) \(truncate is false\)"):
        runner.embed(["short", text], num_ctx=16, truncate=False)
    with pytest.raises(InvalidArgument, match=r"input 0 is 40 tokens, longer than num_ctx \(16\)"):
        runner.embed([], token_inputs=[list(range(1000, 1040))], num_ctx=16, truncate=False)
    # num_ctx above the model's maximum: the maximum is the limit.
    with pytest.raises(InvalidArgument, match="longer than the model's maximum of 256"):
        runner.embed([], token_inputs=[[1000] * 300], num_ctx=4096, truncate=False)
    with pytest.raises(InvalidArgument, match="num_ctx must be positive"):
        runner.embed(["hi"], num_ctx=0)


def test_embed_request_token_inputs_and_num_ctx_reach_the_runner(runner: EmbeddingRunner) -> None:
    from mlxserve.services.worker.blas import BlasReport
    from mlxserve.services.worker.server import WorkerServicer

    servicer = WorkerServicer(runner, replies=None, blas=BlasReport("", 0.0, True))  # type: ignore[arg-type]
    embed = WorkerServicer.Embed.__wrapped__  # the method itself, without the gRPC error mapping
    reply = embed(servicer, worker_pb2.EmbedRequest(request_id="t", token_inputs=[worker_pb2.TokenIds(ids=[101, 7592, 102])]), None)
    assert reply.prompt_tokens == 3
    assert_close([list(reply.embeddings[0].values)], runner.embed(["hello"]).embeddings, 1e-5)
    cut = embed(servicer, worker_pb2.EmbedRequest(request_id="n", inputs=["word " * 40], num_ctx=8), None)
    assert cut.prompt_tokens == 8


def test_generate_on_an_embedding_model_is_unsupported(runner: EmbeddingRunner) -> None:
    with pytest.raises(Unsupported, match=f"model '{MODEL_NAME}' does not support generate"):
        runner.submit(object())
