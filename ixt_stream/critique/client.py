"""The async client of the reward service: `Sample` in, `Critique` out.

Two paths. `critique(sample)` is one unary call with a deadline. `stream(samples)` pipelines any
number of samples over one `CritiqueBatchStream` and yields a `Result` per sample as answers
arrive (not in input order). Each message carries whatever is ready to send, up to `batch_size`
samples (gRPC's cost per message, not the critic, bounds a fast critic's rate). Each stream first
asks whether the service serves the batch RPC; one that does not (a plugged-in reward model built
before it: UNIMPLEMENTED) gets the samples one per message over `CritiqueStream`, as does every
stream with `batch_size=1`.
Both keep at most `max_in_flight` samples outstanding, and both retry with exponential backoff (plus
jitter) on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, never on INVALID_ARGUMENT. On the
stream, a dropped connection or `timeout_s` without any answer resends what was in flight on a new
stream; an item that fails for good becomes a `Result` with `error` set, and only a service that
stays down through every retry ends the iteration with `CritiqueError`. An exception raised by the
caller's sample source ends the iteration with that same exception (after the answers that came
before it), so a broken input never leaves the caller waiting; a sample that cannot even be encoded
becomes a `Result` with an INVALID_ARGUMENT error.
Left out: hedged requests, client-side load balancing over several services.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ixt_stream.config import RewardClientConfig
from ixt_stream.critique.security import call_metadata, read_file, read_secret
from ixt_stream.types import Critique, ModelCard, Sample
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from ixt_stream.wire.ixt.v1 import ixt_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED})
"""The one retry policy: calls failing with these codes are retried with backoff, and a caller whose
stream failed for good with one of them waits for the service and opens a new stream."""
RETRYABLE_NAMES = frozenset(code.name for code in RETRYABLE)
SERVICE = pb.DESCRIPTOR.services_by_name["RewardModel"].full_name
MAX_RECONNECT_BACKOFF_MS = 2000
BATCH_FRAMING_BYTES = 16
"""Room left per item for protobuf framing when batches are sized against the message limit."""


class CritiqueError(RuntimeError):
    """A critique that failed for good; `code` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Result:
    """One streamed answer: exactly one of `critique` and `error` is set."""

    sample: Sample
    critique: Critique | None = None
    error: CritiqueError | None = None


async def _aiter(samples: Iterable[Sample] | AsyncIterable[Sample]) -> AsyncIterator[Sample]:
    if isinstance(samples, AsyncIterable):
        async for s in samples:
            yield s
    else:
        for s in samples:
            yield s


class RewardClient:
    """Talks to one reward service. Create and use it inside a running event loop.

    Args:
        address: "host:port".
        max_in_flight: samples outstanding at once (unary calls, or items on the stream).
        timeout_s: deadline of one unary call; on the stream, the longest wait for any answer.
        retries: retries per sample after the first try.
        backoff_s: first retry delay; doubles every retry (x0.5-1.5 jitter).
        auth_token: bearer token, if the service wants one.
        tls_ca: PEM root certificate; set = TLS.
        batch_size: most samples per stream message (CritiqueBatchStream); 1 = CritiqueStream.
    """

    def __init__(self, address: str, *, max_in_flight: int = 64, timeout_s: float = 60.0, retries: int = 5,
                 backoff_s: float = 0.2, auth_token: str = "", tls_ca: bytes | None = None,
                 max_message_bytes: int = 4 << 20, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.address = address
        self.batch_size = batch_size
        self.batches_served = True
        """Whether the service serves CritiqueBatchStream, as last asked (`_serves_batches`)."""
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_in_flight = max_in_flight
        self.max_message_bytes = max_message_bytes
        self._metadata = call_metadata(auth_token)
        self._slots = asyncio.Semaphore(max_in_flight)
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   # gRPC's own reconnect backoff grows to 2 min: a restarted service would sit
                   # unused for a long time after it is SERVING again
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = pb_grpc.RewardModelStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_config(cls, cfg: RewardClientConfig) -> RewardClient:
        return cls(cfg.address, max_in_flight=cfg.max_in_flight, timeout_s=cfg.timeout_s, retries=cfg.retries,
                   backoff_s=cfg.backoff_s, batch_size=cfg.batch_size,
                   auth_token=read_secret(cfg.auth_token_file, "client.auth_token_file"),
                   tls_ca=read_file(cfg.tls_ca_file, "client.tls_ca_file") if cfg.tls_ca_file else None)

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * 2**attempt * random.uniform(0.5, 1.5)

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until the service's health check says SERVING; TimeoutError after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        last = "no answer"
        while loop.time() < deadline:
            try:
                resp = await self._health.Check(request, timeout=2.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as e:
                last = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0)))
        raise TimeoutError(f"reward service at {self.address} not SERVING after {timeout_s:.0f} s ({last})")

    async def describe(self) -> ModelCard:
        return codec.card_from_pb(await self._stub.Describe(pb.DescribeRequest(), timeout=self.timeout_s,
                                                      metadata=self._metadata))

    async def _serves_batches(self) -> None:
        """Ask whether the service serves CritiqueBatchStream: a call half-closed before any write ends
        OK on one that does and UNIMPLEMENTED on one that does not (a plugged-in or older reward
        model). Asked this way, not by the first batch: grpc-python can report a write that races an
        UNIMPLEMENTED answer as INTERNAL (grpc/grpc#36066). Any other outcome (the service is down)
        leaves the answer as it was; the stream itself then meets the failure and retries."""
        call = self._stub.CritiqueBatchStream(metadata=self._metadata, timeout=self.timeout_s)
        try:
            await call.done_writing()
        except Exception:  # the call already ended (the status below says how); never raises there
            pass
        code = await call.code()
        if code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED):
            served = code == grpc.StatusCode.OK
            if not served and self.batches_served:
                log.info("%s does not serve CritiqueBatchStream: one sample a message (CritiqueStream)",
                         self.address)
            self.batches_served = served

    async def critique(self, sample: Sample) -> Critique:
        """One critique (unary call, retried). Raises CritiqueError when it fails for good."""
        request = codec.critique_request(sample)
        async with self._slots:
            for attempt in range(self.retries + 1):
                try:
                    resp = await self._stub.Critique(request, timeout=self.timeout_s, metadata=self._metadata)
                    return codec.critique_from_pb(resp)
                except grpc.aio.AioRpcError as e:
                    if e.code() not in RETRYABLE or attempt == self.retries:
                        raise CritiqueError(e.code().name, e.details() or "") from e
                    await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def stream(self, samples: Iterable[Sample] | AsyncIterable[Sample]) -> AsyncIterator[Result]:
        """Critique every sample over CritiqueStream; yields one Result per sample, as they finish."""
        run = _StreamRun(self, _aiter(samples))
        driver = asyncio.create_task(run.drive())
        try:
            while True:
                item = await run.out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                run.window.release()
                yield item
            await driver
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)


class _StreamRun:
    """State of one `RewardClient.stream` call, across reconnects."""

    def __init__(self, client: RewardClient, source: AsyncIterator[Sample]):
        self.c = client
        self.source = source
        self.window = asyncio.Semaphore(client.max_in_flight)  # released when the caller takes a result
        self.ready: asyncio.Queue[tuple[Sample, int] | None] = asyncio.Queue()  # (sample, attempt) to send
        self.out: asyncio.Queue[Result | BaseException | None] = asyncio.Queue()
        self.unfinished = 0
        self.source_done = False
        self._progress = False
        """Whether the current session got any answer (a session that did resets the failure count)."""

    def _finish(self, result: Result) -> None:
        self.out.put_nowait(result)
        self.unfinished -= 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.source_done and self.unfinished == 0:
            self.ready.put_nowait(None)  # tells the sender to half-close the stream

    async def _feed(self) -> None:
        try:
            async for sample in self.source:
                await self.window.acquire()
                self.unfinished += 1
                self.ready.put_nowait((sample, 0))
        except Exception as e:  # the caller's source broke: the caller must hear of it
            self.out.put_nowait(e)
            return
        self.source_done = True
        self._maybe_close()

    async def _retry_later(self, sample: Sample, attempt: int) -> None:
        await asyncio.sleep(self.c._delay(attempt - 1))
        self.ready.put_nowait((sample, attempt))

    def _settle(self, sample: Sample, attempt: int, code: str, message: str, tasks: set) -> None:
        if code in RETRYABLE_NAMES and attempt < self.c.retries:
            task = asyncio.create_task(self._retry_later(sample, attempt + 1))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            self._finish(Result(sample, error=CritiqueError(code, message)))

    async def drive(self) -> None:
        tasks: set[asyncio.Task] = set()
        feeder = asyncio.create_task(self._feed())
        failures = 0
        try:
            while True:
                sent: dict[str, tuple[Sample, int]] = {}
                try:
                    if await self._session(sent, tasks):
                        break
                except grpc.aio.AioRpcError as e:
                    if e.code() not in RETRYABLE | {grpc.StatusCode.CANCELLED}:
                        raise CritiqueError(e.code().name, e.details() or "") from e
                    code, message = "UNAVAILABLE", f"{e.code().name}: {e.details()}"
                except _Broken as e:
                    code, message = e.code, e.message
                failures = failures + 1 if not self._progress else 1
                if failures > self.c.retries:
                    raise CritiqueError(code, f"stream failed {failures} times in a row: {message}")
                log.warning("critique stream to %s broke (%s: %s); resending %d in flight",
                            self.c.address, code, message, len(sent))
                for sample, attempt in sent.values():
                    self._settle(sample, attempt, code, message, tasks)
                if self.source_done and self.unfinished == 0:  # it broke after the last answer
                    break
                await asyncio.sleep(self.c._delay(failures - 1))
            self.out.put_nowait(None)
        except Exception as e:
            self.out.put_nowait(e)
        finally:
            for task in [feeder, *tasks]:
                task.cancel()

    def _take(self, resp: pb.CritiqueResponse, sent: dict[str, tuple[Sample, int]], tasks: set) -> None:
        """One answer off the stream: finish its sample, or settle its error (retry or give up)."""
        sample, attempt = sent.pop(resp.sample_id, (None, 0))
        if sample is None:
            log.warning("answer for unknown sample_id %r ignored", resp.sample_id)
        elif resp.HasField("error"):
            self._settle(sample, attempt, resp.error.code, resp.error.message, tasks)
        else:
            try:
                self._finish(Result(sample, critique=codec.critique_from_pb(resp)))
            except ValueError as e:
                self._finish(Result(sample, error=CritiqueError("INVALID_RESPONSE", str(e))))

    def _request(self, item: tuple[Sample, int], sent: dict[str, tuple[Sample, int]]) -> pb.CritiqueRequest | None:
        """The request for a ready item, now counted as sent; None when it was answered with an error
        instead (a duplicate id in flight, a sample that cannot be encoded or would exceed the
        message limit: sent, it would break the whole stream)."""
        sample = item[0]
        why = ""
        if sample.sample_id in sent:
            why = "duplicate sample_id in flight"
        else:
            try:
                request = codec.critique_request(sample)
            except (TypeError, ValueError) as e:  # e.g. a field that is not a string
                why = f"unencodable sample: {e}"
            else:
                if request.ByteSize() > self.c.max_message_bytes - BATCH_FRAMING_BYTES:
                    why = f"request of {request.ByteSize()} bytes exceeds the message limit"
        if why:
            self._finish(Result(sample, error=CritiqueError("INVALID_ARGUMENT", why)))
            return None
        sent[sample.sample_id] = item
        return request

    async def _session(self, sent: dict[str, tuple[Sample, int]], tasks: set) -> bool:
        """One stream call (CritiqueBatchStream, or CritiqueStream when batches are off or not served);
        True when everything is answered and the stream closed cleanly."""
        if self.c.batch_size > 1:
            await self.c._serves_batches()
        batched = self.c.batch_size > 1 and self.c.batches_served
        rpc = self.c._stub.CritiqueBatchStream if batched else self.c._stub.CritiqueStream
        call = rpc(metadata=self.c._metadata)
        loop = asyncio.get_running_loop()
        last_answer = loop.time()
        self._progress = False

        most = self.c.batch_size if batched else 1

        async def write(batch: list[pb.CritiqueRequest]) -> None:
            await call.write(pb.CritiqueBatch(requests=batch) if batched else batch[0])

        async def send() -> None:
            """Whatever is ready goes out now, `most` items a message at most and within the message
            limit: nothing waits for a batch to fill, so a lone sample is not held back."""
            batch: list[pb.CritiqueRequest] = []
            size, end = 0, False
            while not end:
                item = await self.ready.get()
                while True:
                    if item is None:
                        end = True
                        break
                    if (request := self._request(item, sent)) is not None:
                        n = request.ByteSize() + BATCH_FRAMING_BYTES
                        if batch and size + n > self.c.max_message_bytes:
                            await write(batch)
                            batch, size = [], 0
                        batch.append(request)
                        size += n
                        if len(batch) >= most:
                            await write(batch)
                            batch, size = [], 0
                    if self.ready.empty():
                        break
                    item = self.ready.get_nowait()
                if batch:
                    await write(batch)
                    batch, size = [], 0
            await call.done_writing()

        async def watchdog() -> None:
            while not (sent and loop.time() - last_answer > self.c.timeout_s):
                await asyncio.sleep(min(self.c.timeout_s, 1.0))
            log.warning("no answer for %.0f s, %d in flight: reconnecting", self.c.timeout_s, len(sent))
            call.cancel()

        sender, dog = asyncio.create_task(send()), asyncio.create_task(watchdog())
        try:
            async for msg in call:
                last_answer = loop.time()
                self._progress = True
                if not batched:
                    self._take(msg, sent, tasks)
                    continue
                if msg.HasField("error"):  # a batch the service could not parse: resend what is in flight
                    raise _Broken("UNAVAILABLE", f"a batch was rejected whole: {msg.error.code}: {msg.error.message}")
                for resp in msg.responses:
                    self._take(resp, sent, tasks)
            if sender.done() and not sender.cancelled() and sender.exception() is None and not sent:
                return True
            raise _Broken("UNAVAILABLE", "stream ended before every sample was answered")
        except grpc.aio.AioRpcError as e:
            if batched and e.code() == grpc.StatusCode.UNIMPLEMENTED:  # swapped for an older service since asked
                raise _Broken("UNAVAILABLE", "CritiqueBatchStream is no longer served") from e
            raise
        except asyncio.CancelledError:
            if dog.done():  # our watchdog cancelled a stalled stream: retry, do not give up
                raise _Broken("DEADLINE_EXCEEDED", f"no answer within {self.c.timeout_s} s") from None
            raise
        finally:
            sender.cancel()
            dog.cancel()
            await asyncio.gather(sender, dog, return_exceptions=True)
            call.cancel()


class _Broken(Exception):
    """A stream session that ended early; what was in flight is resent (retryable `code`)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
