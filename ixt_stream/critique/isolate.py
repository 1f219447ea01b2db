"""A critic's CPU-bound judging in worker processes: off the event loop, bounded, stoppable.

The verifier judges on the CPU (answer extraction, reasoning-gym scorers, some of which parse
with sympy). Run on the server's event loop, one costly request would stall every other call and
the health check, and its caller's deadline could not fire. `IsolatedBackend` wraps any backend
class and runs its `critique` in `workers` spawned processes instead: the event loop only waits on
a pipe (read readiness on the loop itself, no thread hop). A request that takes longer than
`timeout_s`, or whose call is cancelled or passes its deadline, gets its worker killed (the work
stops there) and a fresh worker started in the background; the caller gets INVALID_ARGUMENT ("too
costly") for the time limit and nothing for a cancellation. A worker that dies on its own costs
one UNAVAILABLE (retryable) answer. Cost: a pipe round trip per critique (measured ~700 vs
~850-2000 critiques/s in-process for the verifier on a busy 2-core machine).
Left out: per-task worker pools, work stealing, keeping a killed worker's warm scorer caches.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from multiprocessing.connection import Connection

from ixt_stream import lazy
from ixt_stream.critique.backend import BackendUnavailable, InvalidRequest
from ixt_stream.types import Critique, ModelCard, Sample

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0
"""Longest wait for a worker to build its backend (importing reasoning-gym takes seconds)."""


def _serve(conn: Connection, backend_path: str, kwargs: dict) -> None:
    """Worker process: build the backend, send its card, then judge samples until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    backend = lazy.resolve(backend_path)(**kwargs)
    loop = asyncio.new_event_loop()
    conn.send(backend.card())
    while True:
        try:
            sample = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = ("ok", loop.run_until_complete(backend.critique(sample)))
        except InvalidRequest as e:
            answer = ("invalid", str(e))
        except BackendUnavailable as e:
            answer = ("unavailable", str(e))
        except Exception as e:  # a backend bug fails one item, not the worker
            answer = ("error", f"{type(e).__name__}: {e}")
        conn.send(answer)


async def _readable(conn: Connection) -> None:
    """Wait, on the event loop itself, until `conn` has data (or is closed)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class _Worker:
    def __init__(self, ctx, backend_path: str, kwargs: dict):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, backend_path, kwargs), daemon=True, name="ixt-judge")
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


class IsolatedBackend:
    """A Backend that runs `backend_path(**kwargs).critique` in worker processes.

    Args:
        backend_path: "module:Class" of a backend whose constructor takes `kwargs` (picklable).
        workers: processes, i.e. critiques judged at once; further calls wait for a free one.
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
        self._idle: asyncio.Queue[_Worker] | None = None
        self._closed = False
        self.replaced = 0
        """Workers killed and replaced so far (a request over the limit, a cancelled call, a crash)."""

    def card(self) -> ModelCard:
        return self._card

    def _queue(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:  # bound lazily to the loop the server runs on
            self._idle = asyncio.Queue()
            for w in self._workers:
                self._idle.put_nowait(w)
        return self._idle

    def _replace(self, worker: _Worker) -> None:
        """Kill `worker` now; start its successor on a thread and make it idle once it is ready."""
        worker.kill()
        self._workers.remove(worker)
        self.replaced += 1
        loop, idle = asyncio.get_running_loop(), self._queue()

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
            loop.call_soon_threadsafe(idle.put_nowait, fresh)

        threading.Thread(target=start, name="judge-respawn", daemon=True).start()

    async def critique(self, sample: Sample) -> Critique:
        if self._closed:
            raise BackendUnavailable("critic is shutting down")
        worker = await self._queue().get()
        try:
            worker.conn.send(sample)  # an idle worker is blocked reading: this never waits long
            await asyncio.wait_for(_readable(worker.conn), self.timeout_s)
            status, value = worker.conn.recv()
        except TimeoutError:
            self._replace(worker)
            raise InvalidRequest(f"judging took over {self.timeout_s:g} s and was stopped: the request is "
                                 "too costly") from None
        except asyncio.CancelledError:  # the call was cancelled or passed its deadline: stop the work
            self._replace(worker)
            raise
        except (EOFError, OSError) as e:
            log.error("judge worker %d died (exit code %s)", worker.proc.pid, worker.proc.exitcode)
            self._replace(worker)
            raise BackendUnavailable("the judge worker died; retry") from e
        self._idle.put_nowait(worker)
        if status == "ok":
            return value
        if status == "invalid":
            raise InvalidRequest(value)
        if status == "unavailable":
            raise BackendUnavailable(value)
        raise RuntimeError(value)

    async def aclose(self) -> None:
        self._closed = True
        for w in list(self._workers):
            w.kill()
