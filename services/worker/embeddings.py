"""Embedding models: our own MLX BERT encoder, and the runner that batches Embed calls.

The encoder reads a store view of a sentence-transformers model (all-MiniLM-L6-v2 and kin):
config.json (BERT), model.safetensors (Hugging Face key names), tokenizer.json,
pooling_config.json (mean or CLS pooling; flattened by the store from 1_Pooling/config.json) and
sentence_bert_config.json (max_seq_length). Output vectors are L2-normalized, as the
sentence-transformers Normalize module does.

Threading: `EmbeddingRunner.embed()` is called from gRPC threads; it tokenizes there (the
`tokenizers` library does not touch MLX), queues a job and waits. The engine thread drains every
queued job at each `step()`, so the inputs of one request and of concurrent requests share padded
forward passes. All MLX work happens on that one thread, like the generation runner.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
from tokenizers import Encoding, Tokenizer

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Busy, Internal, InvalidArgument, MlxServeError, Unavailable, Unsupported
from mlxserve.v1.frames import TokenEvent

log = logs.get_logger()

POOLING_FILE = "pooling_config.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
EMBEDDING_MODEL_TYPES = frozenset({"bert"})
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_NEG = -1e9  # additive attention mask for padding keys: exp() underflows to exactly 0


def is_embedding_model(model_path: str | Path) -> bool:
    """Whether a model folder holds an embedding model (a BERT config or a pooling config)."""
    path = Path(model_path)
    if (path / POOLING_FILE).is_file() or (path / "modules.json").is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in EMBEDDING_MODEL_TYPES


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BertConfig:
        """Read a Hugging Face BERT config, refusing variants this encoder does not implement."""
        model_type = config.get("model_type")
        if model_type not in EMBEDDING_MODEL_TYPES:
            raise Unsupported(f"embedding architecture {model_type!r} is not supported (supported: {', '.join(sorted(EMBEDDING_MODEL_TYPES))})")
        if config.get("hidden_act", "gelu") != "gelu":
            raise Unsupported(f"BERT activation {config.get('hidden_act')!r} is not supported (only 'gelu')")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise Unsupported(f"BERT position embeddings {config.get('position_embedding_type')!r} are not supported (only 'absolute')")
        try:
            return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})
        except TypeError as e:
            raise InvalidArgument(f"config.json is not a complete BERT config: {e}") from None


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])
        # Single-segment inputs: every token has token type 0.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, d = x.shape
        h = self.num_heads

        def heads(t: mx.array) -> mx.array:
            return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

        out = mx.fast.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), scale=(d // h) ** -0.5, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(b, n, d)


class BertResidualOutput(nn.Module):
    """dense -> + residual -> LayerNorm (BERT's attention.output and output blocks)."""

    def __init__(self, c: BertConfig, in_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attn = BertSelfAttention(c)  # "attention.self" in Hugging Face names (see _hf_key)
        self.output = BertResidualOutput(c, c.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self.attn(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.gelu(self.dense(x))  # exact (erf) GELU, as Hugging Face's "gelu"


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertResidualOutput(c, c.intermediate_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = [BertLayer(c) for _ in range(c.num_hidden_layers)]

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nn.Module):
    """BERT without the pooler head: token states for a padded batch."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """input_ids, attention_mask: [batch, length] (mask 1 for tokens, 0 for padding)."""
        additive = ((1.0 - attention_mask.astype(mx.float32)) * _NEG)[:, None, None, :]
        return self.encoder(self.embeddings(input_ids), additive)


def _hf_key(key: str) -> str | None:
    """Our parameter name for a Hugging Face BERT weight, or None for weights we do not use."""
    if key.startswith("bert."):
        key = key[len("bert."):]
    if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
        return None
    return key.replace(".attention.self.", ".attention.attn.")


def load_bert(model_path: Path) -> BertModel:
    """Build the encoder from config.json and load every *.safetensors weight (float32)."""
    config = BertConfig.from_dict(json.loads((model_path / "config.json").read_text()))
    model = BertModel(config)
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise InvalidArgument(f"{model_path} has no *.safetensors weights")
    weights: dict[str, mx.array] = {}
    for f in files:
        for key, value in mx.load(str(f)).items():
            ours = _hf_key(key)
            if ours is not None:
                weights[ours] = value.astype(mx.float32)  # small models: full precision keeps 1e-4 agreement
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def pooling_mode(model_path: Path) -> str:
    """'mean' or 'cls' from pooling_config.json; mean when the folder has none (plain BERT)."""
    path = model_path / POOLING_FILE
    if not path.is_file():
        return "mean"
    config = json.loads(path.read_text())
    modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise Unsupported(f"pooling {', '.join(modes) or 'none'} is not supported (supported: mean, cls)")
    return POOLING_MODES[modes[0]]


def max_sequence_length(model_path: Path, config: BertConfig) -> int:
    """sentence_bert_config.json's max_seq_length, else the model's position limit."""
    path = model_path / ST_CONFIG_FILE
    if path.is_file():
        value = json.loads(path.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return min(value, config.max_position_embeddings)
    return config.max_position_embeddings


def pool(states: mx.array, mask: mx.array, mode: str) -> mx.array:
    """Pool token states [b, n, d] to [b, d] (masked mean, or the first token), L2-normalized."""
    if mode == "cls":
        pooled = states[:, 0]
    else:
        m = mask.astype(states.dtype)[..., None]
        pooled = (states * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
    return normalize(pooled)


def normalize(x: mx.array) -> mx.array:
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class EmbedResult:
    embeddings: list[list[float]]
    prompt_tokens: int
    total_duration_ns: int


@dataclass
class _Job:
    sequences: list[list[int]]
    dimensions: int
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    vectors: list[list[float]] | None = None
    error: MlxServeError | None = None


class EmbeddingRunner:
    """Serves one embedding model; the engine thread runs `step()`, any thread may call `embed()`.

    Exposes the same engine-facing surface as ModelRunner (has_work, wait_for_work, step,
    close, shutdown, counts, cancel, load facts) so the Engine drives either one.
    """

    kind = "embed"

    def __init__(self, model_path: str | Path, *, model_name: str = "", max_queue: int = 64, max_batch_tokens: int = 16384) -> None:
        started = time.perf_counter()
        self.model_path = Path(model_path)
        self.model_name = model_name or self.model_path.name
        self.model = load_bert(self.model_path)
        self.pooling = pooling_mode(self.model_path)
        self.context_length = max_sequence_length(self.model_path, self.model.config)
        self.dimensions = self.model.config.hidden_size
        self._full = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        # tokenizer.json may carry its own padding/truncation (MiniLM's: fixed 128): we pad per
        # batch ourselves and truncate (`_cut`) only when the request allows it.
        self._full.no_padding()
        self._full.no_truncation()
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.device = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
        self.forward_passes = 0  # padded batches run so far (batching is visible in tests and logs)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._closed: str | None = None
        self.load_duration_s = time.perf_counter() - started
        self.active_memory = mx.get_active_memory()

    # --- any thread -------------------------------------------------------------------------

    def tokenize(self, inputs: Sequence[str], truncate: bool | None = None, limit: int | None = None) -> list[list[int]]:
        """Token ids per input with the model's special tokens. An input over `limit` tokens (the
        model's max_seq_length when None) is cut to it, special tokens kept, unless `truncate` is
        False, which makes it an InvalidArgument."""
        limit = self.context_length if limit is None else limit
        encodings: list[Encoding] = self._full.encode_batch(list(inputs))
        out: list[list[int]] = []
        for i, (text, enc) in enumerate(zip(inputs, encodings)):
            ids = enc.ids
            if len(ids) > limit:
                if truncate is False:
                    raise InvalidArgument(f"input {i} is {len(ids)} tokens, longer than {self._limit_name(limit)} "
                                          "(truncate is false)")
                ids = self._cut(text, limit)
            out.append(ids)
        return out

    def _cut(self, text: str, limit: int) -> list[int]:
        """`text`'s tokens cut to `limit` as Hugging Face truncation cuts them: the text's own
        tokens shortened, then the special tokens ([CLS] ... [SEP]) added around them."""
        body = self._full.encode(text, add_special_tokens=False)
        body.truncate(max(0, limit - self._full.num_special_tokens_to_add(False)))
        return self._full.post_process(body).ids[:limit]

    def _limit_name(self, limit: int) -> str:
        if limit == self.context_length:
            return f"the model's maximum of {limit}"
        return f"num_ctx ({limit})"

    def check_tokens(self, token_inputs: Sequence[Sequence[int]], truncate: bool | None, limit: int) -> list[list[int]]:
        """Token-id inputs as they are (validated against the vocabulary), cut to `limit` unless
        `truncate` is False, which makes a longer one an InvalidArgument."""
        vocab = self.model.config.vocab_size
        out = []
        for i, ids in enumerate(token_inputs):
            if not ids:
                raise InvalidArgument(f"input {i} is an empty list of token ids")
            for j, token in enumerate(ids):
                if not 0 <= token < vocab:
                    raise InvalidArgument(f"input {i}, position {j}: token id {token} is not in the model's vocabulary "
                                          f"(0 to {vocab - 1})")
            if len(ids) > limit:
                if truncate is False:
                    raise InvalidArgument(f"input {i} is {len(ids)} tokens, longer than {self._limit_name(limit)} "
                                          "(truncate is false)")
                ids = ids[:limit]
            out.append(list(ids))
        return out

    def embed(self, inputs: Sequence[str], *, truncate: bool | None = None, dimensions: int = 0,
              token_inputs: Sequence[Sequence[int]] = (), num_ctx: int | None = None) -> EmbedResult:
        """Embed `inputs` (texts) or `token_inputs` (token-id lists, embedded as they are: no special
        tokens added), blocking until the engine thread has run them; thread-safe.

        Inputs longer than min(num_ctx, the model's maximum) are cut to it, unless `truncate` is
        False: then InvalidArgument names the first such input and its length.
        """
        started = time.perf_counter()
        if dimensions < 0 or dimensions > self.dimensions:
            raise InvalidArgument(f"dimensions must be between 1 and {self.dimensions} (0 for all), got {dimensions}")
        if inputs and token_inputs:
            raise InvalidArgument("send either texts or token ids to embed, not both")
        if num_ctx is not None and num_ctx <= 0:
            raise InvalidArgument(f"num_ctx must be positive, got {num_ctx}")
        limit = self.context_length if num_ctx is None else min(num_ctx, self.context_length)
        if token_inputs:
            sequences = self.check_tokens(token_inputs, truncate, limit)
        else:
            sequences = self.tokenize(inputs, truncate, limit)
        prompt_tokens = sum(len(s) for s in sequences)
        if not sequences:
            return EmbedResult([], 0, int((time.perf_counter() - started) * 1e9))
        job = _Job(sequences, dimensions, started)
        with self._lock:
            if self._closed is not None:
                raise Unavailable(self._closed)
            if len(self._queue) >= self.max_queue:
                raise Busy(f"model '{self.model_name}' has {len(self._queue)} embedding requests waiting; try again later")
            self._queue.append(job)
        self._wake.set()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.vectors is not None
        return EmbedResult(job.vectors, prompt_tokens, int((time.perf_counter() - job.started) * 1e9))

    def submit(self, request: Any) -> Any:
        raise Unsupported(f"model '{self.model_name}' does not support generate")

    def cancel(self, request_id: str) -> bool:
        return False  # embed calls are short and synchronous: nothing to cancel by id

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._running, len(self._queue)

    def wait_for_work(self, timeout: float) -> bool:
        woke = self._wake.wait(timeout)
        self._wake.clear()
        return woke

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def close(self, reason: str) -> None:
        with self._lock:
            self._closed = reason
        self._wake.set()

    # --- engine thread ----------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """Run every queued job in padded, length-sorted batches; returns no frames."""
        with self._lock:
            jobs = list(self._queue)
            self._queue.clear()
            self._running = len(jobs)
        try:
            flat = [(j, i, seq) for j in jobs for i, seq in enumerate(j.sequences)]
            vectors = self.encode([seq for _, _, seq in flat])
            results: dict[int, list[list[float]]] = {id(j): [[] for _ in j.sequences] for j in jobs}
            for (job, i, _), vec in zip(flat, vectors):
                results[id(job)][i] = vec
            for job in jobs:
                job.vectors = [_shorten(v, job.dimensions) for v in results[id(job)]]
                job.done.set()
            log.debug("embedded_batch", requests=len(jobs), inputs=len(flat), forward_passes=self.forward_passes)
        except BaseException as e:  # noqa: BLE001 - waiting callers must hear about it, then the engine stops
            for job in jobs:
                if not job.done.is_set():
                    job.error = Internal(f"embedding failed: {type(e).__name__}: {e}")
                    job.done.set()
            raise
        finally:
            with self._lock:
                self._running = 0
            self.active_memory = mx.get_active_memory()
        return []

    def encode(self, sequences: list[list[int]]) -> list[list[float]]:
        """Normalized vectors for token sequences, in order; batches by similar length."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[list[float]] = [[] for _ in sequences]
        start = 0
        while start < len(order):
            # Grow the batch while padding to its longest (last, as sorted) member fits the budget.
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(sequences[order[end]]) <= self.max_batch_tokens:
                end += 1
            batch = [sequences[i] for i in order[start:end]]
            for i, vec in zip(order[start:end], self._forward(batch)):
                out[i] = vec
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        width = max(len(s) for s in batch)
        ids = mx.array([s + [0] * (width - len(s)) for s in batch], dtype=mx.int32)
        mask = mx.array([[1] * len(s) + [0] * (width - len(s)) for s in batch], dtype=mx.int32)
        vectors = pool(self.model(ids, mask), mask, self.pooling)
        mx.eval(vectors)
        self.forward_passes += 1
        return vectors.tolist()

    def shutdown(self, message: str = "the worker is shutting down") -> list[TokenEvent]:
        """Fail every queued job with `message` (Unavailable); returns no frames."""
        self.close(message)
        with self._lock:
            jobs = list(self._queue)
            self._queue.clear()
        for job in jobs:
            job.error = Unavailable(message)
            job.done.set()
        return []


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """Keep the first `dimensions` values (0: all) and re-normalize to unit length."""
    if not dimensions or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = max(sum(v * v for v in head) ** 0.5, 1e-12)
    return [v / norm for v in head]
