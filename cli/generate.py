"""`mlxctl run`: stream one answer from the gateway's /api/generate (NDJSON) to stdout, or chat on a terminal."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mlxserve.services.common.errors import InvalidArgument

from .backend import complete_model_names, exits_on_error, settings_from
from .chat import ChatSession, start_chat
from .gateway_client import GatewayClient, base_url
from .options import check_format, parse_options
from .render import AnswerWriter, print_answer, print_timings


@exits_on_error
def run(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="the model to run", autocompletion=complete_model_names),
    prompt: Optional[str] = typer.Argument(None, help="the prompt (default: read stdin; on a terminal, chat)"),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
    keepalive: Optional[str] = typer.Option(None, "--keepalive", help="how long the model stays loaded after this (e.g. 5m, 0, -1)"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings at the end"),
    option: list[str] = typer.Option([], "--option", "-o", help="a model option as KEY=VALUE (e.g. -o temperature=0 -o num_predict=64); repeatable"),
    format_: Optional[str] = typer.Option(None, "--format", help="constrain the answer: json"),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="let a reasoning model think first (shown apart), or not"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as is, without the chat template (continue the text)"),
    host: Optional[str] = typer.Option(None, "--host", envvar="MLXSERVE_HOST", help="server URL or host[:port]"),
) -> None:
    """Generate an answer to a prompt, streamed as it is produced; with no prompt on a terminal, chat."""
    settings = settings_from(ctx)
    url = base_url(host, settings.base_url)
    check_format(format_)
    options = parse_options(option)
    if raw and (system is not None or think is not None):
        raise InvalidArgument("--raw sends the prompt without the template, so it takes no --system or --think")
    if prompt is None and sys.stdin.isatty() and not raw:
        session = ChatSession(model=model, system=system, options=options, format=format_, think=think,
                              verbose=verbose, keepalive=keepalive)
        raise typer.Exit(start_chat(session, url, settings))
    if prompt is None:
        prompt = sys.stdin.read()
    body: dict = {"model": model, "prompt": prompt, "stream": True}
    if system is not None:
        body["system"] = system
    if keepalive is not None:
        body["keep_alive"] = keepalive
    if options:
        body["options"] = options
    if format_:
        body["format"] = format_
    if think is not None:
        body["think"] = think
    if raw:
        body["raw"] = True
    with GatewayClient.for_settings(url, settings).generate(body) as chunks:
        done = print_answer(chunks, AnswerWriter(), chat=False)
    if verbose and done:
        print_timings(done)
