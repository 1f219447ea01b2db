"""A critic's CPU-bound judging in worker processes: off the event loop, bounded, stoppable.

The verifier judges on the CPU (answer extraction, reasoning-gym scorers, some of which parse
with sympy). Run on the server's event loop, one costly request would stall every other call and
the health check, and its caller's deadline could not fire. `IsolatedBackend` wraps any backend
class and runs its `critique` in `workers` spawned processes instead: the event loop only waits on
a pipe (read readiness on the loop itself, no thread hop). Concurrent calls are batched: the
samples queued while the workers were busy (all items of a `CritiqueBatchStream` message, say) go
to an idle worker as one pipe message and their answers come back as one, so the pipe round trip
is paid per batch, not per critique (`bench/reward.py`, batched stream, shared 2-core machine:
1,306 critiques/s with one pipe message per critique, 3,209-5,886/s batched, 1.6-2.2x the HTTP/JSON
peer in the same runs). The worker marks in shared memory which item it is judging
and since when; that is how one item is held to `timeout_s` inside a batch and how the item that
killed or hung a worker is told apart from its batch mates. A critique that takes longer than
`timeout_s` gets its worker killed (the work stops there) and a fresh worker started in the
background; that item is answered INVALID_ARGUMENT ("too costly"), an item whose worker dies
under it UNAVAILABLE (retryable), and the rest of its batch is queued again and answered as usual.
A batch whose callers were all cancelled (or passed their deadlines) has its worker killed too, once
the item being judged has run `CANCEL_GRACE_S` (a respawn costs seconds; cheap work is left to
finish); a batch with some callers left runs on (each item is still bounded by `timeout_s`).
Left out: per-task worker pools, work stealing, keeping a killed worker's warm scorer caches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection

from ixt_stream import lazy
from ixt_stream.critique.backend import BackendUnavailable, InvalidRequest
from ixt_stream.types import Critique, ModelCard, Sample

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0
"""Longest wait for a worker to build its backend (importing reasoning-gym takes seconds)."""
CANCEL_GRACE_S = 0.5
"""A batch whose callers all gave up has its worker killed once the item being judged has taken this
long: a respawn costs seconds, so cheap work is left to finish."""
MAX_BATCH = 256
"""Most samples sent to a worker in one pipe message (queued samples are split over idle workers)."""


def _serve(conn: Connection, progress, backend_path: str, kwargs: dict) -> None:
    """Worker process: build the backend, send its card, then judge batches of samples until the
    pipe closes; `progress` = [index of the item being judged, time.monotonic() it started]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    backend = lazy.resolve(backend_path)(**kwargs)
    loop = asyncio.new_event_loop()
    conn.send(backend.card())
    while True:
        try:
            samples = conn.recv()
        except (EOFError, OSError):
            return
        answers = []
        for i, sample in enumerate(samples):
            progress[1] = time.monotonic()  # written before the index: the parent reads index, then time
            progress[0] = i
            try:
                answers.append(("ok", loop.run_until_complete(backend.critique(sample))))
            except InvalidRequest as e:
                answers.append(("invalid", str(e)))
            except BackendUnavailable as e:
                answers.append(("unavailable", str(e)))
            except Exception as e:  # a backend bug fails one item, not the worker
                answers.append(("error", f"{type(e).__name__}: {e}"))
        progress[0] = len(samples)
        conn.send(answers)


class _Worker:
    def __init__(self, ctx, backend_path: str, kwargs: dict):
        self.conn, child = ctx.Pipe()
        self.progress = ctx.RawArray("d", 2)
        self.proc = ctx.Process(target=_serve, args=(child, self.progress, backend_path, kwargs), daemon=True,
                                name="ixt-judge")
        self.proc.start()
        child.close()

    def ready(self) -> ModelCard:
        """Block until the worker has built its backend; its card."""
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"judge worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(f"judge worker exited while building its backend (exit code "
                               f"{self.proc.exitcode}; see the log above)") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


_Item = tuple[Sample, asyncio.Future]


def _settle(futures: list[asyncio.Future], error: Exception) -> None:
    """`error` for each of `futures` not yet answered (or cancelled)."""
    for f in futures:
        if not f.done():
            f.set_exception(error)


class IsolatedBackend:
    """A Backend that runs `backend_path(**kwargs).critique` in worker processes.

    Args:
        backend_path: "module:Class" of a backend whose constructor takes `kwargs` (picklable).
        workers: processes, i.e. batches judged at once; further calls queue for the next batch.
        timeout_s: longest time one critique may take before its worker is killed.
    """

    def __init__(self, backend_path: str, kwargs: dict | None = None, *, workers: int = 1, timeout_s: float = 30.0):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._spec = (backend_path, dict(kwargs or {}))
        self.timeout_s = timeout_s
        self._workers = [_Worker(self._ctx, *self._spec) for _ in range(workers)]
        self._card = [w.ready() for w in self._workers][0]
        self._idle = list(self._workers)
        self._pending: collections.deque[_Item] = collections.deque()
        self._runs: set[asyncio.Task] = set()
        self._dispatch_due = False
        self._closed = False
        self.batches = 0
        """Batches sent to workers so far (one pipe message each way)."""
        self.replaced = 0
        """Workers killed and replaced so far (a request over the limit, a cancelled call, a crash)."""

    def card(self) -> ModelCard:
        return self._card

    async def critique(self, sample: Sample) -> Critique:
        if self._closed:
            raise BackendUnavailable("critic is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((sample, future))
        self._kick()
        return await future  # cancelling the caller cancels the future: its batch drops the answer

    def _kick(self) -> None:
        """Dispatch once the calls ready on this loop iteration have queued (one batch, not many)."""
        if not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Split the queued samples whose callers still wait over the idle workers."""
        self._dispatch_due = False
        self._pending = collections.deque(item for item in self._pending if not item[1].done())
        while self._idle and self._pending:
            size = min(MAX_BATCH, math.ceil(len(self._pending) / len(self._idle)))
            batch = [self._pending.popleft() for _ in range(size)]
            self.batches += 1
            run = asyncio.create_task(self._run(self._idle.pop(), batch))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)

    def _replace(self, worker: _Worker, why: str) -> None:
        """Kill `worker` now; start its successor on a thread and make it idle once it is ready."""
        log.info("replacing judge worker %d: %s", worker.proc.pid, why)
        worker.kill()
        self._workers.remove(worker)
        self.replaced += 1
        loop = asyncio.get_running_loop()

        def start() -> None:
            fresh = _Worker(self._ctx, *self._spec)
            try:
                fresh.ready()
            except RuntimeError:
                log.exception("a replacement judge worker failed to start")
                return
            if self._closed:
                fresh.kill()
                return
            self._workers.append(fresh)
            loop.call_soon_threadsafe(self._idle_again, fresh)

        threading.Thread(target=start, name="judge-respawn", daemon=True).start()

    def _idle_again(self, worker: _Worker) -> None:
        self._idle.append(worker)
        self._kick()

    async def _run(self, worker: _Worker, batch: list[_Item]) -> None:
        """Judge `batch` on `worker`: answer every item, or fail the one at fault and queue the rest again."""
        futures = [f for _, f in batch]
        worker.progress[1], worker.progress[0] = time.monotonic(), 0
        wake = asyncio.Event()
        fd = worker.conn.fileno()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, wake.set)
        # uvloop's add_reader made the pipe non-blocking: a batch over the pipe's buffer would then fail
        # mid-message. The loop only polls it for readiness; the reads and writes block.
        os.set_blocking(fd, True)
        for f in futures:
            f.add_done_callback(lambda _: wake.set())
        try:
            worker.conn.send([s for s, _ in batch])  # an idle worker is blocked reading: this never waits long
            while not worker.conn.poll():
                index, started = int(worker.progress[0]), worker.progress[1]
                left = started + self.timeout_s - time.monotonic()
                if all(f.cancelled() for f in futures):  # every caller gave up: stop costly work
                    grace_left = started + CANCEL_GRACE_S - time.monotonic()
                    if grace_left <= 0:
                        loop.remove_reader(fd)
                        self._replace(worker, f"the callers of all {len(batch)} items gave up")
                        return
                    left = min(left, grace_left)
                if left <= 0:
                    loop.remove_reader(fd)
                    self._replace(worker, f"item {index} of {len(batch)} took over {self.timeout_s:g} s")
                    self._fail_one(batch, index, InvalidRequest(
                        f"judging took over {self.timeout_s:g} s and was stopped: the request is too costly"))
                    return
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    pass
            answers = worker.conn.recv()
        except (EOFError, OSError):
            index = int(worker.progress[0])
            loop.remove_reader(fd)
            if self._closed:
                _settle(futures, BackendUnavailable("critic is shutting down"))
                return
            log.error("judge worker %d died (exit code %s) on item %d of a batch of %d", worker.proc.pid,
                      worker.proc.exitcode, index, len(batch))
            self._replace(worker, "it died")
            self._fail_one(batch, index, BackendUnavailable(
                f"the judge worker died (exit code {worker.proc.exitcode}) while judging this sample; retry"))
            return
        except asyncio.CancelledError:  # aclose: the worker is gone with it
            loop.remove_reader(fd)
            _settle(futures, BackendUnavailable("critic is shutting down"))
            raise
        loop.remove_reader(fd)
        self._idle_again(worker)
        errors = {"invalid": InvalidRequest, "unavailable": BackendUnavailable, "error": RuntimeError}
        for f, (status, value) in zip(futures, answers, strict=True):
            if f.done():
                continue
            if status == "ok":
                f.set_result(value)
            else:
                f.set_exception(errors[status](value))

    def _fail_one(self, batch: list[_Item], index: int, error: Exception) -> None:
        """Item `index` of `batch` gets `error`; the others (their answers went with the worker) queue
        again, first in line. An index past the batch (the worker died answering) fails them all."""
        if index >= len(batch):
            _settle([f for _, f in batch], error)
            return
        _settle([batch[index][1]], error)
        self._pending.extendleft(reversed(batch[:index] + batch[index + 1:]))
        self._kick()

    async def aclose(self) -> None:
        self._closed = True
        for w in list(self._workers):
            w.kill()
        for run in list(self._runs):
            run.cancel()
        _settle([f for _, f in self._pending], BackendUnavailable("critic is shutting down"))
        self._pending.clear()
