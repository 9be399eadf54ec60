"""The Worker gRPC service: a thin translation from protos to the ModelRunner and back.

Submit decodes the request (requests.GenerationRequest, the gateway's own object: one decode, no
copies) and registers where its frames go (`reply_to`, with the ReplyRouter) before queueing it;
from then on the frames go engine → router → FrameSender without coming back here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec

from mlxserve.services.common import logs
from mlxserve.services.common.errors import InvalidArgument, Unsupported
from mlxserve.services.common.rpc import ping_response, rpc_method
from mlxserve.v1 import common_pb2, requests, worker_pb2, worker_pb2_grpc

from .blas import BlasReport
from .embeddings import EmbeddingRunner
from .replies import ReplyRouter
from .runner import ModelRunner

log = logs.get_logger()

REPLY_SCHEMES = ("ipc://", "tcp://", "inproc://")


def resident_memory_bytes() -> int:
    """Resident set size of this process (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, runner: ModelRunner | EmbeddingRunner, replies: ReplyRouter, *, blas: BlasReport,
                 model_name: str = "") -> None:
        """replies: where Submit registers each request's reply_to; blas: the engine thread's report, for Info."""
        self.runner = runner
        self.blas = blas
        self.model_name = model_name or runner.model_path.name
        self.kind = "embed" if isinstance(runner, EmbeddingRunner) else "generate"
        self.replies = replies

    @rpc_method
    def Ping(self, request: Any, context: Any) -> Any:
        return ping_response("worker")

    @rpc_method
    def Submit(self, request: worker_pb2.SubmitRequest, context: Any) -> worker_pb2.SubmitResponse:
        if not request.reply_to.startswith(REPLY_SCHEMES):
            raise InvalidArgument(f"reply_to must be a ZeroMQ address ({', '.join(REPLY_SCHEMES)}), got {request.reply_to!r}")
        gen = requests.decode(request.request)
        self.replies.register(gen.request_id, request.reply_to)
        try:
            # The gateway's deadline and its client's hang-up end the RPC: tokenizing stops there too.
            alive = getattr(context, "is_active", None)
            result = self.runner.submit(gen, alive=alive) if isinstance(self.runner, ModelRunner) else self.runner.submit(gen)
        except BaseException:
            self.replies.forget(gen.request_id)
            raise
        log.info("submitted", **logs.submit_fields(gen.request_id), prompt_tokens=result.prompt_tokens,
                 queue_position=result.queue_position)
        if logs.debug_enabled():
            log.debug("submit_options", **logs.submit_fields(gen.request_id), is_chat=gen.is_chat, messages=len(gen.messages),
                      options=msgspec.to_builtins(gen.options), format=bool(gen.format), tools=len(gen.tools),
                      tool_choice=gen.tool_choice.mode, think=gen.think, logprobs=gen.logprobs, truncate=gen.truncate,
                      context=len(gen.context), template_kwargs=sorted(gen.chat_template_kwargs))
        return worker_pb2.SubmitResponse(prompt_tokens=result.prompt_tokens, queue_position=result.queue_position,
                                         prompt_token_ids=result.prompt_token_ids)

    @rpc_method
    def CountTokens(self, request: worker_pb2.SubmitRequest, context: Any) -> worker_pb2.CountTokensResponse:
        """The prompt `request` would make, counted as Submit templates and tokenizes it; nothing is queued."""
        if not isinstance(self.runner, ModelRunner):
            raise Unsupported(f"model '{self.model_name}' is an embedding model: it has no prompts to count")
        gen = requests.decode(request.request)
        count = self.runner.count(gen, alive=getattr(context, "is_active", None))
        log.info("tokens_counted", **logs.submit_fields(gen.request_id), prompt_tokens=count)
        return worker_pb2.CountTokensResponse(prompt_tokens=count)

    @rpc_method
    def Embed(self, request: worker_pb2.EmbedRequest, context: Any) -> worker_pb2.EmbedResponse:
        if not isinstance(self.runner, EmbeddingRunner):
            raise Unsupported(f"model '{self.model_name}' does not support embeddings")
        result = self.runner.embed(list(request.inputs), truncate=request.truncate if request.HasField("truncate") else None,
                                   dimensions=request.dimensions, token_inputs=[list(t.ids) for t in request.token_inputs],
                                   num_ctx=request.num_ctx if request.HasField("num_ctx") else None)
        log.info("embedded", **logs.submit_fields(request.request_id), inputs=len(request.inputs) or len(request.token_inputs),
                 prompt_tokens=result.prompt_tokens,
                 duration_ms=round(result.total_duration_ns / 1e6, 2))
        return worker_pb2.EmbedResponse(embeddings=[worker_pb2.Embedding(values=v) for v in result.embeddings],
                                        prompt_tokens=result.prompt_tokens, total_duration_ns=result.total_duration_ns)

    @rpc_method
    def Cancel(self, request: worker_pb2.CancelRequest, context: Any) -> worker_pb2.CancelResponse:
        cancelled = self.runner.cancel(request.request_id)
        log.info("cancel_requested", **logs.submit_fields(request.request_id), known=cancelled)
        return worker_pb2.CancelResponse(cancelled=cancelled)

    @rpc_method
    def Info(self, request: Any, context: Any) -> worker_pb2.InfoResponse:
        running, waiting = self.runner.counts()
        return worker_pb2.InfoResponse(
            model_path=str(self.runner.model_path),
            memory_bytes=resident_memory_bytes(),
            active_memory=int(self.runner.active_memory),
            running=running,
            waiting=waiting,
            context_length=self.runner.context_length,
            device=self.runner.device,
            pid=os.getpid(),
            load_duration_s=self.runner.load_duration_s,
            prefix_cache_bytes=self.runner.prefix_cache.nbytes if isinstance(self.runner, ModelRunner) else 0,
            kind=self.kind,
            # Embedding runners have no step loop (a request is one forward pass): 0.
            steps=getattr(self.runner, "steps", 0),
            blas=self.blas.library,
            blas_gflops=self.blas.gflops,
            # Embedding runners keep their weights as loaded (no precision plan): "".
            compute_dtype=getattr(self.runner, "compute_dtype", ""),
            # A group's ranks as of the last step message (rank 0 first); a single worker has none.
            ranks=self._ranks(),
            strategy=getattr(self.runner, "strategy", ""),
        )

    def _ranks(self) -> list[common_pb2.RankInfo]:
        group = getattr(self.runner, "group", None)
        if group is None:
            return []
        return [common_pb2.RankInfo(rank=r, host=group.host(r), pid=state.pid, memory_bytes=state.memory_bytes,
                                    active_memory=state.active_memory)
                for r, state in enumerate(getattr(self.runner, "ranks", []))]
