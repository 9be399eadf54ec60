"""The official anthropic client reads messages, streams, token counts, models and errors from the real
gateway served on a loopback port, against the fake services of tests/fixtures/gateway_harness.py."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.fixtures.anthropic_plans import USER, counting_worker  # noqa: F401 (counting_worker: a fixture)
from tests.fixtures.gateway_harness import harness, run

pytestmark = pytest.mark.timeout(30)


def test_the_anthropic_client_reads_messages_streams_counts_models_and_errors(counting_worker):  # noqa: F811 (the fixture)
    async def scenario():
        async with harness(port=True) as h:
            def with_anthropic() -> None:
                c = anthropic.Anthropic(base_url=h.url, api_key="unused", max_retries=0)
                msg = c.messages.create(model="tiny", max_tokens=16, messages=USER)
                assert msg.content[0].text == "Hello" and msg.stop_reason == "end_turn" and msg.usage.output_tokens == 3
                beta = c.beta.messages.create(model="tiny", max_tokens=16, messages=USER, betas=["interleaved-thinking-2025-05-14"])
                assert beta.content[0].text == "Hello"
                with c.messages.stream(model="tiny", max_tokens=16, messages=USER) as stream:
                    assert "".join(stream.text_stream) == "Hello"
                    final = stream.get_final_message()
                assert final.content[0].text == "Hello" and final.usage.input_tokens == 5 and final.usage.output_tokens == 3
                assert c.messages.count_tokens(model="tiny", messages=USER).input_tokens == 7
                assert [m.id for m in c.models.list()] == ["tiny:latest"]
                with pytest.raises(anthropic.NotFoundError) as e:
                    c.messages.create(model="nope", max_tokens=16, messages=USER)
                assert e.value.body["error"]["type"] == "not_found_error"
                with pytest.raises(anthropic.BadRequestError) as e:
                    c.messages.create(model="tiny", max_tokens=16, messages=[
                        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                                   "data": "AA=="}}]}])
                assert "messages[0].content[0].type" in e.value.message

            await asyncio.to_thread(with_anthropic)
    run(scenario())
