"""Dynamic batching: concurrent single calls become one engine call.

An LLM engine is far cheaper per item on a batch than on one item at a time, but the server sees
one request per sample. `DynamicBatcher.submit` queues an item and waits; a single loop task takes
the first queued item, waits at most `wait_ms` for more (up to `max_batch_size`), and runs the
blocking batch function in one dedicated worker thread, so the event loop keeps accepting
requests (and the next batch fills) while the engine works. Items whose caller gave up (deadline,
cancellation) before their batch starts are dropped from it.
Left out: priorities, per-item token budgets, several engine threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class DynamicBatcher(Generic[T, R]):
    """Batches concurrent `submit(item)` calls into `fn(items) -> results` (same order, same length).

    Args:
        fn: blocking batch function; it runs only on this batcher's worker thread.
        max_batch_size: most items per call.
        wait_ms: how long to wait for more items after the first one arrives.
        executor: the single-thread executor to run `fn` on (one is made if omitted), so an engine
            that was built on that thread is only ever touched from it.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], max_batch_size: int = 32, wait_ms: float = 5.0,
                 executor: ThreadPoolExecutor | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1e3
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batcher")
        self.batch_sizes: list[int] = []
        """Size of every batch run so far (for metrics and tests)."""
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._loop_task: asyncio.Task | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        if self._closed:
            raise RuntimeError("critic is shut down")
        if self._loop_task is None:  # bound lazily to the loop the server runs on
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [(item, fut) for item, fut in batch if not fut.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)} items")
            except Exception as e:  # one failed engine call fails its batch, not the batcher
                log.exception("batch of %d failed", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def aclose(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("critic is shutting down"))
        self.executor.shutdown(wait=False, cancel_futures=True)
