"""The gRPC service `ixt.v1.RewardModel` over any critic `Backend`.

The contract (see protos/ixt/v1/ixt.proto): malformed requests get INVALID_ARGUMENT with a reason
(on the stream: that item gets `error`, the stream goes on), bytes that do not even parse as the
request message (bad wire format, invalid UTF-8 in a string) included: grpc itself would answer
UNKNOWN for those and end the whole stream; more than `max_concurrent_requests`
items in flight get RESOURCE_EXHAUSTED instead of an unbounded queue, and a stream whose caller
stops reading answers is not read further (flow control pushes back); a unary call stops at its
deadline, and a call that ends (deadline, cancellation, a closed stream) cancels its judging;
nothing a caller sends can crash the server or go unanswered (backend failures and bugs become
INTERNAL, transient ones UNAVAILABLE; JSON in metadata['entry'] nested deeper than
`MAX_JSON_DEPTH` is INVALID_ARGUMENT). CPU-bound critics judge in worker processes
(`isolate.py`), so one costly request cannot stall the event loop or the health check. Health
(`grpc.health.v1`) says SERVING once the server runs, which is after the backend was built;
server reflection is on (grpcurl can list and call it). Optional bearer-token auth and TLS live in
`security.py`. `CritiqueBatchStream` is `CritiqueStream` with many items per message both ways (the
same judging, window and per-item errors; gRPC's per-message cost paid once per batch); a batch of
more than `max_batch_items` has every item answered INVALID_ARGUMENT, and a batch that does not
parse is answered with a batch-level `error`, the stream going on in both cases.
`main` is the reward role's entry point (`ixt serve reward`).
Left out: per-caller quotas, request priorities, a queue in front of the backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import time
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

from ixt_stream.config import ConfigError, IxtConfig, RewardConfig
from ixt_stream.critique.backend import Backend, BackendUnavailable, InvalidRequest
from ixt_stream.critique.security import BearerAuth, check_exposure, read_file, read_secret, server_credentials
from ixt_stream.types import Sample
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from ixt_stream.wire.ixt.v1 import ixt_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["RewardModel"].full_name
MAX_SAMPLE_ID_BYTES = 256
MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in metadata['entry'] (reasoning-gym entries nest a few levels); deeper
JSON would exhaust Python's recursion limit in json.loads and in scorers that walk it."""
ANSWERED = Counter("ixt_reward_answered", "Critique items answered, by rpc and status code", ["rpc", "code"])
LATENCY = Histogram("ixt_reward_latency_seconds", "Backend time per critique item",
                    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60))
IN_FLIGHT = Gauge("ixt_reward_in_flight", "Critique items being judged")
BATCH_ITEMS = Histogram("ixt_reward_batch_items", "Items per CritiqueBatchStream request message",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))


class Fail(Exception):
    """A request-level failure: becomes a gRPC status (unary) or an item `error` (stream)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Undecodable:
    """Request bytes that are not a valid message of the expected type; `error` says why."""

    sample_id = ""

    def __init__(self, error: str):
        self.error = error


def _lenient(message_type):
    """A request deserializer that returns Undecodable instead of raising (grpc would answer UNKNOWN)."""

    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return Undecodable(str(e))

    return decode


def _method_handlers(servicer: RewardServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The generated registration, with lenient request decoding."""
    return {
        "Critique": grpc.unary_unary_rpc_method_handler(
            servicer.Critique, request_deserializer=_lenient(pb.CritiqueRequest),
            response_serializer=pb.CritiqueResponse.SerializeToString),
        "CritiqueStream": grpc.stream_stream_rpc_method_handler(
            servicer.CritiqueStream, request_deserializer=_lenient(pb.CritiqueRequest),
            response_serializer=pb.CritiqueResponse.SerializeToString),
        "CritiqueBatchStream": grpc.stream_stream_rpc_method_handler(
            servicer.CritiqueBatchStream, request_deserializer=_lenient(pb.CritiqueBatch),
            response_serializer=pb.CritiqueBatchResult.SerializeToString),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe, request_deserializer=_lenient(pb.DescribeRequest),
            response_serializer=pb.ModelCard.SerializeToString),
    }


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text, by one linear scan (no parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def to_sample(req: pb.CritiqueRequest | Undecodable, max_field_bytes: int) -> Sample:
    """Validate a request and turn it into a Sample; raises Fail(INVALID_ARGUMENT) with the reason."""

    def bad(why: str) -> Fail:
        return Fail(grpc.StatusCode.INVALID_ARGUMENT, why)

    if isinstance(req, Undecodable):
        raise bad(f"the request is not a valid {pb.CritiqueRequest.DESCRIPTOR.full_name}: {req.error}")
    if not req.sample_id:
        raise bad("sample_id is required")
    if len(req.sample_id.encode()) > MAX_SAMPLE_ID_BYTES:
        raise bad(f"sample_id is longer than {MAX_SAMPLE_ID_BYTES} bytes")
    if not req.response.strip():
        raise bad(f"{req.sample_id}: response is empty")
    sizes = {"prompt": len(req.prompt.encode()), "response": len(req.response.encode()),
             "reference_answer": len(req.reference_answer.encode()), "task": len(req.task.encode()),
             "metadata": sum(len(k.encode()) + len(v.encode()) for k, v in req.metadata.items())}
    for name, size in sizes.items():
        if size > max_field_bytes:
            raise bad(f"{req.sample_id}: {name} has {size} bytes, more than the {max_field_bytes} accepted")
    if "entry" in req.metadata:
        if (depth := json_depth(req.metadata["entry"])) > MAX_JSON_DEPTH:
            raise bad(f"{req.sample_id}: metadata['entry'] nests {depth} levels deep, more than the "
                      f"{MAX_JSON_DEPTH} accepted")
        try:
            entry = json.loads(req.metadata["entry"])
        except json.JSONDecodeError as e:
            raise bad(f"{req.sample_id}: metadata['entry'] is not valid JSON ({e})") from e
        if not isinstance(entry, dict):
            raise bad(f"{req.sample_id}: metadata['entry'] must be a JSON object")
    return Sample(sample_id=req.sample_id, prompt=req.prompt, response=req.response, task=req.task,
                  reference_answer=req.reference_answer, metadata=dict(req.metadata),
                  finish_reason="length" if req.truncated else "")


def item_error(sample_id: str, fail: Fail) -> pb.CritiqueResponse:
    """A stream's answer for an item that failed."""
    return pb.CritiqueResponse(sample_id=sample_id, error=pb.Error(code=fail.code.name, message=fail.message))


class RewardServicer(pb_grpc.RewardModelServicer):
    def __init__(self, backend: Backend, max_response_bytes: int, max_concurrent_requests: int,
                 max_batch_items: int = 1024, max_message_bytes: int = 4 << 20):
        self.backend = backend
        self.max_response_bytes = max_response_bytes
        self.max_concurrent = max_concurrent_requests
        self.max_batch_items = max_batch_items
        self.max_out_bytes = max_message_bytes // 2
        """Answer batches stay under half the message limit (protobuf framing, one oversized item)."""
        self.in_flight = 0
        self.answered = 0
        self.failed = 0
        self.busy_s = 0.0
        """Totals for status reports: items answered / failed, backend seconds spent."""
        card = backend.card()
        card.max_response_bytes = max_response_bytes
        self.card = card

    async def _judge(self, req: pb.CritiqueRequest) -> pb.CritiqueResponse:
        sample = to_sample(req, self.max_response_bytes)
        if self.in_flight >= self.max_concurrent:
            raise Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"{self.max_concurrent} critiques already in flight; retry with backoff")
        self.in_flight += 1
        IN_FLIGHT.inc()
        t0 = time.perf_counter()
        try:
            critique = await self.backend.critique(sample)
        except InvalidRequest as e:
            raise Fail(grpc.StatusCode.INVALID_ARGUMENT, f"{req.sample_id}: {e}") from e
        except BackendUnavailable as e:
            raise Fail(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        except Exception as e:  # never let a backend bug take the server down
            log.exception("critic failed on %s", req.sample_id)
            raise Fail(grpc.StatusCode.INTERNAL, f"critic failed: {type(e).__name__}: {e}") from e
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
            self.busy_s += time.perf_counter() - t0
        if not math.isfinite(critique.score) or not 0.0 <= critique.score <= 1.0:
            raise Fail(grpc.StatusCode.INTERNAL, f"critic returned score {critique.score} outside [0, 1]")
        elapsed = time.perf_counter() - t0
        LATENCY.observe(elapsed)
        self.answered += 1
        critique.sample_id = req.sample_id
        critique.latency_ms = elapsed * 1e3
        critique.model_id = critique.model_id or self.card.model_id or self.card.backend
        return codec.critique_to_pb(critique)

    async def _answer(self, req) -> pb.CritiqueResponse:
        """`_judge`, with every failure (a bug included) turned into a Fail: no call goes unanswered."""
        try:
            return await self._judge(req)
        except Fail:
            raise
        except Exception as e:
            log.exception("unexpected failure on %s", getattr(req, "sample_id", ""))
            raise Fail(grpc.StatusCode.INTERNAL, f"critique failed: {type(e).__name__}: {e}") from e

    async def Critique(self, request, context):
        # On the deadline (or a cancelled call) wait_for cancels the judging, which stops its work.
        try:
            resp = await asyncio.wait_for(self._answer(request), context.time_remaining())
        except Fail as f:
            self.failed += 1
            ANSWERED.labels("Critique", f.code.name).inc()
            await context.abort(f.code, f.message)
        except TimeoutError:
            ANSWERED.labels("Critique", "DEADLINE_EXCEEDED").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while judging")
        ANSWERED.labels("Critique", "OK").inc()
        return resp

    async def _pipeline(self, request_iterator, rpc: str, unpack, most_out: int):
        """The streams' core: each message read is unpacked into items, judged concurrently; yields
        lists of finished answers (up to `most_out` items and the message limit), as they finish.

        `unpack(message)` gives the message's items: requests to judge, or answers (a
        CritiqueResponse with `error`, a pb.Error for a whole message) already decided. At most
        `max_concurrent_requests` items of one stream are read and not yet answered back: a caller
        that stops reading answers is pushed back by HTTP/2 flow control instead of having the
        server read on and buffer answers without bound."""
        out: asyncio.Queue[pb.CritiqueResponse | pb.Error | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        window = asyncio.Semaphore(self.max_concurrent)

        async def answer(req: pb.CritiqueRequest) -> None:
            try:
                resp = await self._answer(req)
                ANSWERED.labels(rpc, "OK").inc()
            except Fail as f:
                self.failed += 1
                ANSWERED.labels(rpc, f.code.name).inc()
                resp = item_error(req.sample_id, f)
            out.put_nowait(resp)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    for item in unpack(message):
                        await window.acquire()
                        if isinstance(item, pb.CritiqueRequest | Undecodable):
                            task = asyncio.create_task(answer(item))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                        else:
                            out.put_nowait(item)
                await asyncio.gather(*tasks)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        held: list = []  # an answer taken off the queue that did not fit the last message
        try:
            while (first := held.pop() if held else await out.get()) is not None:
                answers, size = [first], first.ByteSize()
                while not isinstance(first, pb.Error) and len(answers) < most_out and not out.empty():
                    nxt = out.get_nowait()
                    if nxt is None or isinstance(nxt, pb.Error) or size + nxt.ByteSize() > self.max_out_bytes:
                        held.append(nxt)
                        break
                    answers.append(nxt)
                    size += nxt.ByteSize()
                yield answers
                for _ in answers:
                    window.release()
            await reader
        finally:
            for task in [reader, *tasks]:
                task.cancel()

    async def CritiqueStream(self, request_iterator, context):
        """Items are judged concurrently; answers go back one per message as they finish (match by
        sample_id)."""
        async for answers in self._pipeline(request_iterator, "CritiqueStream", lambda req: [req], 1):
            yield answers[0]

    def _unbatch(self, batch) -> list:
        """A batch's items; each item of a batch over `max_batch_items` answered INVALID_ARGUMENT."""
        if isinstance(batch, Undecodable):
            self.failed += 1
            ANSWERED.labels("CritiqueBatchStream", "INVALID_ARGUMENT").inc()
            return [pb.Error(code="INVALID_ARGUMENT", message=f"the batch is not a valid "
                             f"{pb.CritiqueBatch.DESCRIPTOR.full_name}: {batch.error}")]
        if len(batch.requests) > self.max_batch_items:
            fail = Fail(grpc.StatusCode.INVALID_ARGUMENT, f"a batch of {len(batch.requests)} items, more than "
                        f"the {self.max_batch_items} accepted: send smaller batches")
            self.failed += len(batch.requests)
            ANSWERED.labels("CritiqueBatchStream", "INVALID_ARGUMENT").inc(len(batch.requests))
            return [item_error(req.sample_id, fail) for req in batch.requests]
        BATCH_ITEMS.observe(len(batch.requests))
        return list(batch.requests)

    async def CritiqueBatchStream(self, request_iterator, context):
        """CritiqueStream with batches both ways: an answer batch holds whatever finished meanwhile."""
        async for answers in self._pipeline(request_iterator, "CritiqueBatchStream", self._unbatch,
                                            self.max_batch_items):
            if isinstance(answers[0], pb.Error):
                yield pb.CritiqueBatchResult(error=answers[0])
            else:
                yield pb.CritiqueBatchResult(responses=answers)

    async def Describe(self, request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a DescribeRequest: {request.error}")
        return codec.card_to_pb(self.card)


class RewardServer:
    """The service, bound and started by `start()`, stopped (with a grace period) by `stop()`.

    Args:
        backend: a built critic; `stop()` closes it.
        port: 0 picks a free port (see `self.port` after `start()`).
        auth_token: if set, every call but health checks needs `authorization: Bearer <token>`.
        tls_cert, tls_key: PEM bytes; both set = TLS.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, *,
                 max_message_bytes: int = 4 << 20, max_response_bytes: int = 64 << 10,
                 max_concurrent_requests: int = 256, max_batch_items: int = 1024, auth_token: str = "",
                 tls_cert: bytes | None = None, tls_key: bytes | None = None, grace_s: float = 5.0):
        check_exposure(host, auth_token)
        self.backend = backend
        self.host, self.port = host, port
        self.grace_s = grace_s
        self.servicer = RewardServicer(backend, max_response_bytes, max_concurrent_requests, max_batch_items,
                                       max_message_bytes)
        self.health = health.aio.HealthServicer()
        self._credentials = server_credentials(tls_cert, tls_key)
        self._interceptors = [BearerAuth(auth_token)] if auth_token else None
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes)]
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        self._server = grpc.aio.server(interceptors=self._interceptors, options=self._options)
        handlers = _method_handlers(self.servicer)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self._server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self._credentials is not None:
            self.port = self._server.add_secure_port(address, self._credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        await self._server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("reward service (%s) on %s:%d", self.servicer.card.backend, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.grace_s)
        await self.backend.aclose()


class _Reporter:
    """Calls `status` with flat counters every `every_s` seconds, and once more at the end."""

    def __init__(self, servicer: RewardServicer, status: Callable[[dict], None], every_s: float):
        self.servicer, self.status, self.every_s = servicer, status, every_s
        self._last, self._t_last = 0, time.perf_counter()

    def report(self) -> None:
        s, now = self.servicer, time.perf_counter()
        self.status({"backend": s.card.backend, "critiques": s.answered, "failed": s.failed,
                     "in_flight": s.in_flight, "critiques_per_s": (s.answered - self._last) / (now - self._t_last),
                     "mean_latency_ms": 1e3 * s.busy_s / max(s.answered + s.failed, 1)})
        self._last, self._t_last = s.answered, now

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.report()


async def serve(backend: Backend, cfg: RewardConfig, status: Callable[[dict], None] | None = None,
                status_every_s: float = 5.0) -> None:
    """Run the service from config until SIGINT or SIGTERM, then stop with a grace period.

    `status`, if given, receives a flat dict of counters every `status_every_s` seconds.
    """
    server = reporter = task = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = RewardServer(
            backend, cfg.host, cfg.port, max_message_bytes=cfg.max_message_bytes,
            max_response_bytes=cfg.max_response_bytes, max_concurrent_requests=cfg.max_concurrent_requests,
            max_batch_items=cfg.max_batch_items,
            auth_token=read_secret(cfg.auth_token_file, "reward.auth_token_file"), grace_s=cfg.grace_s,
            tls_cert=read_file(cfg.tls_cert_file, "reward.tls_cert_file") if cfg.tls_cert_file else None,
            tls_key=read_file(cfg.tls_key_file, "reward.tls_key_file") if cfg.tls_key_file else None,
        )
        try:
            await server.start()
        except RuntimeError as e:  # grpc: "Failed to bind to address ..."
            raise ConfigError(f"reward.host/reward.port: cannot serve on {cfg.host}:{cfg.port} (in use, or not "
                              f"an address of this machine): {e}") from None
        if status is not None:
            reporter = _Reporter(server.servicer, status, status_every_s)
            task = asyncio.create_task(reporter.run())
        await stop.wait()
        log.info("stopping (grace %.1f s)", cfg.grace_s)
    finally:
        if task is not None:
            task.cancel()
        await (server.stop() if server is not None else backend.aclose())
        if reporter is not None:
            reporter.report()


def main(cfg: IxtConfig) -> int:
    """The reward role's entry point (`ixt serve reward`): logging -> refuse an exposed port -> build the
    critic (`registry.build`) -> serve under uvloop -> clean up. The backend is built before the port
    opens, so health says SERVING exactly when critiques can be answered (an LLM critic takes seconds
    to load; clients wait on health)."""
    import prometheus_client
    import uvloop

    from ixt_stream import logs
    from ixt_stream.critique import registry
    from ixt_stream.metrics import write_status

    logs.setup(cfg.run.log_level, "reward")
    # refuse an exposed port before a model loads
    check_exposure(cfg.reward.host, read_secret(cfg.reward.auth_token_file, "reward.auth_token_file"))
    if cfg.run.metrics_port:
        prometheus_client.start_http_server(cfg.run.metrics_port, addr="127.0.0.1")
    log.info("building the %s critic", cfg.reward.backend)
    backend = registry.build(cfg)
    uvloop.run(serve(backend, cfg.reward, status=lambda s: write_status(cfg.run.run_dir, "reward", s)))
    return 0
