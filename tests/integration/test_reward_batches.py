"""Batched critique frames (`CritiqueBatchStream`) over a real loopback socket: round trip, a bad
item inside a batch, a batch that does not parse, the per-batch item limit, the message-size limit
on the client's batches, and mixed old/new peers both ways (a batching client against a service
that serves only the one-sample RPCs, and one-sample callers against the batching service); and
one hop further, the batch crossing to a judge worker process as one pipe message (under uvloop,
larger than the pipe's buffer), a sample that crashes or hangs the worker failing alone while its
batch mates are answered, with old and new clients sharing the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from ixt_stream.config import load
from ixt_stream.critique.client import CritiqueError, RewardClient
from ixt_stream.critique.isolate import IsolatedBackend
from ixt_stream.critique.server import SERVICE, RewardServicer, _method_handlers
from ixt_stream.critique.verifier import VerifierBackend
from ixt_stream.ledger import Ledger
from ixt_stream.online import orchestrator
from ixt_stream.stream import sockets
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from ixt_stream.wire.ixt.v1 import ixt_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.integration.test_reward_service import GOOD, MISSING, WRONG, ScriptedBackend, sample, serving

pytestmark = pytest.mark.timeout(60)
BATCH = f"/{SERVICE}/CritiqueBatchStream"


@pytest.fixture(scope="module")
def verifier() -> VerifierBackend:
    return VerifierBackend(warm_tasks=["basic_arithmetic"])


def answered(rpc: str, code: str = "OK") -> float:
    return REGISTRY.get_sample_value("ixt_reward_answered_total", {"rpc": rpc, "code": code}) or 0.0


def batches_seen() -> tuple[float, float]:
    """(request batches, items in them) the service has read so far, from its histogram."""
    return (REGISTRY.get_sample_value("ixt_reward_batch_items_count") or 0.0,
            REGISTRY.get_sample_value("ixt_reward_batch_items_sum") or 0.0)


async def collect(call, n: int) -> list[pb.CritiqueResponse]:
    """Read answer batches until `n` items came back; no batch-level error allowed."""
    got: list[pb.CritiqueResponse] = []
    while len(got) < n:
        msg = await call.read()
        assert msg is not grpc.aio.EOF and not msg.HasField("error"), msg
        got.extend(msg.responses)
    return got


@contextlib.asynccontextmanager
async def old_service(backend, port: int = 0):
    """A reward model built from the proto before batches: only Critique, CritiqueStream, Describe
    (and health)."""
    handlers = {name: h for name, h in _method_handlers(RewardServicer(backend, 64 << 10, 256)).items()
                if name != "CritiqueBatchStream"}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(checks := health.aio.HealthServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port
    finally:
        await server.stop(0)


def test_a_batch_round_trips_with_ids_matched(verifier):
    kinds = [GOOD, WRONG, MISSING]
    requests = [codec.critique_request(sample(f"b{i}", kinds[i % 3])) for i in range(60)]

    async def main():
        async with serving(verifier) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.RewardModelStub(channel).CritiqueBatchStream(timeout=30)
            await call.write(pb.CritiqueBatch(requests=requests[:40]))
            await call.write(pb.CritiqueBatch(requests=requests[40:]))
            await call.done_writing()
            got = await collect(call, 60)
            assert await call.read() is grpc.aio.EOF
            return got

    before = batches_seen()
    got = asyncio.run(main())
    after = batches_seen()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 60)
    by_id = {r.sample_id: r for r in got}
    assert len(got) == 60 and set(by_id) == {f"b{i}" for i in range(60)}  # each once, any order
    for i in range(60):
        r = by_id[f"b{i}"]
        assert not r.HasField("error") and r.critique and r.model_id == "verifier"
        assert codec.critique_from_pb(r).score == (1.0 if i % 3 == 0 else 0.0)


def test_a_bad_item_gets_its_own_error_and_the_rest_of_the_batch_is_answered(verifier):
    batch = pb.CritiqueBatch(requests=[
        codec.critique_request(sample("ok1", GOOD)), pb.CritiqueRequest(response="x"),
        codec.critique_request(sample("empty", "   ")),
        codec.critique_request(sample("json", GOOD, metadata={"entry": "{oops"})),
        codec.critique_request(sample("ok2", WRONG))])

    async def main():
        async with serving(verifier) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.RewardModelStub(channel).CritiqueBatchStream(timeout=30)
            await call.write(batch)
            got = await collect(call, 5)
            await call.done_writing()
            return got

    by_id = {r.sample_id: r for r in asyncio.run(main())}
    assert by_id["ok1"].label == pb.QUALITY_LABEL_GOOD and by_id["ok2"].label == pb.QUALITY_LABEL_BAD
    assert not by_id["ok1"].HasField("error") and not by_id["ok2"].HasField("error")
    for sid, why in (("", "sample_id is required"), ("empty", "response is empty"), ("json", "not valid JSON")):
        assert by_id[sid].error.code == "INVALID_ARGUMENT" and why in by_id[sid].error.message


def test_an_unparsable_batch_and_a_batch_over_the_limit_are_refused_and_the_stream_goes_on(verifier):
    over = pb.CritiqueBatch(requests=[codec.critique_request(sample(f"o{i}", GOOD)) for i in range(9)])
    fits = pb.CritiqueBatch(requests=[codec.critique_request(sample(f"f{i}", GOOD)) for i in range(8)])

    async def main():
        async with serving(verifier, max_batch_items=8) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(BATCH, response_deserializer=pb.CritiqueBatchResult.FromString)(timeout=30)
            await call.write(b"\xff\xff\xff")  # not a CritiqueBatch at all
            broken = await call.read()
            await call.write(over.SerializeToString())
            refused = await collect(call, 9)
            await call.write(fits.SerializeToString())
            served = await collect(call, 8)
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            unary = await pb_grpc.RewardModelStub(channel).Critique(codec.critique_request(sample("u", GOOD)),
                                                                   timeout=10)
            return broken, refused, served, unary

    broken, refused, served, unary = asyncio.run(main())
    assert broken.error.code == "INVALID_ARGUMENT" and "not a valid ixt.v1.CritiqueBatch" in broken.error.message
    assert not broken.responses
    assert sorted(r.sample_id for r in refused) == sorted(f"o{i}" for i in range(9))
    assert all(r.error.code == "INVALID_ARGUMENT" and "a batch of 9 items, more than the 8 accepted"
               in r.error.message for r in refused)
    assert sorted(r.sample_id for r in served) == sorted(f"f{i}" for i in range(8))
    assert all(not r.HasField("error") and r.label == pb.QUALITY_LABEL_GOOD for r in served)
    assert unary.label == pb.QUALITY_LABEL_GOOD


def test_the_client_batches_and_answers_every_sample_once(verifier):
    samples = [sample(f"c{i}", [GOOD, WRONG, MISSING][i % 3]) for i in range(300)]
    samples[7] = sample("c7", "   ")  # one bad sample among them

    async def main():
        async with serving(verifier) as port, RewardClient(f"127.0.0.1:{port}", batch_size=16) as client:
            return [r async for r in client.stream(samples)]

    before = batches_seen()
    results = asyncio.run(main())
    after = batches_seen()
    assert sorted(r.sample.sample_id for r in results) == sorted(s.sample_id for s in samples)
    bad = [r for r in results if r.error is not None]
    assert [(r.sample.sample_id, r.error.code) for r in bad] == [("c7", "INVALID_ARGUMENT")]
    assert all(r.critique.sample_id == r.sample.sample_id for r in results if r.error is None)
    n_batches, n_items = after[0] - before[0], after[1] - before[1]
    assert n_items == 300 and n_batches < 300  # several samples a message, all on the batch RPC


def test_client_batches_stay_under_the_message_limit(verifier):
    """Twenty ~20 KB samples, a 100 KB message limit on both sides: split, never over the limit."""
    big = GOOD.replace("I add", "I add " + "carefully " * 2000)
    samples = [sample(f"m{i}", big) for i in range(20)]

    async def main():
        async with serving(verifier, max_message_bytes=100_000) as port, \
                RewardClient(f"127.0.0.1:{port}", max_message_bytes=100_000, retries=0, timeout_s=20) as client:
            return [r async for r in client.stream(samples)]

    results = asyncio.run(main())
    assert sorted(r.sample.sample_id for r in results) == sorted(s.sample_id for s in samples)
    assert all(r.error is None and r.critique.label.name == "GOOD" for r in results), \
        [r.error for r in results if r.error]


def test_a_batching_client_falls_back_on_a_service_without_batches(verifier):
    samples = [sample(f"n{i}", [GOOD, WRONG][i % 2]) for i in range(50)]

    async def main():
        async with old_service(verifier) as port, RewardClient(f"127.0.0.1:{port}", batch_size=16,
                                                               retries=0) as client:
            first = [r async for r in client.stream(samples)]
            again = [r async for r in client.stream(samples[:5])]
            return first, again, client.batches_served

    before = answered("CritiqueStream")
    first, again, served = asyncio.run(main())
    assert served is False
    assert sorted(r.sample.sample_id for r in first) == sorted(s.sample_id for s in samples)  # each once
    assert all(r.error is None for r in first + again) and len(again) == 5
    assert answered("CritiqueStream") - before == 55


def test_one_sample_callers_are_served_by_the_batching_service(verifier):
    async def main():
        async with serving(verifier) as port:
            async with RewardClient(f"127.0.0.1:{port}", batch_size=1) as client:
                streamed = [r async for r in client.stream(sample(f"p{i}", GOOD) for i in range(20))]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:  # an old client's stub call
                call = pb_grpc.RewardModelStub(channel).CritiqueStream(timeout=30)
                for i in range(3):
                    await call.write(codec.critique_request(sample(f"q{i}", WRONG)))
                await call.done_writing()
                raw = [r async for r in call]
            return streamed, raw

    before_stream, before_batches = answered("CritiqueStream"), batches_seen()[0]
    streamed, raw = asyncio.run(main())
    assert sorted(r.sample.sample_id for r in streamed) == sorted(f"p{i}" for i in range(20))
    assert all(r.critique is not None and r.critique.label.name == "GOOD" for r in streamed)
    assert sorted(r.sample_id for r in raw) == ["q0", "q1", "q2"]
    assert all(r.label == pb.QUALITY_LABEL_BAD for r in raw)
    assert answered("CritiqueStream") - before_stream == 23 and batches_seen()[0] == before_batches


@pytest.mark.timeout(120)
def test_the_orchestrator_loses_nothing_when_a_batching_service_gives_way_to_an_old_one(tmp_path, tiny_model_dir):
    """Mid-run, the batching service stops (what it held in flight is lost with it) and a service
    without the batch RPC takes its port: the orchestrator resends what was unanswered, falls back to
    CritiqueStream, and every sample is conditioned exactly once; the ledger stays conserved."""
    run = "orch-batches"
    ports = [free_port() for _ in range(4)]
    cfg = load(["profile=smoke", f"run.run_dir={tmp_path}", f"run.run_id={run}", "run.tensorboard=false",
                f"reward.port={ports[0]}", f"client.address=127.0.0.1:{ports[0]}", "client.batch_size=8",
                "client.max_in_flight=16", "client.backoff_s=0.05", f"stream.samples_port={ports[1]}",
                f"stream.conditioned_port={ports[2]}", f"stream.weights_port={ports[3]}", "stream.linger_ms=0"])
    samples = [sample(f"g0-{i}", GOOD, generator_id="generator-0") for i in range(120)]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    new_backend, old_backend = ScriptedBackend(delay_s=0.2), ScriptedBackend()

    async def main():
        stop = asyncio.Event()
        push = sockets.sender(cfg.stream, "samples", run)
        pulled = sockets.receiver(cfg.stream, "conditioned", run)
        got: list[str] = []

        async def pull(until: int, within_s: float) -> None:
            deadline = time.monotonic() + within_s
            while len(got) < until and time.monotonic() < deadline:
                got.extend(c.sample.sample_id for c in pulled.drain())
                await asyncio.sleep(0.02)

        task = None
        try:
            async with serving(new_backend, ports[0], grace_s=0):
                task = asyncio.create_task(orchestrator.run(cfg, stop))
                ledger.generated(samples)  # as a generator does, before sending
                # shallow queues: push from a thread (the socket's only user) while this loop pulls
                pushing = asyncio.create_task(asyncio.to_thread(
                    lambda: all(push.send(s, timeout_ms=30_000) for s in samples)))
                await pull(20, 30)
            in_flight_lost = len(samples) - new_backend.calls  # at least the queue the stop cut off
            async with old_service(old_backend, ports[0]):
                await pull(len(samples), 60)
                assert await pushing
                await asyncio.sleep(0.3)  # nothing else comes
                got.extend(c.sample.sample_id for c in pulled.drain())
        finally:
            stop.set()
            counts = await asyncio.wait_for(task, 30) if task else {}
            push.close()
            pulled.close()
        return got, counts, in_flight_lost

    before = answered("CritiqueStream")
    got, counts, in_flight_lost = asyncio.run(main())
    assert answered("CritiqueStream") - before == old_backend.calls  # the fallback served the rest
    assert sorted(got) == sorted(s.sample_id for s in samples)  # each exactly once
    assert in_flight_lost > 0 and old_backend.calls >= in_flight_lost  # the old service did the rest
    assert counts["critique_failed"] == 0
    summary = ledger.summary()
    assert summary["conserved"] and summary["dropped_by_reason"] == {} and summary["in_flight"] == len(samples)
    ledger.close()


def sleepy_workers(timeout_s: float = 3.0) -> IsolatedBackend:
    return IsolatedBackend("tests.integration.test_reward_bounded:SleepyBackend", workers=1, timeout_s=timeout_s)


@pytest.mark.timeout(120)
def test_a_batch_crosses_to_the_judge_worker_as_one_message():
    """Under uvloop (as `ixt serve reward` runs), with a batch four times the pipe's buffer."""
    backend = sleepy_workers()
    padded = GOOD + " " * 1200

    async def main():
        async with serving(backend) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.RewardModelStub(channel).CritiqueBatchStream(timeout=30)
            await call.write(pb.CritiqueBatch(requests=[codec.critique_request(sample(f"w{i}", padded))
                                                        for i in range(200)]))
            got = await collect(call, 200)
            await call.done_writing()
            return got

    got = uvloop.run(main())
    assert sorted(r.sample_id for r in got) == sorted(f"w{i}" for i in range(200))
    assert all(not r.HasField("error") and r.label == pb.QUALITY_LABEL_GOOD for r in got)
    assert backend.batches == 1 and backend.replaced == 0


@pytest.mark.timeout(120)
def test_a_poisoned_item_in_a_batch_fails_alone_and_its_batch_mates_are_answered():
    """One item kills the judge worker, another hangs it: each gets its own error (UNAVAILABLE: the
    worker died under it; INVALID_ARGUMENT: too costly) and the 38 others are answered."""
    backend = sleepy_workers()
    responses = {f"ok{i}": GOOD for i in range(38)} | {"crash": "crash", "sleep": "sleep"}
    order = [*list(responses)[:10], "crash", *list(responses)[10:25], "sleep", *list(responses)[25:38]]

    async def main():
        async with serving(backend) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.RewardModelStub(channel).CritiqueBatchStream(timeout=60)
            await call.write(pb.CritiqueBatch(requests=[codec.critique_request(sample(sid, responses[sid]))
                                                        for sid in order]))
            got = await collect(call, len(order))
            await call.done_writing()
            return got

    t0 = time.perf_counter()
    by_id = {r.sample_id: r for r in asyncio.run(main())}
    assert set(by_id) == set(order) and len(by_id) == 40
    assert by_id["crash"].error.code == "UNAVAILABLE" and "died" in by_id["crash"].error.message
    assert "while judging this sample" in by_id["crash"].error.message
    assert by_id["sleep"].error.code == "INVALID_ARGUMENT" and "too costly" in by_id["sleep"].error.message
    assert all(not by_id[f"ok{i}"].HasField("error") and by_id[f"ok{i}"].label == pb.QUALITY_LABEL_GOOD
               for i in range(38))
    assert backend.replaced == 2 and time.perf_counter() - t0 < 40  # the hang was stopped at ~3 s, not 60


@pytest.mark.timeout(120)
def test_old_and_new_clients_share_the_judge_workers_and_a_poisoned_item_fails_alone():
    """A batching client, a one-sample stream client and a unary caller at once, each with a sample
    that hangs the judge worker: those three fail alone, every other sample of each is answered."""
    backend = sleepy_workers(timeout_s=2.0)

    async def run(client: RewardClient, tag: str) -> list:
        samples = [sample(f"{tag}{i}", GOOD) for i in range(15)]
        samples.insert(7, sample(f"{tag}-sleep", "sleep"))
        return [r async for r in client.stream(samples)]

    async def main():
        async with serving(backend) as port:
            address = f"127.0.0.1:{port}"
            async with (RewardClient(address, retries=0, timeout_s=60) as new,
                        RewardClient(address, retries=0, timeout_s=60, batch_size=1) as old,
                        RewardClient(address, retries=0, timeout_s=60) as unary):
                async def unary_calls() -> list:
                    out = []
                    for s in (sample("u0", GOOD), sample("u-sleep", "sleep"), sample("u1", GOOD)):
                        try:
                            out.append((s.sample_id, await unary.critique(s)))
                        except CritiqueError as e:
                            out.append((s.sample_id, e))
                    return out

                return await asyncio.gather(run(new, "n"), run(old, "o"), unary_calls())

    before_batches, before_stream = answered("CritiqueBatchStream"), answered("CritiqueStream")
    batched, single, unary = asyncio.run(main())
    for tag, results in (("n", batched), ("o", single)):
        by_id = {r.sample.sample_id: r for r in results}
        assert len(results) == 16 and set(by_id) == {f"{tag}{i}" for i in range(15)} | {f"{tag}-sleep"}
        assert by_id[f"{tag}-sleep"].error.code == "INVALID_ARGUMENT"
        assert "too costly" in by_id[f"{tag}-sleep"].error.message
        assert all(by_id[f"{tag}{i}"].critique.label.name == "GOOD" for i in range(15))
    assert [sid for sid, _ in unary] == ["u0", "u-sleep", "u1"]
    assert unary[0][1].label.name == unary[2][1].label.name == "GOOD"
    assert unary[1][1].code == "INVALID_ARGUMENT" and "too costly" in unary[1][1].message
    assert answered("CritiqueBatchStream") - before_batches == 15
    assert answered("CritiqueStream") - before_stream == 15
    assert backend.replaced == 3
