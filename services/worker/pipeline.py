"""Pipeline parallelism for mlx-lm's llama family, which mlx-lm 0.32 ships without it.

mlx-lm gives qwen2, qwen3_moe, deepseek... a `PipelineMixin` (models/pipeline.py): rank r holds a
contiguous run of layers, the last ranks the first layers; a forward pass receives the hidden
state from rank r+1, runs its own layers, sends the result to rank r-1, and all-gathers rank 0's
output so that every rank computes the same logits. `pipeline_llama` gives mlx-lm's own llama
`Model` (llama, mistral, SmolLM2...) exactly that forward, in place, keeping its weights; the
masks are llama's own (full and sliding-window attention), computed from the first cache of
each kind among the rank's layers. The outer model's `layers` and `make_cache` cover only the
rank's layers, as qwen2's do.

`shard_model` picks mlx-lm's pipeline, ours, or mlx-lm's tensor `shard`, and refuses, with the
reason, a model that has none of them or whose head counts do not divide by the group size.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx import nn
from mlx_lm.models import llama
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_lm.models.pipeline import PipelineMixin

from mlxserve.services.common.errors import Unsupported


class PipelinedLlamaModel(PipelineMixin, llama.LlamaModel):
    """llama's inner model, pipelined as mlx-lm's qwen2 is (see the module docstring)."""

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, input_embeddings: mx.array | None = None) -> mx.array:
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        rank, size = self.pipeline_rank, self.pipeline_size
        layers = self.pipeline_layers
        if cache is None:
            cache = [None] * len(layers)
        # The masks from this rank's own caches: the first full-attention and sliding layer here.
        fa = next((i for i, layer in enumerate(layers) if not layer.use_sliding), None)
        swa = next((i for i, layer in enumerate(layers) if layer.use_sliding), None)
        fa_mask = create_attention_mask(h, cache[fa]) if fa is not None else None
        swa_mask = create_attention_mask(h, cache[swa], window_size=self.sliding_window) if swa is not None else None

        if rank < size - 1:  # the hidden state from the ranks that hold the earlier layers
            h = mx.distributed.recv_like(h, rank + 1)
        for layer, c in zip(layers, cache):
            h = layer(h, swa_mask if layer.use_sliding else fa_mask, cache=c)
        if rank != 0:
            h = mx.distributed.send(h, (rank - 1) % size)
            if cache[-1] is not None:  # keep the send in the graph that the cache update evaluates
                cache[-1].keys = mx.depends(cache[-1].keys, h)
        if size > 1:  # every rank gets rank 0's output, within the graph
            h = mx.distributed.all_gather(h)[: h.shape[0]]
        return self.norm(h)


class PipelinedLlama(llama.Model):
    """llama's outer model whose layers and caches are only the rank's own."""

    @property
    def layers(self) -> list[Any]:
        return self.model.pipeline_layers

    def make_cache(self) -> list[Any]:
        return [RotatingKVCache(max_size=self.model.sliding_window) if layer.use_sliding else KVCache()
                for layer in self.layers]


def has_pipeline(model: nn.Module) -> bool:
    """Whether mlx-lm's model (or `pipeline_llama`) can split `model` into pipeline stages."""
    inner = getattr(model, "model", None)
    return hasattr(inner, "pipeline") or type(model) is llama.Model


def pipeline_llama(model: nn.Module) -> None:
    """Give an mlx-lm llama `Model` the pipelined forward, in place (weights untouched);
    `model.model.pipeline(group)` then splits it."""
    if type(model) is not llama.Model or type(model.model) is not llama.LlamaModel:
        raise TypeError(f"not mlx-lm's llama model: {type(model).__name__}")
    inner = model.model
    inner.__class__ = PipelinedLlamaModel
    # PipelineMixin.__init__'s fields: one stage holding every layer until `pipeline` splits it.
    inner.pipeline_rank, inner.pipeline_size, inner.start_idx, inner.end_idx = 0, 1, 0, None
    model.__class__ = PipelinedLlama


def check_shardable(model: nn.Module, strategy: str, size: int) -> None:
    """Raise Unsupported (with the reason) when `model` cannot be split `strategy`-wise over `size` ranks."""
    kind = getattr(getattr(model, "args", None), "model_type", "") or type(model).__module__.rsplit(".", 1)[-1]
    if strategy == "pipeline":
        if not has_pipeline(model):
            raise Unsupported(f"architecture {kind!r} has no pipeline support (in mlx-lm or mlxserve): "
                              "use strategy tensor if mlx-lm can shard it, or a single host")
        layers = len(model.layers)
        if layers < size:
            raise Unsupported(f"a pipeline of {size} ranks needs at least {size} layers; {kind!r} has {layers}")
        return
    if strategy != "tensor":
        raise Unsupported(f"unknown group strategy {strategy!r} (pipeline or tensor)")
    if not hasattr(model, "shard"):
        raise Unsupported(f"architecture {kind!r} has no tensor-parallel support in mlx-lm: use strategy pipeline")
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", 0) or 0
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    for name, count in (("attention heads", heads), ("key/value heads", kv_heads)):
        if count and count % size:
            raise Unsupported(f"tensor parallelism over {size} ranks needs the {name} ({count}) to divide by {size}: "
                              "use strategy pipeline")


def shard_model(model: nn.Module, group: Any, strategy: str) -> None:
    """Split `model` (loaded lazily) over `group`, in place: after this, evaluating its parameters
    reads only this rank's part of the weights."""
    check_shardable(model, strategy, group.size())
    if strategy == "tensor":
        model.shard(group)
        return
    if not hasattr(model.model, "pipeline"):
        pipeline_llama(model)
    model.model.pipeline(group)
