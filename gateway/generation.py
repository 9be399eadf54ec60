"""The generation core shared by every API dialect: acquire → register → submit → relay → release.

`GenerationCore.start` leases a worker from the supervisor, registers the request with the token
router and submits it, and returns a `Generation`, whose `events()` relays frames (watching the
worker's health while it waits) and whose `close()` cancels an unfinished request and gives the
lease back (without waiting for the supervisor's answer), whatever happened.

Generations for one model name share a supervisor lease (`_SharedLease`) while the store's change
marker stays the same: concurrent and back-to-back requests cost one Acquire, not one each.

The core talks to the supervisor and the workers through the `SupervisorClient` / `WorkerClient`
protocols (clients.py): gRPC in the gateway, in-process fakes in the unit tests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import msgspec

from mlxserve.services.common import logs
from mlxserve.services.common.config import Settings
from mlxserve.services.common.errors import Cancelled, Internal, MlxServeError, NotFound, Timeout, Unavailable
from mlxserve.services.store.changes import marker_path, read_marker
from mlxserve.v1 import requests, supervisor_pb2, worker_pb2
from mlxserve.v1.frames import Stats, TokenEvent, TokenLogprob, ToolCall
from mlxserve.v1.requests import ChatMessage, SamplingOptions, Tool, ToolChoice

from .clients import SupervisorClient, WorkerClient
from .metrics import GatewayMetrics, InFlight
from .token_router import RequestStream, TokenRouter

# Silence after which the worker is pinged (the default of GenerationCore's `ping_after_s`), and how
# long the ping may take: a dead worker is noticed within about their sum.
PING_AFTER_S = 1.0
PING_TIMEOUT_S = 0.8

# Submits per request: a second one, with a fresh lease, when the first worker could not be reached.
SUBMIT_ATTEMPTS = 2

# How long a shared lease outlives its last generation, so that the next request needs no Acquire;
# the model's keep-alive timer starts that much later.
LEASE_LINGER_S = 0.5

log = logs.get_logger(component="generation")


class _WorkerUnreachable(Unavailable):
    """Submit could not reach the leased worker: it never saw the request, so trying again is safe."""


@dataclass
class GenerationRequest:
    """One generation, dialect-free: chat `messages` or a `prompt`, plus sampling options.

    Its parts are the worker's own types (requests.py): `worker_request()` puts them, unconverted,
    into the one GenerationRequest the worker decodes. `format` is "" / "json" / a JSON schema as
    text, `think`/`truncate` None for the model's default. The fields after `model` that the worker
    never sees are the gateway's: keep-alive, call limits, rendering, and `ignored` (the request's
    fields that the server ignores: the X-Mlxserve-Ignored header).
    """

    model: str
    request_id: str
    options: SamplingOptions = field(default_factory=SamplingOptions)
    messages: list[ChatMessage] | None = None  # None: a prompt request
    prompt: str = ""
    system: str = ""
    raw: bool = False
    keep_alive_s: float | None = None
    format: str = ""
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    max_tool_calls: int | None = None     # calls past this many are dropped (parallel_tool_calls false, max_tool_calls)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra template variables
    context: list[int] = field(default_factory=list)  # /api/generate: token ids the prompt continues
    want_context: bool = False            # /api/generate: answer with `context` (prompt + output token ids)
    think: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool | None = None
    thinking_budget: int | None = None    # Anthropic's thinking.budget_tokens: at most this much reasoning
    legacy_function_call: bool = False    # OpenAI's legacy `functions`: answer with `function_call`
    echo: bool = False                    # OpenAI completions' `echo`: the answer starts with the prompt
    ignored: list[str] = field(default_factory=list)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass
class Collected:
    """A whole generation's output, gathered from its frames."""

    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning(self) -> str:
        return "".join(self.thinking)


class _SharedLease:
    """One supervisor lease used by every generation for a model name that asks the same keep-alive, for
    as long as the store's change marker reads `marker` and the worker answers. Given back when unused
    for the core's lease_linger_s, when a newer lease replaces it, or when its worker is lost."""

    def __init__(self, name: str, lease: supervisor_pb2.AcquireResponse, keep_alive_s: float | None, marker: str) -> None:
        self.name = name
        self.lease = lease
        self.keep_alive_s = keep_alive_s
        self.marker = marker
        self.users = 0
        self.retired = False
        self.released = False
        self.timer: asyncio.TimerHandle | None = None


class Generation:
    """A submitted request: iterate `events()`, then (always) `close()`."""

    def __init__(self, core: GenerationCore, req: GenerationRequest, submit_id: str, lease: supervisor_pb2.AcquireResponse,
                 stream: RequestStream, started_ns: int, in_flight: InFlight | None = None,
                 shared: _SharedLease | None = None) -> None:
        self.core = core
        self.shared = shared
        self.worker_lost = False
        self.in_flight = in_flight
        self.first_output_ns: int | None = None
        self.req = req
        self.submit_id = submit_id
        self.lease = lease
        self.stream = stream
        self.started_ns = started_ns
        self.prompt_tokens = 0
        self.prompt_token_ids: list[int] = []  # with want_context
        self.output_token_ids: list[int] = []
        self.generated_tokens = 0
        self.tool_calls_sent = 0
        self.final: TokenEvent | None = None
        self._closed = False

    @property
    def model(self) -> str:
        """The canonical model name the supervisor resolved."""
        return self.lease.model or self.req.model

    @property
    def load_duration_ns(self) -> int:
        """Time spent getting the model ready for this request (see GenerationCore.acquire)."""
        return int(self.lease.load_duration_s * 1e9)

    @property
    def context(self) -> list[int]:
        """Ollama's `context`: the prompt's token ids (an earlier context included), then the output's."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def done_reason(self) -> str:
        return (self.final.done_reason if self.final else None) or "stop"

    @property
    def stats(self) -> Stats:
        """Counters for the final chunk, with fallbacks when the worker sent none."""
        s = (self.final.stats if self.final else None) or Stats()
        # prompt_eval_count counts every prompt token, cached ones too, as current Ollama does (clients
        # report it as the input tokens); the cached share stays in cached_tokens.
        prompt_tokens = s.prompt_tokens or self.prompt_tokens
        return Stats(
            prompt_eval_count=prompt_tokens,
            prompt_eval_duration=s.prompt_eval_duration,
            eval_count=s.eval_count or self.generated_tokens,
            eval_duration=s.eval_duration,
            prompt_tokens=prompt_tokens,
            cached_tokens=s.cached_tokens,
            truncated_messages=s.truncated_messages,
        )

    def total_duration_ns(self) -> int:
        return time.monotonic_ns() - self.started_ns

    async def events(self, *, idle_every: float | None = None) -> AsyncIterator[TokenEvent | None]:
        """Frames with text, ending with the `done` one; raises MlxServeError if the request fails.

        With `idle_every`, a None comes whenever that many seconds passed without a frame (a long
        prompt prefilling): the caller's cue for a keep-alive (Anthropic's `ping` event).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.core.settings.request_timeout
        queue = self.stream.queue
        last_yield = loop.time()
        while True:
            # Checked before every frame too: a model that never stops talking is bounded as well.
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"the request ran past {self.core.settings.request_timeout:g} s")
            ping_after = self.core.ping_after_s
            wait = min(ping_after, remaining, idle_every) if idle_every else min(ping_after, remaining)
            try:
                event = await asyncio.wait_for(queue.get(), timeout=wait)
            except asyncio.TimeoutError:
                if loop.time() < deadline:
                    await self._check_worker()
                if idle_every and loop.time() - last_yield >= idle_every:
                    last_yield = loop.time()
                    yield None
                continue
            last_yield = loop.time()
            if self.stream.overflowed:
                raise Unavailable("the client did not read the response fast enough")
            if self.first_output_ns is None and (event.token_ids or event.text or event.done):
                self.first_output_ns = time.monotonic_ns()
                if event.done_reason not in ("error", "cancel"):
                    self.core.metrics.first_token(self.model, (self.first_output_ns - self.started_ns) / 1e9)
            self.generated_tokens += len(event.token_ids)
            if self.req.want_context:
                self.output_token_ids.extend(event.token_ids)
            if event.tool_calls and self.req.max_tool_calls is not None:
                event = self._limit_calls(event)
            if event.done:
                self.final = event
                if event.done_reason == "error":
                    raise Internal(event.error or f"the worker for model '{self.model}' failed")
                if event.done_reason == "cancel":
                    raise Cancelled(event.error or "the request was cancelled")
                yield event
                return
            yield event

    def _limit_calls(self, event: TokenEvent) -> TokenEvent:
        """Drop the calls past the request's limit: the worker is told (ToolChoice.single), and this holds
        whatever a model emits."""
        room = max(0, (self.req.max_tool_calls or 0) - self.tool_calls_sent)
        calls = list(event.tool_calls)
        self.tool_calls_sent += min(room, len(calls))
        if len(calls) <= room:
            return event
        log.info("tool_calls_dropped", model=self.model, dropped=len(calls) - room, limit=self.req.max_tool_calls)
        return msgspec.structs.replace(event, tool_calls=calls[:room])

    async def collect(self) -> Collected:
        """All the output at once (non-streaming responses)."""
        out = Collected()
        async for event in self.events():
            assert event is not None  # only asked-for idle beats are None
            out.text.append(event.text)
            out.thinking.append(event.thinking)
            out.tool_calls.extend(event.tool_calls)
            out.logprobs.extend(event.logprobs)
        return out

    async def _check_worker(self) -> None:
        address = self.lease.worker_address
        state = await self.core.workers.alive(address, timeout=PING_TIMEOUT_S)
        if state:
            return
        if not self.stream.queue.empty():  # it finished just as we asked
            return
        self.core.workers.forget(address)
        self.final = TokenEvent(request_id=self.submit_id, done=True, done_reason="error")
        self.worker_lost = True
        log.warning("worker_lost", model=self.model, worker=address, frozen=state is None)
        if state is None:  # the supervisor's health check kills it; the next request gets a fresh worker
            raise Unavailable(f"the worker for model '{self.model}' stopped responding; it is being restarted")
        raise Unavailable(f"the worker for model '{self.model}' exited unexpectedly")

    def _record_end(self) -> None:
        """Metrics and a debug line for how this generation ended (no final frame: the client left or it timed out)."""
        if self.in_flight is None:  # a Submit that failed: start() accounts for it
            return
        reason = (self.final.done_reason or "stop") if self.final is not None else "cancel"
        stats = self.stats if self.final is not None else None
        self.core.metrics.generation_finished(self.model, reason, stats)
        self.in_flight.done()
        if logs.debug_enabled():
            first = (self.first_output_ns - self.started_ns) / 1e6 if self.first_output_ns else None
            log.debug("generation_finished", model=self.model, submit_id=self.submit_id, done_reason=reason,
                      ttft_ms=round(first, 2) if first is not None else None, total_ms=round(self.total_duration_ns() / 1e6, 2),
                      prompt_tokens=stats.prompt_tokens if stats else self.prompt_tokens,
                      eval_count=stats.eval_count if stats else self.generated_tokens)

    async def close(self) -> None:
        """Cancel the request if it did not finish, stop routing its frames, give the lease back (see release_soon)."""
        if self._closed:
            return
        self._closed = True
        # Shielded: this runs in `finally` blocks of handlers that are being cancelled.
        await asyncio.shield(self._cleanup())

    async def _cleanup(self) -> None:
        core, rid = self.core, self.req.request_id
        self._record_end()
        try:
            if self.final is None:
                try:
                    await core.workers.cancel(self.lease.worker_address, self.submit_id, rid)
                except MlxServeError as e:
                    log.info("cancel_failed", error=str(e))
        finally:
            core.router.unregister(self.submit_id)
            if self.shared is not None:
                core.unshare(self.shared, worker_lost=self.worker_lost)
            else:
                core.release_soon(self.lease.lease_id, self.req.keep_alive_s, rid)


class GenerationCore:
    """acquire → submit → relay → release, shared by the native, OpenAI and Anthropic handlers."""

    def __init__(self, settings: Settings, supervisor: SupervisorClient, workers: WorkerClient, router: TokenRouter,
                 metrics: GatewayMetrics | None = None, *, ping_after_s: float = PING_AFTER_S,
                 lease_linger_s: float = LEASE_LINGER_S) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.workers = workers
        self.router = router
        self.metrics = metrics or GatewayMetrics()
        # Injectable so that tests notice a lost worker, and see a lease lingering, without waiting.
        self.ping_after_s = ping_after_s
        self.lease_linger_s = lease_linger_s
        self._background: set[asyncio.Task] = set()
        self._shared: dict[str, _SharedLease] = {}  # by model name as requested
        self._store_marker = marker_path(settings.run_dir)

    async def acquire(self, model: str, request_id: str, keep_alive_s: float | None) -> supervisor_pb2.AcquireResponse:
        """A lease on the model's worker. Its `load_duration_s` becomes the time this call took: getting the
        model ready for the request, as Ollama measures it (starting the worker, or waiting for another
        request's load, or just the scheduling when it was warm), never 0."""
        started = time.monotonic()
        lease = await self._acquire(model, request_id, keep_alive_s)
        lease.load_duration_s = max(lease.load_duration_s, time.monotonic() - started)
        return lease

    async def _acquire(self, model: str, request_id: str, keep_alive_s: float | None) -> supervisor_pb2.AcquireResponse:
        call = asyncio.ensure_future(self.supervisor.acquire(model, request_id, keep_alive_s,
                                                             timeout=self.settings.load_timeout + 30.0))
        try:
            # Shielded: if the client leaves while the model loads, the lease granted later is
            # still released (below) instead of leaking.
            return await asyncio.shield(call)
        except NotFound:
            raise NotFound(f"model '{model}' not found") from None
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._release_orphan(done, keep_alive_s, request_id))
            raise

    def _release_orphan(self, call: asyncio.Future, keep_alive_s: float | None, request_id: str) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        self.release_soon(call.result().lease_id, keep_alive_s, request_id)

    def release_soon(self, lease_id: str, keep_alive_s: float | None, request_id: str) -> None:
        """End a lease without waiting for the supervisor: the response does not wait for that round trip.
        The supervisor orders a late Release after a newer Acquire (the newer request's keep-alive wins), and
        `close()` waits for the releases still under way."""
        task = asyncio.get_running_loop().create_task(self.release(lease_id, keep_alive_s, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _lease_for(self, req: GenerationRequest) -> tuple[supervisor_pb2.AcquireResponse, _SharedLease | None]:
        """A lease for `req`: the model name's shared one when it is still good, else a fresh Acquire (which
        becomes the shared one). Not shared: keep_alive 0 (unload as soon as idle), or no store marker."""
        if req.keep_alive_s == 0:
            return await self.acquire(req.model, req.request_id, req.keep_alive_s), None
        started = time.monotonic()
        marker = read_marker(self._store_marker)  # before Acquire: a change meanwhile retires the lease next time
        shared = self._shared.get(req.model)
        if shared is not None and shared.marker == marker and shared.keep_alive_s == req.keep_alive_s:
            shared.users += 1
            if shared.timer is not None:
                shared.timer.cancel()
                shared.timer = None
            lease = supervisor_pb2.AcquireResponse()
            lease.CopyFrom(shared.lease)
            lease.load_duration_s = max(time.monotonic() - started, 1e-6)
            return lease, shared
        lease = await self.acquire(req.model, req.request_id, req.keep_alive_s)
        if marker is None:
            return lease, None
        old = self._shared.get(req.model)
        if old is not None:
            self._retire(old)  # the newer lease (and keep-alive) takes over; the old one ends with its last user
        shared = self._shared[req.model] = _SharedLease(req.model, lease, req.keep_alive_s, marker)
        shared.users = 1
        return lease, shared

    def unshare(self, shared: _SharedLease, *, worker_lost: bool = False) -> None:
        """A generation is done with `shared`; a lost worker retires it at once, else it lingers when unused."""
        shared.users -= 1
        if worker_lost:
            self._retire(shared)
        elif shared.users == 0:
            if shared.retired:
                self._give_back(shared)
            else:
                shared.timer = asyncio.get_running_loop().call_later(self.lease_linger_s, self._retire, shared)

    def _retire(self, shared: _SharedLease) -> None:
        """No new generation may use `shared`; it goes back once the last one still using it is done."""
        shared.retired = True
        if self._shared.get(shared.name) is shared:
            del self._shared[shared.name]
        if shared.users <= 0:
            self._give_back(shared)

    def _give_back(self, shared: _SharedLease) -> None:
        if shared.timer is not None:
            shared.timer.cancel()
            shared.timer = None
        if not shared.released:
            shared.released = True
            self.release_soon(shared.lease.lease_id, shared.keep_alive_s, "")

    def retire_shared(self) -> None:
        """Stop sharing every lease (a model was unloaded, or the gateway stops)."""
        for shared in list(self._shared.values()):
            self._retire(shared)

    async def close(self) -> None:
        """Give back the shared leases and wait (briefly) for the releases still under way; the app's
        cleanup calls it before closing channels."""
        self.retire_shared()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5.0)

    async def release(self, lease_id: str, keep_alive_s: float | None, request_id: str) -> None:
        try:
            await self.supervisor.release(lease_id, keep_alive_s, request_id)
        except MlxServeError as e:
            log.warning("release_failed", lease_id=lease_id, error=str(e))

    async def load(self, model: str, request_id: str, keep_alive_s: float | None) -> supervisor_pb2.AcquireResponse:
        """Make sure the model is loaded (Ollama's empty-prompt request), holding no lease after."""
        lease = await self.acquire(model, request_id, keep_alive_s)
        self.release_soon(lease.lease_id, keep_alive_s, request_id)
        return lease

    async def unload(self, model: str, request_id: str) -> None:
        """Stop the model's worker now (an empty-prompt request with keep_alive 0).

        As in Ollama, unloading a model that is not loaded succeeds; only an unknown model is NotFound.
        """
        self.retire_shared()  # its worker is going away
        try:
            await self.supervisor.unload(model, request_id)
        except NotFound:
            raise NotFound(f"model '{model}' not found") from None

    async def start(self, req: GenerationRequest) -> Generation:
        """Lease a worker and submit; errors before any output raise here (so they get an HTTP status).

        A worker that cannot be reached at Submit never saw the request, so it is tried once more
        with a fresh lease: a worker that was just killed may still be handed out by the supervisor
        until it notices the exit, and the next one it hands out is a fresh process.
        """
        started = time.monotonic_ns()
        in_flight = self.metrics.generation_started(req.model)
        try:
            for attempt in range(SUBMIT_ATTEMPTS):
                try:
                    return await self._start_once(req, started, in_flight)
                except Unavailable as e:
                    if attempt + 1 == SUBMIT_ATTEMPTS or not isinstance(e, _WorkerUnreachable):
                        raise
                    log.warning("worker_unreachable_retry", model=req.model, error=e.message)
            raise AssertionError("unreachable")
        except BaseException:
            in_flight.done()  # a started Generation ends it in close(); this one never started
            raise

    async def _start_once(self, req: GenerationRequest, started: int, in_flight: InFlight) -> Generation:
        lease, shared = await self._lease_for(req)
        self.metrics.leased(in_flight, lease.model or req.model)
        submit_id = f"{req.request_id}.{secrets.token_hex(4)}"
        stream = self.router.register(submit_id)
        gen = Generation(self, req, submit_id, lease, stream, started, in_flight, shared)
        submit = submit_request(req, submit_id, self.router.address)
        if logs.debug_enabled():
            log.debug("submit", model=gen.model, submit_id=submit_id, worker=lease.worker_address, is_chat=req.is_chat,
                      messages=len(req.messages or []), prompt_chars=len(req.prompt), options=msgspec.to_builtins(req.options),
                      format=bool(req.format), tools=[t.name for t in req.tools],
                      tool_choice=req.tool_choice.mode, context=len(req.context), think=req.think, keep_alive_s=req.keep_alive_s,
                      load_duration_s=round(lease.load_duration_s, 3))
        try:
            resp = await self.workers.submit(lease.worker_address, submit, req.request_id)
        except BaseException as e:
            if isinstance(e, MlxServeError) and not isinstance(e, Timeout):  # refused or never got it: nothing to cancel
                gen.final = TokenEvent(request_id=submit_id, done=True, done_reason="error")
            # A Submit past its deadline may still be tokenizing, or just queued: close() tells the worker to cancel.
            gen.in_flight = None  # still in flight if retried; start() ends it otherwise
            gen.worker_lost = isinstance(e, Unavailable)
            await gen.close()  # when the client went away mid-Submit, this cancels on the worker
            if isinstance(e, Unavailable):
                self.workers.forget(lease.worker_address)
                raise _WorkerUnreachable(f"the worker for model '{gen.model}' is not answering: {e.message}") from None
            raise
        gen.prompt_tokens = resp.prompt_tokens
        gen.prompt_token_ids = list(resp.prompt_token_ids)
        return gen

    async def count_tokens(self, req: GenerationRequest) -> int:
        """The prompt tokens `req` would make on its model's worker (templated and tokenized as a Submit is);
        loads the model if needed, generates nothing."""
        lease = await self.acquire(req.model, req.request_id, req.keep_alive_s)
        submit = submit_request(req, f"{req.request_id}.{secrets.token_hex(4)}", "")
        try:
            resp = await self.workers.count_tokens(lease.worker_address, submit, req.request_id)
        except Unavailable as e:
            self.workers.forget(lease.worker_address)
            raise Unavailable(f"the worker for model '{lease.model or req.model}' is not answering: {e.message}") from None
        finally:
            self.release_soon(lease.lease_id, req.keep_alive_s, req.request_id)
        return resp.prompt_tokens

    async def embed(self, model: str, request_id: str, keep_alive_s: float | None, inputs: list[str], *,
                    token_inputs: list[list[int]] | None = None, truncate: bool | None = None, dimensions: int = 0,
                    num_ctx: int | None = None) -> tuple[worker_pb2.EmbedResponse, supervisor_pb2.AcquireResponse]:
        """Lease the model's worker, embed `inputs` (texts, or token-id lists), release; returns the worker's answer and the lease."""
        lease = await self.acquire(model, request_id, keep_alive_s)
        req = worker_pb2.EmbedRequest(request_id=f"{request_id}.{secrets.token_hex(4)}", inputs=inputs, dimensions=dimensions,
                                      token_inputs=[worker_pb2.TokenIds(ids=ids) for ids in token_inputs or []])
        if truncate is not None:
            req.truncate = truncate
        if num_ctx is not None:
            req.num_ctx = num_ctx
        try:
            resp = await self.workers.embed(lease.worker_address, req, request_id, timeout=self.settings.request_timeout)
        except Unavailable as e:
            self.workers.forget(lease.worker_address)
            raise Unavailable(f"the worker for model '{lease.model or model}' is not answering: {e.message}") from None
        finally:
            self.release_soon(lease.lease_id, keep_alive_s, request_id)
        return resp, lease


def worker_request(req: GenerationRequest, submit_id: str) -> requests.GenerationRequest:
    """What the worker runs for `req`: its worker-side fields, by reference (the parts are already the
    worker's types), under the id its frames will carry."""
    return requests.GenerationRequest(
        request_id=submit_id, is_chat=req.is_chat, messages=tuple(req.messages or ()), prompt=req.prompt,
        system=req.system, raw=req.raw, options=req.options, format=req.format, tools=tuple(req.tools),
        tool_choice=req.tool_choice, think=req.think, logprobs=req.logprobs, top_logprobs=req.top_logprobs,
        truncate=req.truncate, chat_template_kwargs=req.chat_template_kwargs, context=tuple(req.context),
        want_prompt_tokens=req.want_context, thinking_budget=req.thinking_budget,
    )


def submit_request(req: GenerationRequest, submit_id: str, reply_to: str) -> worker_pb2.SubmitRequest:
    """The worker's SubmitRequest for `req` (CountTokens takes the same message): one encoded request."""
    return worker_pb2.SubmitRequest(reply_to=reply_to, request=requests.encode(worker_request(req, submit_id)))
