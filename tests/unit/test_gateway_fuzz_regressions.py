"""Inputs the schemathesis fuzzer (tests/e2e/test_fuzz.py) found answering 500: each is now a 400 naming the field."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from mlxserve.gateway.app import create_app
from mlxserve.gateway.native import parse_options
from mlxserve.gateway.openai_api import parse_chat_completion, parse_completion
from mlxserve.gateway.validation import BadField
from mlxserve.services.common.config import load_settings
from tests.fixtures.inproc_http import InprocClient

pytestmark = pytest.mark.timeout(30)


def post_raw(path: str, raw: bytes) -> tuple[int, dict]:
    """POST `raw` to a gateway with no backends running; (status, JSON body)."""
    async def scenario() -> tuple[int, dict]:
        home = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        client = InprocClient(create_app(load_settings({"home": str(home)}, env={})))
        await client.start_server()
        try:
            resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
            return resp.status, await resp.json()
        finally:
            await client.close()
            shutil.rmtree(home, ignore_errors=True)
    return asyncio.run(scenario())


@pytest.mark.parametrize("key, value", [("repeat_last_n", 2**40), ("num_predict", -(2**40)), ("top_k", 2**31),
                                        ("num_ctx", 2**33), ("seed", 2**64)])
def test_option_integers_too_large_for_the_worker_are_400_naming_the_option(key, value):
    with pytest.raises(BadField) as e:
        parse_options({key: value})
    assert e.value.param == f"options.{key}" and "between" in e.value.message


def test_seed_takes_the_whole_64_bit_range():
    assert parse_options({"seed": 2**63 - 1}).seed == 2**63 - 1


def test_openai_max_tokens_past_int32_is_400_naming_it():
    with pytest.raises(BadField) as e:
        parse_completion({"model": "m", "prompt": "hi", "max_tokens": 2**40}, "rid")
    assert e.value.param == "max_tokens"
    with pytest.raises(BadField) as e:
        parse_chat_completion({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2**31}, "rid")
    assert e.value.param == "max_completion_tokens"


@pytest.mark.parametrize("path, raw, where", [
    ("/api/generate", rb'{"model": "tiny", "prompt": "a\udabcb"}', "prompt"),
    ("/api/chat", rb'{"model": "x\uDFFF", "messages": []}', "model"),
    ("/v1/chat/completions", rb'{"model": "m", "messages": [{"role": "user", "content": "\ud800"}]}', "messages[0].content"),
    ("/api/embed", rb'{"model": "m", "options": {"\udc00": 1}}', "options"),
])
def test_unpaired_surrogate_escapes_are_400_naming_where_they_are(path, raw, where):
    status, body = post_raw(path, raw)
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert status == 400 and f"'{where}'" in message and "surrogate" in message


def test_a_surrogate_pair_written_as_escapes_is_ordinary_text():
    # Escaped pairs are how many JSON encoders write emoji; they must reach the backends (503 here: none runs).
    status, body = post_raw("/api/generate", rb'{"model": "tiny", "prompt": "\ud83d\ude00"}')
    assert status == 503 and "supervisor" in body["error"]
