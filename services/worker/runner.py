"""ModelRunner: one loaded model and its continuous-batching scheduler, stepped by one thread.

`submit` and `cancel` may be called from any thread: they only template/tokenize (no MLX) and
hand work over through a locked inbox. Everything else — loading, `step`, sampling — runs on the
thread that created the runner (the engine thread), because MLX streams are thread-local.

One `step()`: take new submissions and cancellations, admit waiting requests into the running
batch (up to `num_parallel`), run one `BatchedGenerator.next()` (batch_step.py: a decode step for
the running batch, sampled in one computation, plus one prefill chunk for as many newcomers as the
memory holds), and turn each sequence's new token into at most one frame.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

from mlxserve.services.common import logs
from mlxserve.services.common.errors import Busy, Cancelled, InvalidArgument, NotFound, Unavailable
from mlxserve.v1.frames import Stats, TokenEvent, TokenLogprob

from . import cpu_decode, precision
from .batch_step import BatchedGenerator
from .defaults import load_defaults
from .logprobs import TokenTexts, token_logprob, token_logprobs
from .disk_cache import DiskCacheSettings, open_disk_cache
from .prefix_cache import PrefixCache
from .outputs import OutputParser
from .prompts import GenerationRequest, PromptBounds, check_token_ids, encode_prompt, fit_prompt, request_tools, system_prefix_length
from .sampling import LogitsProcessor, make_logits_processors, make_sampler
from .stops import StopStringFilter
from .submits import TokenizingSubmits
from .thinking import thinking_budget

# A prompt's system prefix (system messages and tools) is kept as a cache entry of its own when the
# model's cache cannot be cut back to it later (sliding-window or recurrent layers) and it is at
# least this long: an agent's next session, or a retry, then starts from it.
CHECKPOINT_MIN_TOKENS = 256
# Prompt tokens one step may prefill on the CPU (a chunk of prefill_step_size per prompt): a step is
# the unit the supervisor's wedge detector watches, and 32 fresh prompts in one step took over 60 s
# on a CPU. On a GPU the bound is memory (see `_prefill_batch_size`).
CPU_PREFILL_TOKENS_PER_STEP = 4096

log = logs.get_logger()

DEFAULT_CONTEXT_LENGTH = 4096  # when neither config.json nor the tokenizer says


@dataclass(frozen=True)
class SubmitResult:
    prompt_tokens: int
    queue_position: int   # 0: runs at once; n: n-th in line for a free slot
    prompt_token_ids: tuple[int, ...] = ()  # with want_prompt_tokens: the whole prompt, context included


@dataclass
class _Pending:
    """A tokenized request on its way to the engine thread."""

    request: GenerationRequest
    tokens: list[int]
    max_tokens: int
    submitted_ns: int
    truncated: int = 0               # oldest messages dropped to fit the context
    constraint: Any = None           # structured output (constraints.Constraint), if asked for
    checkpoint: int = 0              # keep the cache of the first this many tokens as its own entry (0: none)


@dataclass
class _Active:
    """Engine-thread state of one request in the running batch."""

    pending: _Pending
    uid: int
    detokenizer: Any
    stops: StopStringFilter
    admitted_ns: int
    prefilled_ns: int | None = None
    last_token_ns: int | None = None
    generated: int = 0
    token_ids: list[int] = field(default_factory=list)
    cached: int = 0               # prompt tokens taken from the prefix cache, not evaluated
    output: OutputParser | None = None  # splits thinking and tool calls out of the text (not raw)
    checkpoint_pending: bool = False  # the prompt was split at its checkpoint, not yet reached

    @property
    def request_id(self) -> str:
        return self.pending.request.request_id


def _context_length(model_path: Path, tokenizer: Any) -> int:
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    text_config = config.get("text_config") or {}
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        for source in (config, text_config):
            if isinstance(source.get(key), int) and source[key] > 0:
                return source[key]
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return DEFAULT_CONTEXT_LENGTH


def _prefill_token_bytes(model: Any) -> int:
    """Bytes one prompt token takes while it is prefilled: its KV in every layer plus one layer's
    activations (hidden and MLP widths, a few copies); 0 when the config does not say."""
    args = getattr(model, "args", None)
    hidden = getattr(args, "hidden_size", 0) or 0
    layers = getattr(args, "num_hidden_layers", 0) or 0
    heads = getattr(args, "num_attention_heads", 0) or 0
    if not (isinstance(hidden, int) and isinstance(layers, int) and isinstance(heads, int) and hidden and layers and heads):
        return 0
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    head_dim = getattr(args, "head_dim", None) or hidden // heads
    intermediate = getattr(args, "intermediate_size", 0) or 4 * hidden
    width = 4  # bytes: float32 on the CPU, an upper bound for bf16/fp16
    return width * (2 * layers * kv_heads * head_dim + 4 * hidden + 3 * intermediate)


def _vocab_size(model: Any, tokenizer: Any) -> int:
    """Rows of the model's output: what a logit_bias token id must be below."""
    size = getattr(getattr(model, "args", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else len(tokenizer.vocab)


class ModelRunner:
    """Loads `model_path` with mlx-lm and serves generations through continuous batching."""

    def __init__(self, model_path: str | Path, *, num_parallel: int = 4, max_queue: int = 64, prefill_step_size: int = 512,
                 prefix_cache_bytes: int = 1 << 30, prefix_cache_entries: int = 64,
                 prefix_cache_disk: DiskCacheSettings | None = None,
                 cpu_float32: str = "auto", memory_budget: int = 0) -> None:
        """cpu_float32 / memory_budget: see `precision.plan` (budget: bytes this worker may use, 0: unknown).
        prefix_cache_disk: where long prefixes outlive the process (None: nowhere)."""

        if num_parallel < 1 or max_queue < 0:
            raise InvalidArgument("num_parallel must be >= 1 and max_queue >= 0")
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            # mlx-lm would take a missing path for a Hugging Face repo id; say what is wrong.
            raise NotFound(f"model folder {self.model_path} does not exist")
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.prefill_step_size = prefill_step_size
        # SYSTEM, PARAMETER, MESSAGE from the store; read first, so a damaged file fails fast.
        self.defaults = load_defaults(self.model_path)
        started = time.perf_counter()
        # The store's view holds symlinks to blobs; mlx-lm mmaps the safetensors, never copies.
        self.model, self.tokenizer = self._load_model()
        self.device = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
        # Before anything else sees the model: on the CPU backend float32 is the fast path.
        self.precision = self._apply_precision(cpu_float32, memory_budget)
        if self.device == "cpu":
            cpu_decode.compile_decode_pieces(self.model)  # fewer ops per CPU decode step; the same arithmetic
        self.compute_dtype = self.precision.description
        self.load_duration_s = time.perf_counter() - started
        self.context_length = _context_length(self.model_path, self.tokenizer)
        self.eos_token_ids = sorted(self.tokenizer.eos_token_ids)
        self.vocab_size = _vocab_size(self.model, self.tokenizer)
        # Plain KV caches can be cut back to any prefix of what they hold; sliding windows and
        # recurrent state cannot, so a reusable prefix needs an entry of its own.
        self.needs_checkpoints = not all(isinstance(c, (KVCache, QuantizedKVCache)) for c in make_prompt_cache(self.model))
        # Ids a request may send (context): rows of the model that the tokenizer can also decode.
        self.token_id_limit = min(self.vocab_size, len(self.tokenizer.vocab))
        self.prompt_bounds = PromptBounds.for_tokenizer(self.tokenizer)  # refuses what cannot fit before tokenizing it
        self._token_texts = TokenTexts(self.tokenizer)  # engine thread: logprobs' token texts
        self._stream = mx.new_stream(mx.default_device())
        # What prefill may fill: the supervisor's budget for this worker, else what the device says.
        info = mx.device_info()
        self._memory_total = memory_budget or info.get("max_recommended_working_set_size") or info.get("memory_size") or 0
        self._prefill_token_bytes = _prefill_token_bytes(self.model)
        self._generator = self._new_generator()
        # KV of finished sequences, reused for the longest shared prefix of later prompts; long ones
        # also on disk, for the next worker of this model (keyed by what the model computes in).
        disk = open_disk_cache(prefix_cache_disk, self.model_path, f"{self.device} {self.compute_dtype}")
        self.prefix_cache = PrefixCache(max_bytes=prefix_cache_bytes, max_entries=prefix_cache_entries, disk=disk)

        self._lock = threading.Lock()          # guards the fields below it, shared with callers
        self._inbox: list[tuple[str, Any]] = []
        self._outstanding: set[str] = set()    # submitted and not finished
        self._submits = TokenizingSubmits()  # a Cancel while its Submit still tokenizes is kept there
        self._closed_reason: str | None = None
        self._wakeup = threading.Event()

        # Engine-thread only.
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._active: dict[int, _Active] = {}
        self.active_memory = mx.get_active_memory()  # refreshed each step, read by Info
        self.steps = 0  # model steps run so far, read by Info: the supervisor's wedge detector

    # -- any thread ------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, alive: Callable[[], bool] | None = None) -> SubmitResult:
        """Validate, template and tokenize `request` (`ModelDefaults.apply` fills in what it leaves out), and queue it.

        Raises InvalidArgument (bad request, prompt longer than the context), Unsupported (no chat template), Busy
        (the queue is full), Unavailable (shutting down), Cancelled (`alive()` false, or cancelled while tokenizing).
        """
        request = self._prepared(request)
        with self._submits.tokenizing(request.request_id):
            context = request.options.num_ctx or self.context_length
            tokens, truncated = fit_prompt(self.tokenizer, request, context, bounds=self.prompt_bounds, alive=alive)
            if not tokens:
                raise InvalidArgument("the prompt is empty after tokenization")
            room = context - len(tokens)
            num_predict = request.options.num_predict
            max_tokens = room if num_predict is None or num_predict < 0 else min(num_predict, room)
            constraint = self._build_constraint(request, tokens)
            pending = _Pending(request, tokens, max_tokens, time.perf_counter_ns(), truncated, constraint)
            if self.needs_checkpoints and len(tokens) > CHECKPOINT_MIN_TOKENS:  # else no prefix could be long enough
                checkpoint = system_prefix_length(self.tokenizer, request, tokens)
                pending.checkpoint = checkpoint if checkpoint >= CHECKPOINT_MIN_TOKENS else 0
            with self._lock:
                if self._closed_reason is not None:
                    raise Unavailable(f"the worker is not accepting requests ({self._closed_reason})")
                if request.request_id in self._outstanding:
                    raise InvalidArgument(f"request_id {request.request_id!r} is already in use")
                if self._submits.cancelled(request.request_id) or (alive is not None and not alive()):
                    raise Cancelled("the request was cancelled before it was queued")
                ahead = len(self._outstanding)
                if ahead >= self.num_parallel + self.max_queue:
                    raise Busy(f"the model's queue is full ({self.max_queue} waiting)", retry_after=1.0)
                self._outstanding.add(request.request_id)
                self._inbox.append(("submit", pending))
        self._wakeup.set()
        return SubmitResult(prompt_tokens=len(tokens), queue_position=max(0, ahead - self.num_parallel + 1),
                            prompt_token_ids=tuple(tokens) if request.want_prompt_tokens else ())

    def count(self, request: GenerationRequest, alive: Callable[[], bool] | None = None) -> int:
        """The tokens of `request`'s prompt as `submit` makes them, untruncated (refused past the character bound)."""
        request = self._prepared(request)
        return len(encode_prompt(self.tokenizer, request, fit_within=request.options.num_ctx or self.context_length,
                                 bounds=self.prompt_bounds.characters_only(), alive=alive))

    def _prepared(self, request: GenerationRequest) -> GenerationRequest:
        """`request` validated, with the model's defaults filled in: what `submit` and `count` template."""
        request.validate()
        # A plain prompt to a model without a template (a base model) is completed as it is.
        templated = getattr(self.tokenizer, "has_chat_template", False) or not request.plain_prompt
        request = self.defaults.apply(request, templated=templated)
        request.options.check_vocabulary(self.vocab_size)
        check_token_ids(request.context, self.token_id_limit, "context")
        return request

    def cancel(self, request_id: str) -> bool:
        """Ask the engine to end `request_id` (final frame: done_reason "cancel"). False if unknown."""
        with self._lock:
            if request_id not in self._outstanding:
                return self._submits.cancel(request_id)  # a Submit still tokenizing is refused when done
            self._inbox.append(("cancel", request_id))
        self._wakeup.set()
        return True

    def counts(self) -> tuple[int, int]:
        """(running, waiting) as seen from any thread."""
        with self._lock:
            outstanding = len(self._outstanding)
        running = min(outstanding, self.num_parallel)
        return running, outstanding - running

    def wait_for_work(self, timeout: float) -> bool:
        """Block until something was submitted or cancelled (or `timeout`); True if there is work."""
        if self.has_work():
            return True
        self._wakeup.wait(timeout)
        return self.has_work()

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._outstanding)

    def close(self, reason: str) -> None:
        """Refuse new submissions from now on; `shutdown()` then ends the ones in flight."""
        with self._lock:
            self._closed_reason = reason
        self._wakeup.set()

    # -- engine thread -----------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """One scheduler step; returns at most one frame per request."""
        events: list[TokenEvent] = []
        self._drain_inbox(events)
        self._admit(events)
        if self._active:
            try:
                self._generator.prefill_batch_size = self._prefill_batch_size()
                prompt_responses, generation_responses = self._generator.next()
                self.steps += 1
            except Exception as e:  # noqa: BLE001 - the whole batch shares this failure
                self._check_step_error(e)
                log.exception("batch_step_failed", requests=[a.request_id for a in self._active.values()])
                for active in list(self._active.values()):
                    events.append(self._fail(active, f"generation failed: {type(e).__name__}: {e}"))
                self._generator = self._new_generator()  # its caches are in an unknown state
                return events
            now = time.perf_counter_ns()
            for r in prompt_responses:
                active = self._active.get(r.uid)
                if active is None:
                    continue
                if r.end_of_prompt:
                    active.prefilled_ns = now
                elif r.end_of_segment and active.checkpoint_pending:
                    self._keep_checkpoint(active)
            logprobs = self._step_logprobs(generation_responses)
            for r in generation_responses:
                active = self._active.get(r.uid)
                if active is None:
                    continue
                if r.finish_reason is not None and r.prompt_cache:
                    self.prefix_cache.insert(r.all_tokens, r.prompt_cache, prompt_tokens=len(active.pending.tokens))
                try:
                    event = self._on_token(active, r.token, r.finish_reason)
                    self._split_output(active, event)
                    if active.pending.request.logprobs and event.token_ids:
                        lp = logprobs.get(r.uid)
                        if lp is None:  # not computed with the others (see _step_logprobs): alone
                            lp = token_logprob(r.token, r.logprobs, active.pending.request.top_logprobs, self._token_texts)
                        event.logprobs = [lp]
                    events.append(event)
                except Exception as e:  # noqa: BLE001 - fail this request, keep serving the rest
                    log.exception("token_processing_failed", **logs.submit_fields(active.request_id))
                    self._generator.remove([active.uid])
                    events.append(self._fail(active, f"{type(e).__name__}: {e}"))
            self.active_memory = mx.get_active_memory()
        return events

    def _step_logprobs(self, responses: list[Any]) -> dict[int, TokenLogprob]:
        """The logprobs of this step's tokens for every request that asked, by uid: computed together
        and read back once (a read per request costs a synchronization each, at every step).
        Empty if that fails; each request then computes its own, and fails alone if it must."""
        wanted = [(r.uid, r.token, r.logprobs, active.pending.request.top_logprobs) for r in responses
                  if (active := self._active.get(r.uid)) is not None and active.pending.request.logprobs
                  and r.finish_reason != "stop"]  # an EOS token is not shown: no logprob
        if not wanted:
            return {}
        try:
            computed = token_logprobs([(token, row, top) for _, token, row, top in wanted], self._token_texts)
        except Exception:  # noqa: BLE001 - fall back to one request at a time
            log.exception("step_logprobs_failed")
            return {}
        return {uid: lp for (uid, *_), lp in zip(wanted, computed)}

    def shutdown(self, message: str = "the worker is shutting down") -> list[TokenEvent]:
        """End every request (running, waiting, not yet seen) with an error frame."""
        self.close(message)
        events: list[TokenEvent] = []
        self._drain_inbox(events)
        for active in list(self._active.values()):
            events.append(self._fail(active, message))
        while self._waiting:
            pending = self._waiting.popleft()
            events.append(self._final(pending, "error", error=message))
        self._generator = self._new_generator()
        mx.synchronize(self._stream)
        return events

    # -- internals (engine thread) -----------------------------------------------------------------

    def _load_model(self) -> tuple[Any, Any]:
        """The model and its tokenizer (a group's rank loads only its part: group_sync.GroupRunner)."""
        return mlx_lm.load(str(self.model_path))

    def _apply_precision(self, setting: str, budget: int) -> precision.PrecisionPlan:
        """`precision.apply` (a group's ranks agree on it first: group_sync.GroupRunner)."""
        return precision.apply(self.model, device=self.device, setting=setting, budget=budget)

    def _check_step_error(self, error: Exception) -> None:
        """Raise instead when `error` must end more than this batch (a group's lost rank: group_sync.py)."""

    def _new_generator(self) -> BatchedGenerator:
        return BatchedGenerator(
            self.model,
            stop_tokens=[[t] for t in self.eos_token_ids],
            completion_batch_size=self.num_parallel,
            prefill_batch_size=self._prefill_batch_size(),  # set again before each step
            # Each step decodes the running rows, then prefills at most one chunk of each new prompt:
            # a long prompt holds the others back by one chunk a step, never by its whole length.
            prefill_step_size=self.prefill_step_size,
            stream=self._stream,
        )

    def _prefill_batch_size(self) -> int:
        """How many prompts one step prefills together: as many as the memory left holds (each takes
        a chunk's activations and its KV), at most num_parallel; on the CPU also at most
        CPU_PREFILL_TOKENS_PER_STEP tokens a step, so that a step stays short."""
        limit = self.num_parallel
        if self.device == "cpu":
            limit = min(limit, max(1, CPU_PREFILL_TOKENS_PER_STEP // self.prefill_step_size))
        if self._memory_total and self._prefill_token_bytes:
            room = int(self._memory_total * 0.9) - mx.get_active_memory()  # MLX's buffer cache is reused
            limit = min(limit, max(1, room // (self._prefill_token_bytes * self.prefill_step_size)))
        return limit

    def _take_inbox(self) -> list[tuple[str, Any]]:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            self._wakeup.clear()
        return inbox

    def _drain_inbox(self, events: list[TokenEvent]) -> None:
        for kind, item in self._take_inbox():
            if kind == "submit":
                self._waiting.append(item)
            else:
                self._cancel_now(item, events)

    def _cancel_now(self, request_id: str, events: list[TokenEvent]) -> None:
        for active in self._active.values():
            if active.request_id == request_id:
                self._generator.remove([active.uid])
                events.append(self._finish(active, "cancel"))
                return
        for pending in self._waiting:
            if pending.request.request_id == request_id:
                self._waiting.remove(pending)
                events.append(self._final(pending, "cancel"))
                return
        # Already finished in this very step: its final frame went out; nothing to do.

    def _admit(self, events: list[TokenEvent]) -> None:
        while self._waiting and len(self._active) < self.num_parallel:
            pending = self._waiting.popleft()
            hit = self.prefix_cache.lookup(pending.tokens)
            cached = hit.cached if hit else 0
            rest = hit.rest if hit else pending.tokens
            # Split at the checkpoint when it lies in what is left to evaluate (not the last token).
            split = pending.checkpoint - cached if cached < pending.checkpoint < len(pending.tokens) - 1 else 0
            try:
                (uid,) = self._generator.insert_segments(
                    [[rest[:split], rest[split:]] if split else [rest]],
                    caches=[hit.cache] if hit else None,
                    # The tokens the given cache holds: the context of the logits processors.
                    all_tokens=[pending.tokens[: hit.cached]] if hit else None,
                    max_tokens=[pending.max_tokens],
                    samplers=[make_sampler(pending.request.options)],
                    logits_processors=[self._logits_processors(pending)],
                )
            except Exception as e:  # noqa: BLE001 - a request mlx-lm refuses fails alone
                log.exception("admit_failed", **logs.submit_fields(pending.request.request_id))
                events.append(self._final(pending, "error", error=f"{type(e).__name__}: {e}"))
                continue
            self._active[uid] = _Active(
                pending=pending,
                uid=uid,
                detokenizer=self.tokenizer.detokenizer,  # a fresh copy per request
                stops=StopStringFilter(pending.request.options.stop),
                admitted_ns=time.perf_counter_ns(),
                cached=cached,
                checkpoint_pending=bool(split),
                output=None if pending.request.raw else OutputParser(
                    self.tokenizer, request_tools(pending.request), pending.request.think, prompt_tokens=pending.tokens,
                ),
            )
            # The engine thread has no request context: the id is passed explicitly.
            log.info("admitted", **logs.submit_fields(pending.request.request_id), prompt_tokens=len(pending.tokens),
                     cached_tokens=hit.cached if hit else 0, cache_source=hit.source if hit else "", max_tokens=pending.max_tokens,
                     queued_ms=round((time.perf_counter_ns() - pending.submitted_ns) / 1e6, 2), running=len(self._active))

    def _split_output(self, active: _Active, event: TokenEvent) -> None:
        """Move thinking and tool calls out of `event.text`; a turn that ends in calls ends "tool_calls"."""
        if active.output is None:
            return
        parsed = active.output.feed(event.text)
        if event.done:
            tail = active.output.finish()
            parsed.content += tail.content
            parsed.thinking += tail.thinking
            parsed.tool_calls += tail.tool_calls
            if event.done_reason == "stop" and active.output.made_tool_call:
                event.done_reason = "tool_calls"
        event.text, event.thinking, event.tool_calls = parsed.content, parsed.thinking, parsed.tool_calls

    def _build_constraint(self, request: GenerationRequest, tokens: list[int]) -> Any:
        """The request's output constraint (llguidance), if any: its `format` (structured output)
        or its required tool call. On the caller's thread, so that Submit itself refuses a bad
        schema or a model whose tool calls cannot be forced."""
        if request.format:
            from .constraints import build_constraint  # here: llguidance loads only when first asked for

            return build_constraint(request.format, self.tokenizer)
        if request.tool_choice.mode == "required":
            from .tool_calls import forced_calls_constraint

            return forced_calls_constraint(self.tokenizer, request, tokens)
        return None

    def _logits_processors(self, pending: _Pending) -> list[LogitsProcessor]:
        """This request's own processors: penalties and biases, its thinking budget, then its output constraint."""
        processors = make_logits_processors(pending.request.options, self.context_length)
        budget = thinking_budget(self.tokenizer, pending.request.thinking_budget, pending.tokens)
        if budget is not None:
            processors.append(budget)
        if pending.constraint is not None:
            # Last, so that no bias can lift a token the constraint has ruled out.
            processors.append(pending.constraint)
        return processors

    def _on_token(self, active: _Active, token: int, finish_reason: str | None) -> TokenEvent:
        now = time.perf_counter_ns()
        active.generated += 1
        active.last_token_ns = now
        if active.prefilled_ns is None:
            active.prefilled_ns = active.admitted_ns
        detok = active.detokenizer
        token_ids: list[int] = []
        if finish_reason == "stop":
            # An EOS token (the only token sequences we stop on): it ends the text, unshown.
            detok.finalize()
        else:
            token_ids = [token]
            detok.add_token(token)
            if finish_reason == "length":
                detok.finalize()
        text, hit_stop = active.stops.feed(detok.last_segment)
        if hit_stop:
            if finish_reason is None:
                self._store_removed(self._generator.remove([active.uid], return_prompt_caches=True), len(active.pending.tokens))
            event = self._finish(active, "stop", text=text, token_ids=token_ids)
            event.stop_sequence = active.stops.matched
            return event
        if finish_reason is not None:
            return self._finish(active, finish_reason, text=text + active.stops.flush(), token_ids=token_ids)
        return TokenEvent(request_id=active.request_id, text=text, token_ids=token_ids)

    def _finish(self, active: _Active, reason: str, *, text: str = "", token_ids: list[int] | None = None) -> TokenEvent:
        del self._active[active.uid]
        prefilled = active.prefilled_ns or time.perf_counter_ns()
        last = active.last_token_ns or prefilled
        stats = Stats(
            prompt_eval_count=len(active.pending.tokens) - active.cached if active.prefilled_ns else 0,
            cached_tokens=active.cached if active.prefilled_ns else 0,
            prompt_eval_duration=max(0, prefilled - active.admitted_ns),
            eval_count=active.generated,
            eval_duration=max(0, last - prefilled),
            prompt_tokens=len(active.pending.tokens),
            truncated_messages=active.pending.truncated,
        )
        return self._final(active.pending, reason, text=text, token_ids=token_ids or [], stats=stats)

    def _keep_checkpoint(self, active: _Active) -> None:
        """The prompt's first segment is evaluated: keep its cache as an entry of its own."""
        active.checkpoint_pending = False
        for cache, tokens in self._generator.extract_cache([active.uid]).values():
            if len(tokens) == active.pending.checkpoint:  # what it holds is exactly the checkpoint
                self.prefix_cache.insert(list(tokens), cache, prompt_tokens=len(tokens), cache_type="system")
                log.info("checkpoint_kept", **logs.submit_fields(active.request_id), tokens=len(tokens))

    def _store_removed(self, removed: dict[int, tuple[list[Any], list[int]]], prompt_tokens: int) -> None:
        """Keep the caches `BatchGenerator.remove(..., return_prompt_caches=True)` handed back."""
        for cache, all_tokens in removed.values():
            self.prefix_cache.insert(all_tokens, cache, prompt_tokens=prompt_tokens)

    def _fail(self, active: _Active, message: str) -> TokenEvent:
        self._active.pop(active.uid, None)
        return self._final(active.pending, "error", error=message)

    def _final(self, pending: _Pending, reason: str, *, text: str = "", token_ids: list[int] | None = None, stats: Stats | None = None, error: str | None = None) -> TokenEvent:
        with self._lock:
            self._outstanding.discard(pending.request.request_id)
        stats = stats or Stats(prompt_tokens=len(pending.tokens), truncated_messages=pending.truncated)
        _log_finished(pending, reason, stats, error)
        return TokenEvent(
            request_id=pending.request.request_id,
            text=text,
            token_ids=token_ids or [],
            done=True,
            done_reason=reason,
            error=error,
            stats=stats,
        )


def _log_finished(pending: _Pending, reason: str, stats: Stats, error: str | None) -> None:
    """One line per request as it ends, whichever way, with its counts and timings."""
    fields: dict[str, Any] = {
        **logs.submit_fields(pending.request.request_id), "done_reason": reason,
        "prompt_tokens": stats.prompt_tokens, "prompt_eval_count": stats.prompt_eval_count, "cached_tokens": stats.cached_tokens,
        "eval_count": stats.eval_count, "prompt_eval_ms": round(stats.prompt_eval_duration / 1e6, 2),
        "eval_ms": round(stats.eval_duration / 1e6, 2),
        "total_ms": round((time.perf_counter_ns() - pending.submitted_ns) / 1e6, 2),
    }
    if stats.eval_count and stats.eval_duration:
        fields["tokens_per_second"] = round(stats.eval_count / (stats.eval_duration / 1e9), 2)
    if error:
        fields["error"] = error
    (log.warning if reason == "error" else log.info)("finished", **fields)
