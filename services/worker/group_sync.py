"""Lock-step serving for a group: every rank runs the same ModelRunner steps; rank 0 decides.

The pipeline's forward is a collective (each rank runs its layers, then all of them compute the
same logits and sample the same tokens), so every rank must make exactly the same scheduling
decisions. At the start of each step rank 0 broadcasts one step message (mlx-lm's server shares
its requests the same way: `all_sum` of bytes, the other ranks adding zeros):

- the inbox it drained: new submissions (the prepared request as msgpack, its tokens,
  max_tokens and truncation; an unseeded request gets its seed here, so that every rank samples
  alike) and cancellations, in order;
- in each rank's own slot: that rank's fingerprint of the frames its previous step made, its
  prefill limit (what its memory holds; every rank takes the smallest), its memory and pid.

A fingerprint that differs between ranks is fatal ("the ranks diverged"), never silent. When
idle, rank 0 sends a heartbeat every idle poll (a dead rank is noticed; the followers never
block for long); at shutdown it sends a stop, and the followers exit. A collective that fails
(a rank died) ends the group: rank 0 fails every request with a message naming the lost rank.

No prefix cache and no disk cache in a group: their byte-bounded eviction depends on each rank's
own memory, and a hit on one rank but not another would split the batch differently.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Unsupported
from mlxserve.v1 import requests
from mlxserve.v1.frames import TokenEvent

from . import precision
from .distributed import GroupFailure, GroupInfo, load_sharded
from .embeddings import is_embedding_model
from .runner import ModelRunner, _Pending
from .server import resident_memory_bytes

log = logs.get_logger()

MAGIC = 0x6D6C7873  # "mlxs": a header that is not one of ours is a fatal protocol error
KIND_STEP, KIND_HEARTBEAT, KIND_STOP = 1, 2, 3
HEADER_FIELDS = 3          # magic, kind, payload length (rank 0's)
RANK_FIELDS = 5            # per rank: fingerprint, prefill limit, active memory, resident memory, pid
FINGERPRINT_MASK = (1 << 62) - 1  # fits an int64 summed with zeros


class Submission(msgspec.Struct, tag="submit", array_like=True):
    request: bytes            # requests.encode of the prepared request (defaults applied, seeded)
    tokens: list[int]
    max_tokens: int
    truncated: int = 0


class Cancellation(msgspec.Struct, tag="cancel", array_like=True):
    request_id: str


_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoder = msgspec.msgpack.Decoder(list[Submission | Cancellation])


@dataclass(frozen=True)
class RankState:
    """What one rank reported in the last step message."""

    fingerprint: int
    prefill_limit: int
    active_memory: int
    memory_bytes: int
    pid: int


@dataclass(frozen=True)
class StepMessage:
    kind: int
    items: list[Submission | Cancellation]
    ranks: list[RankState]


def encode_payload(items: Sequence[Submission | Cancellation]) -> bytes:
    return _payload_encoder.encode(list(items)) if items else b""


def decode_payload(data: bytes) -> list[Submission | Cancellation]:
    return _payload_decoder.decode(data) if data else []


def header_size(size: int) -> int:
    return HEADER_FIELDS + RANK_FIELDS * size


def encode_header(rank: int, size: int, own: RankState, *, kind: int = 0, payload_len: int = 0) -> list[int]:
    """This rank's contribution to the summed header: rank 0 fills the message fields, every rank
    its own slot, zeros elsewhere."""
    header = [0] * header_size(size)
    if rank == 0:
        header[:HEADER_FIELDS] = [MAGIC, kind, payload_len]
    start = HEADER_FIELDS + RANK_FIELDS * rank
    header[start:start + RANK_FIELDS] = [own.fingerprint, own.prefill_limit, own.active_memory, own.memory_bytes, own.pid]
    return header


def decode_header(header: Sequence[int], size: int) -> tuple[int, int, list[RankState]]:
    """(kind, payload length, every rank's state) from the summed header."""
    if len(header) != header_size(size) or header[0] != MAGIC or header[1] not in (KIND_STEP, KIND_HEARTBEAT, KIND_STOP):
        raise GroupFailure(f"the group's step message is malformed (header {list(header[:HEADER_FIELDS])})")
    ranks = [RankState(*header[HEADER_FIELDS + RANK_FIELDS * r:HEADER_FIELDS + RANK_FIELDS * (r + 1)]) for r in range(size)]
    return int(header[1]), int(header[2]), ranks


def fingerprint(events: Iterable[TokenEvent], previous: int = 0) -> int:
    """A digest of what a step produced for the user (each request's new token ids and how it ended),
    chained to the previous one: equal on every rank unless they diverged."""
    h = hashlib.blake2b(previous.to_bytes(8, "little"), digest_size=8)
    for e in events:
        h.update(f"{e.request_id}\0{','.join(map(str, e.token_ids))}\0{e.done_reason if e.done else ''}\n".encode())
    return int.from_bytes(h.digest(), "little") & FINGERPRINT_MASK


def diverged(ranks: Sequence[RankState], hosts: Sequence[str]) -> str | None:
    """None when every rank's fingerprint agrees; else the fatal error's message."""
    if all(r.fingerprint == ranks[0].fingerprint for r in ranks):
        return None
    odd = [f"rank {i} ({hosts[i] if i < len(hosts) else '?'})" for i, r in enumerate(ranks) if r.fingerprint != ranks[0].fingerprint]
    return f"the model's group diverged: {', '.join(odd)} produced other tokens than rank 0"


def seeded(request: requests.GenerationRequest) -> requests.GenerationRequest:
    """`request` with a concrete seed: unseeded sampling draws its seed once, on rank 0, for every rank."""
    seed = request.options.seed
    if seed is not None and seed >= 0:
        return request
    fresh = int.from_bytes(os.urandom(8), "little") >> 1  # the sampler masks to 64 bits; msgpack holds 63
    return msgspec.structs.replace(request, options=msgspec.structs.replace(request.options, seed=fresh))


class Channel:
    """The step message over `mx.distributed`: two `all_sum`s (the header, then the payload when
    there is one) on `stream`, the stream the model's own collectives run on. The batch generator
    leaves the next forward pass in flight (async_eval); a collective on another stream could
    interleave with its send/recv differently on each rank, one stream keeps every rank's order."""

    def __init__(self, info: GroupInfo, stream: Any) -> None:
        self.info = info
        self.stream = stream

    def exchange(self, own: RankState, *, kind: int = 0, payload: bytes = b"") -> StepMessage:
        import mlx.core as mx
        import numpy as np

        rank, size, group = self.info.rank, self.info.size, self.info.group
        header = encode_header(rank, size, own, kind=kind, payload_len=len(payload))
        try:
            summed = mx.distributed.all_sum(mx.array(header, dtype=mx.int64), group=group, stream=self.stream).tolist()
            kind, length, ranks = decode_header(summed, size)
            data = b""
            if length:
                mine = np.frombuffer(payload, dtype=np.uint8) if rank == 0 else np.zeros(length, dtype=np.uint8)
                data = bytes(np.array(mx.distributed.all_sum(mx.array(mine), group=group, stream=self.stream)))
        except GroupFailure:
            raise
        except RuntimeError as e:  # a rank is gone: MLX's ring notices within about a second
            raise GroupFailure(self.info.lost_message(e)) from e
        return StepMessage(kind, decode_payload(data), ranks)


class GroupRunner(ModelRunner):
    """A ModelRunner that steps in lock-step with the other ranks of its group (module docstring).

    Rank 0 serves as any runner does (its engine thread calls step/wait_for_work); a follower
    only calls `step()` in a loop (`follow`) until rank 0 says stop."""

    def __init__(self, model_path: str | Path, info: GroupInfo, **kwargs: Any) -> None:
        self.group = info
        self.strategy = info.strategy
        self.ranks: list[RankState] = []   # every rank's last report (rank 0 first), for Info
        self.stopped = False               # a follower got rank 0's stop
        self.failure: str | None = None   # why the group ended, told to every request
        self._step_items: list[tuple[str, Any]] | None = None
        self._prefill_limit = 0
        self._fingerprint = 0
        # See the module docstring: no prefix or disk cache in a group.
        super().__init__(model_path, **{**kwargs, "prefix_cache_bytes": 0, "prefix_cache_entries": 0, "prefix_cache_disk": None})
        self.needs_checkpoints = False  # checkpoints are prefix-cache entries: none here
        self._channel = Channel(info, self._stream)
        import mlx.core as mx

        # Every rank's RNG alike (as mlx-lm's server does); also the first step after every load.
        seed = mx.distributed.all_sum(mx.random.state[0], group=info.group, stream=mx.cpu).view(mx.uint64).item()
        mx.random.seed(seed)

    def _load_model(self) -> tuple[Any, Any]:
        self._check_same_settings()  # before the load: a group that cannot step together fails fast
        model, tokenizer = load_sharded(self.model_path, self.group)
        inner = model.model
        held = f"{inner.start_idx}..{inner.end_idx - 1}" if self.strategy == "pipeline" else "a slice of every layer"
        log.info("group_shard", rank=self.group.rank, size=self.group.size, strategy=self.strategy, layers=held,
                 prefix_cache="off in a group: each rank's byte-bounded eviction would differ")
        return model, tokenizer

    def _check_same_settings(self) -> None:
        """Every rank must batch alike: refuse a group whose ranks were given other batch sizes."""
        import mlx.core as mx

        mine = mx.array([[self.num_parallel, self.prefill_step_size]])
        rows = mx.distributed.all_gather(mine, group=self.group.group, stream=mx.cpu).tolist()
        if any(row != rows[0] for row in rows):
            described = ", ".join(f"rank {r} ({self.group.host(r)}): num_parallel {n}, prefill_step_size {s}"
                                  for r, (n, s) in enumerate(rows))
            raise Unsupported(f"the group's ranks were started with different batch settings ({described})")

    def _apply_precision(self, setting: str, budget: int) -> precision.PrecisionPlan:
        """float32 on every rank or on none: each rank computes the logits with its own copy of the
        head, and ranks that computed them in different precisions would sample differently."""
        import mlx.core as mx

        local = precision.plan(self.model, device=self.device, setting=setting, budget=budget)
        votes = mx.distributed.all_sum(mx.array(int(local.convert)), group=self.group.group, stream=mx.cpu).item()
        if votes in (0, self.group.size):
            return super()._apply_precision(setting, budget)
        kept = super()._apply_precision("never", budget)
        return replace(kept, reason="another rank of the group cannot hold float32 weights: every rank keeps them as loaded")

    # -- the engine thread (rank 0) and the follower loop ---------------------------------------

    def wait_for_work(self, timeout: float) -> bool:
        """Rank 0, idle: wait as usual, then a heartbeat, so that a lost rank is noticed while idle."""
        got = super().wait_for_work(timeout)
        if not got and self.failure is None:
            self._exchange(KIND_HEARTBEAT)
        return got

    def step(self) -> list[TokenEvent]:
        if self.group.rank == 0:
            items = [(kind, seeded_pending(item) if kind == "submit" else item) for kind, item in super()._take_inbox()]
            try:
                self._exchange(KIND_STEP, encode_payload([_wire(kind, item) for kind, item in items]))
            except GroupFailure:
                self._step_items = items  # for shutdown to end them with the failure
                raise
        else:
            message = self._exchange()
            if message.kind == KIND_STOP:
                self.stopped = True
            if message.kind != KIND_STEP:
                return []
            items = [self._unwire(item) for item in message.items]
        self._step_items = items
        events = super().step()
        self._fingerprint = fingerprint(events, self._fingerprint)
        return events

    def follow(self) -> None:
        """A follower's life: step with rank 0 until it says stop; raises GroupFailure when the group ends."""
        while not self.stopped:
            self.step()

    def shutdown(self, message: str = "the worker is shutting down") -> list[TokenEvent]:
        """Rank 0: tell the followers to stop (unless the group is already lost), then end every request;
        a lost group's requests are told which rank was lost."""
        if self.group.rank == 0 and self.failure is None:
            try:
                self._exchange(KIND_STOP)
                log.info("group_stop_sent", ranks=self.group.size - 1)
            except GroupFailure:
                pass  # _failure is set: the requests are told why
        if self._step_items is not None:  # taken from the inbox by a step that failed: end them too
            self._step_items += super()._take_inbox()
        return super().shutdown(self.failure or message)

    def _check_step_error(self, error: Exception) -> None:
        """A collective inside the model's forward failed: the group is lost, not just this batch."""
        if self.group.size > 1 and _is_collective_failure(error):
            self.failure = self.group.lost_message(error)
            raise GroupFailure(self.failure) from error

    # -- internals ---------------------------------------------------------------------------------

    def _take_inbox(self) -> list[tuple[str, Any]]:
        """The step's inbox as the step message carried it (shutdown takes the real one)."""
        if self._step_items is None:
            return super()._take_inbox()
        items, self._step_items = self._step_items, None
        return items

    def _prefill_batch_size(self) -> int:
        """The smallest of the ranks' limits sent at this step's start (the same number on every rank)."""
        return self._prefill_limit or super()._prefill_batch_size()

    def _exchange(self, kind: int = 0, payload: bytes = b"") -> StepMessage:
        import mlx.core as mx

        own = RankState(self._fingerprint, super()._prefill_batch_size(), mx.get_active_memory(), resident_memory_bytes(), os.getpid())
        try:
            message = self._channel.exchange(own, kind=kind, payload=payload)
        except GroupFailure as e:
            self.failure = str(e)
            raise
        self.ranks = message.ranks
        self._prefill_limit = min(r.prefill_limit for r in message.ranks)
        why = diverged(message.ranks, self.group.hosts)
        if why:
            self.failure = why
            raise GroupFailure(why)
        return message

    def _unwire(self, item: Submission | Cancellation) -> tuple[str, Any]:
        """A follower's _Pending for rank 0's submission, its constraint built by the same code."""
        if isinstance(item, Cancellation):
            return "cancel", item.request_id
        request = requests.decode(item.request)
        with self._lock:
            self._outstanding.add(request.request_id)
        pending = _Pending(request, list(item.tokens), item.max_tokens, time.perf_counter_ns(), item.truncated,
                           self._build_constraint(request, list(item.tokens)))
        return "submit", pending


def check_generative(model_path: Path) -> None:
    """A group serves generation only: an embedding model is one forward pass, never worth splitting."""
    if is_embedding_model(model_path):
        raise Unsupported("an embedding model is not served by a group: give it no placement")


def seeded_pending(pending: _Pending) -> _Pending:
    pending.request = seeded(pending.request)
    return pending


def _wire(kind: str, item: Any) -> Submission | Cancellation:
    if kind == "cancel":
        return Cancellation(item)
    return Submission(requests.encode(item.request), item.tokens, item.max_tokens, item.truncated)


def _is_collective_failure(error: BaseException) -> bool:
    """MLX's distributed backends prefix their errors with their name ("[ring] connection to a peer was lost")."""
    text = str(error)
    return isinstance(error, RuntimeError) and text.startswith(("[ring]", "[nccl]", "[mpi]", "[jaccl]"))
