"""One request cannot stall or crash the reward service (issue 13, item 8).

Deeply nested JSON in metadata['entry'] is INVALID_ARGUMENT on the unary call and a per-item error
on the stream (never an unanswered item); the verifier judges in worker processes, so a costly
request leaves Health and other callers responsive, and a call that passes its deadline or takes
too long gets its work stopped (the worker is killed and replaced).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.client import CritiqueError, RewardClient
from ixt_stream.critique.isolate import IsolatedBackend
from ixt_stream.critique.server import MAX_JSON_DEPTH, RewardServer, json_depth
from ixt_stream.types import Critique, Label, ModelCard, Sample

pytestmark = pytest.mark.timeout(120)

DEEP = "[" * 1000 + "]" * 1000  # ~2 kB, depth 1,000 (the input)
DEEP_OBJECT = '{"a": ' * 1000 + "1" + "}" * 1000
HEAVY = "<answer> " * 7280  # 65,520 bytes, under the 65,536 limit; quadratic in naive regexes


def sample(sid: str, entry: str = "{}", response: str = "3 + 4 = 7.\n<answer>7</answer>") -> Sample:
    return Sample(sample_id=sid, prompt="Calculate 3 + 4.", response=response, task="basic_arithmetic",
                  reference_answer="7", metadata={"entry": entry})


class SleepyBackend:
    """Judges "sleep" responses for a minute (a stand-in for any runaway CPU work); "crash" ends its
    process (a scorer that segfaults)."""

    def card(self) -> ModelCard:
        return ModelCard(name="sleepy", backend="sleepy")

    async def critique(self, s: Sample) -> Critique:
        if s.response == "sleep":
            time.sleep(60)
        if s.response == "crash":
            os._exit(3)
        if s.response == "recurse":
            raise RecursionError("maximum recursion depth exceeded")
        return Critique(s.sample_id, "Fine.", 1.0, Label.GOOD)

    async def aclose(self) -> None:
        return None


def test_json_depth_is_linear_and_ignores_brackets_in_strings():
    assert json_depth(DEEP) == json_depth(DEEP_OBJECT) == 1000
    assert json_depth('{"a": "[[[[", "b": [{"c": "\\\\\\"]]]"}]}') == 3
    assert json_depth('{"expression": "3 + 4"}') == 1 and json_depth("7") == 0


def test_deep_json_is_invalid_argument_unary_and_a_per_item_error_on_the_stream():
    async def main():
        server = RewardServer(NullBackend(), port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=5, retries=0) as client:
                errors = []
                for entry in (DEEP, DEEP_OBJECT):
                    with pytest.raises(CritiqueError) as info:
                        await client.critique(sample("deep", entry))
                    errors.append(info.value)
                limit = '{"a": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
                at_limit = await client.critique(sample("ok", limit))
                streamed = [r async for r in client.stream([sample("a"), sample("deep", DEEP), sample("b")])]
            return errors, at_limit, streamed
        finally:
            await server.stop()

    errors, at_limit, streamed = asyncio.run(main())
    assert all(e.code == "INVALID_ARGUMENT" and "nests 1000 levels deep" in e.message for e in errors)
    assert at_limit.label == Label.MIXED
    answers = {r.sample.sample_id: r for r in streamed}
    assert set(answers) == {"a", "deep", "b"} and answers["a"].critique and answers["b"].critique
    assert answers["deep"].error.code == "INVALID_ARGUMENT"


def test_a_backend_bug_is_answered_internal_never_left_unanswered():
    backend = IsolatedBackend("tests.integration.test_reward_bounded:SleepyBackend", workers=1)

    async def main():
        server = RewardServer(backend, port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=5, retries=0) as client:
                with pytest.raises(CritiqueError) as info:
                    await client.critique(sample("r", response="recurse"))
                streamed = [r async for r in client.stream([sample("r", response="recurse"), sample("ok")])]
            return info.value, streamed
        finally:
            await server.stop()

    unary, streamed = asyncio.run(main())
    assert unary.code == "INTERNAL" and "RecursionError" in unary.message
    assert {r.sample.sample_id: (r.error.code if r.error else "OK") for r in streamed} == {"r": "INTERNAL", "ok": "OK"}


async def _health_latencies(port: int, until: asyncio.Event) -> list[float]:
    """Health/Check round trips every 50 ms until `until` is set (a failed check counts as 10 s)."""
    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not until.is_set():
            t0 = time.perf_counter()
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                out.append(time.perf_counter() - t0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 10)
            except grpc.aio.AioRpcError:
                out.append(10.0)
            await asyncio.sleep(0.05)
    return out


def test_a_costly_request_keeps_health_responsive_and_its_deadline_is_honoured():
    backend = IsolatedBackend("ixt_stream.critique.verifier:VerifierBackend", {"warm_tasks": ["basic_arithmetic"]},
                              workers=1, timeout_s=30)

    async def main():
        server = RewardServer(backend, port=0)
        port = await server.start()
        try:
            done = asyncio.Event()
            probe = asyncio.create_task(_health_latencies(port, done))
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=1.0, retries=0) as client:
                t0 = time.perf_counter()
                try:
                    heavy = await client.critique(sample("heavy", response=HEAVY))
                except CritiqueError as e:
                    heavy = e
                heavy_s = time.perf_counter() - t0
                await asyncio.sleep(max(0.3, 1.5 - heavy_s))  # probe for 1.5 s: the request and after it
                done.set()
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=60) as client:  # a fresh worker serves
                after = await client.critique(sample("after"))
            return heavy, heavy_s, await probe, after
        finally:
            await server.stop()

    heavy, heavy_s, health, after = asyncio.run(main())
    assert heavy_s < 2.5, heavy_s  # the 1 s deadline holds (it took 10-15 s before)
    assert isinstance(heavy, Critique) or heavy.code == "DEADLINE_EXCEEDED", heavy
    assert len(health) >= 10 and max(health) < 0.5, health  # Health answered throughout
    assert after.label == Label.GOOD


def test_an_expired_or_overlong_call_stops_its_work():
    backend = IsolatedBackend("tests.integration.test_reward_bounded:SleepyBackend", workers=1, timeout_s=2.0)
    first_pid = backend._workers[0].proc.pid

    async def main():
        server = RewardServer(backend, port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=1.0, retries=0) as client:
                t0 = time.perf_counter()
                with pytest.raises(CritiqueError) as expired:
                    await client.critique(sample("s", response="sleep"))
                expired_s = time.perf_counter() - t0
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=60, retries=0) as client:
                streamed = [r async for r in client.stream([sample("s", response="sleep"), sample("ok")])]
            return expired.value, expired_s, streamed
        finally:
            await server.stop()

    expired, expired_s, streamed = asyncio.run(main())
    assert expired.code == "DEADLINE_EXCEEDED" and expired_s < 2.5
    answers = {r.sample.sample_id: r for r in streamed}
    assert answers["s"].error.code == "INVALID_ARGUMENT" and "too costly" in answers["s"].error.message
    assert answers["ok"].critique.label == Label.GOOD
    assert backend.replaced == 2 and first_pid not in [w.proc.pid for w in backend._workers]


def test_deep_json_in_a_corpus_line_is_counted_not_fatal(tmp_path):
    """The same input on the client side: `ixt annotate` reads it as a bad line, not a crash."""
    from ixt_stream.corpus import Skips, read_samples

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n"
                    + '{"prompt": "p", "response": "r", "metadata": {"entry": ' + "[" * 100_000 + "}}\n")
    skips = Skips()
    assert len(list(read_samples(path, skips=skips))) == 1 and skips.reasons == {"too_deep": 1}
