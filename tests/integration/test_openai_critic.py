"""The openai critic against a real HTTP endpoint that misbehaves (issue 13, item 6).

An endpoint answering 200 with nothing usable must never produce a trained "mixed 0.5" critique:
the item fails (retryable, counted); a broken body names the upstream's status and message;
transient upstream errors are retried with backoff until a real critique comes back.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ixt_stream.critique.client import CritiqueError, RewardClient
from ixt_stream.critique.completers import OpenAICompleter
from ixt_stream.critique.llm import LLMBackend
from ixt_stream.critique.server import RewardServer
from ixt_stream.types import Label, Sample

pytestmark = pytest.mark.timeout(60)

GOOD = {"choices": [{"message": {"content": "<think>checked</think>\nCritique: The sum is right and clearly "
                                            "shown.\nScore: 1\nLabel: good"}, "finish_reason": "stop"}]}
SAMPLE = Sample(sample_id="s1", prompt="Calculate 3 + 4.", response="3 + 4 = 7.\n<answer>7</answer>",
                task="basic_arithmetic", reference_answer="7")


def reply(status: int, body, content_type: str = "application/json") -> tuple[int, str, bytes]:
    return status, content_type, (body if isinstance(body, str) else json.dumps(body)).encode()


class Endpoint:
    """An HTTP server answering POSTs from a script (the last answer repeats); counts the requests."""

    def __init__(self, script: list[tuple[int, str, bytes]]):
        self.script, self.requests = list(script), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                status, ctype, body = outer.script[min(outer.requests, len(outer.script) - 1)]
                outer.requests += 1
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def critique_via_service(script, retries: int = 2):
    """Critique SAMPLE through the real gRPC service (unary and stream) over an `Endpoint`."""
    endpoint = Endpoint(script)

    async def main():
        backend = LLMBackend(OpenAICompleter(endpoint.url, "critic", timeout_s=5), "openai")
        server = RewardServer(backend, port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}", retries=retries, backoff_s=0.01, timeout_s=10) as client:
                try:
                    unary = await client.critique(SAMPLE)
                except CritiqueError as e:
                    unary = e
                streamed = [r async for r in client.stream([SAMPLE])]
            return unary, streamed, server.servicer.failed
        finally:
            await server.stop()

    try:
        return (*asyncio.run(main()), endpoint.requests)
    finally:
        endpoint.close()


@pytest.mark.parametrize("body, why", [
    ({"choices": [{"message": {"content": None, "reasoning_content": "hmm, 3 + 4 is 7"},
                   "finish_reason": "length"}]}, "only reasoning_content"),
    ({"choices": [{"message": {"content": "<think>3 + 4 is 7, so the answer"}}]}, "never closed"),
    ({"choices": [{"message": {"content": ""}}]}, "gave no text"),
])
def test_a_reply_without_feedback_fails_and_is_counted_not_trained(body, why):
    unary, streamed, failed, requests = critique_via_service([reply(200, body)])
    assert isinstance(unary, CritiqueError) and unary.code == "UNAVAILABLE" and why in unary.message
    [result] = streamed
    assert result.critique is None and result.error.code == "UNAVAILABLE" and why in result.error.message
    assert requests == 2 * 3  # unary and stream: first try + 2 retries each (retryable)
    assert failed == 6


@pytest.mark.parametrize("status, body, ctype, expect", [
    (200, {"error": {"message": "model is overloaded", "type": "server_error"}}, "application/json",
     "answered 200 with an error: model is overloaded"),
    (200, "<html><title>502 Bad Gateway</title></html>", "text/html", "not a JSON object (text/html)"),
    (200, {"id": "x", "object": "chat.completion"}, "application/json", "answered without choices"),
    (200, [1, 2], "application/json", "not a JSON object"),
    (503, {"error": {"message": "warming up"}}, "application/json", "answered 503: warming up"),
])
def test_a_broken_body_names_the_upstream_status_and_message(status, body, ctype, expect):
    unary, streamed, _, requests = critique_via_service([reply(status, body, ctype)])
    assert isinstance(unary, CritiqueError) and unary.code == "UNAVAILABLE", unary
    assert expect in unary.message and expect in streamed[0].error.message
    assert requests == 6  # retried (with backoff) like any transient failure


def test_a_setup_error_is_not_retried():
    unary, streamed, _, requests = critique_via_service([reply(404, {"error": {"message": "no such model"}})])
    assert unary.code == "INTERNAL" and "answered 404: no such model" in unary.message
    assert streamed[0].error.code == "INTERNAL" and requests == 2


def test_transient_upstream_errors_are_retried_until_a_critique_comes():
    script = [reply(503, "busy", "text/plain"), reply(429, {"error": {"message": "slow down"}}), reply(200, GOOD)]
    unary, streamed, _, requests = critique_via_service(script, retries=3)
    assert unary.label == Label.GOOD and unary.critique == "The sum is right and clearly shown."
    assert streamed[0].critique.label == Label.GOOD and requests == 4
