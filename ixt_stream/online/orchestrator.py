"""The orchestrator role (critique stage, `ixt serve orchestrator`): Sample -> critique -> ConditionedSample.

    PULL Sample (generators) -> CritiqueBatchStream (reward service, bounded in flight; CritiqueStream
        for a service without batches)
        -> hindsight relabelling: the prompt's positive prefix is *replaced* by the fresh critique
           of what was actually generated (FCP-style) -> PUSH ConditionedSample (learner)

One asyncio task feeds samples from ZeroMQ into the reward client's stream; the results loop
conditions and pushes. When the learner is slow the PUSH blocks, the stream stops pulling, the
samples socket fills and the generators block: back-pressure end to end, nothing dropped. A
critique that fails for good (after the client's retries) is dropped with reason
`critique_failed`; a sample too long for `condition.max_seq_len` with `too_long`; under
`condition.leak_policy=drop`, one whose critique gives the answer away with `feedback_leak` (under
the other policies leaks are only counted: `critique/leak_fraction`); under `condition.truncated=drop`,
a response cut at the token limit with `truncated`. All go to the ledger,
so no sample is trained without a critique or lost silently. A sample already stale
(`batch.staleness`: the learner would drop it, whatever comes next) is dropped before its critique
with reason `stale_before_critique`, so no critique is paid for a sample that cannot be trained;
the newest version comes from the learner's weight announcements (a restarted orchestrator starts
checking at the next one; the learner enforces the bound in any case). When the reward service
stays down through every retry (a crash and restart), the stream ends with `CritiqueError`: the
orchestrator waits for the service's health to say SERVING again (up to `client.ready_timeout_s`)
and opens a new stream that first resends every sample taken off the socket but not yet answered.
The first two critiqued samples of each weight version, with their critiques, go to
`run_dir/critiques.jsonl` (`report.SampleLog`: bounded; the run report's examples).

Left out: re-critiquing with a second reward model, critique caching across samples.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path

from ixt_stream import models
from ixt_stream.batch.staleness import is_stale
from ixt_stream.condition.format import Conditioner, Rejected
from ixt_stream.config import IxtConfig
from ixt_stream.critique.client import RETRYABLE_NAMES, CritiqueError, RewardClient
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.report import SampleLog
from ixt_stream.stream import sockets
from ixt_stream.stream.sockets import asend_until_stopped
from ixt_stream.types import Sample

log = logging.getLogger(__name__)
NAME = "orchestrator"


async def run(cfg: IxtConfig, stop: asyncio.Event) -> dict:
    """Critique and condition until `stop` is set; returns the final counters."""
    run_dir = cfg.run.run_dir
    conditioner = Conditioner.from_config(models.load_tokenizer(models.resolve(cfg.model)), cfg.condition, cfg.run.seed)
    ledger = Ledger(Path(run_dir) / "ledger.sqlite")
    samples = sockets.receiver(cfg.stream, "samples", cfg.run.run_id)
    out = sockets.sender(cfg.stream, "conditioned", cfg.run.run_id)
    weights = sockets.receiver(cfg.stream, "weights", cfg.run.run_id)
    newest = [0]
    """The newest weight version announced by the learner (0 until the first announcement)."""
    sink = MetricsSink.from_config(cfg, NAME)
    examples = SampleLog(run_dir)
    counts = {"received": 0, "conditioned": 0, "critique_failed": 0, "too_long": 0, "feedback_leak": 0, "truncated": 0,
              "feedback_leaks": 0, "stream_restarts": 0, "stale_before_critique": 0}
    latency_ms: deque[float] = deque(maxlen=256)
    scores: deque[float] = deque(maxlen=256)
    started = time.perf_counter()

    def report(elapsed: float) -> None:
        lat = sorted(latency_ms)
        metrics = {
            **{f"orchestrator/{k}": v for k, v in counts.items()},
            "orchestrator/pending": len(pending),
            "orchestrator/critiques_per_s": counts["conditioned"] / elapsed,
            "critique/latency_ms_p50": lat[len(lat) // 2],
            "critique/score_mean": sum(scores) / len(scores),
            "critique/leak_fraction": counts["feedback_leaks"] / max(counts["conditioned"], 1),
            "orchestrator/rejected_frames": sum(samples.rejects.values()),
        }
        sink.log(metrics, step=counts["conditioned"])
        sink.status(metrics)

    pending: dict[str, Sample] = {}
    """Samples taken off the socket and not yet answered: what a new stream sends again."""
    receiving: list[asyncio.Task] = []
    """The one outstanding socket read. It outlives a torn-down stream (cancelling it could lose
    a frame it already took), and the next stream's `incoming` picks it up."""

    async def incoming():
        for sample in list(pending.values()):  # what a broken stream held
            yield sample
        while not stop.is_set():
            if not receiving:
                receiving.append(asyncio.ensure_future(samples.arecv()))
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait({receiving[0], halt}, return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if not receiving[0].done():
                return  # stopping
            sample = receiving.pop().result()
            counts["received"] += 1
            newest[0] = max([newest[0], *(wv.version for wv in weights.drain())])
            if is_stale(sample.weight_version, newest[0], cfg.stream.max_version_lag):
                counts["stale_before_critique"] += 1
                ledger.dropped([(sample.sample_id, "stale_before_critique")])
                continue
            pending[sample.sample_id] = sample
            yield sample

    async def serving() -> bool:
        """Wait until the reward service is SERVING again; False if stopped meanwhile."""
        ready = asyncio.ensure_future(client.wait_ready(cfg.client.ready_timeout_s))
        halt = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if not ready.done():
            ready.cancel()
            return False
        ready.result()  # TimeoutError: the service is gone for good
        return True

    client = RewardClient.from_config(cfg.client)
    try:
        last_report = 0.0
        while await serving():
            log.info("reward service %s is SERVING; critiquing (%d pending)", cfg.client.address, len(pending))
            try:
                async for result in client.stream(incoming()):
                    sid = result.sample.sample_id
                    pending.pop(sid, None)
                    if result.error is not None:
                        counts["critique_failed"] += 1
                        ledger.dropped([(sid, "critique_failed")])
                        log.warning("critique of %s failed for good: %s", sid, result.error)
                        continue
                    try:
                        conditioned = conditioner.condition(result.sample, result.critique)
                    except Rejected as e:
                        counts[e.reason] += 1
                        ledger.dropped([(sid, e.reason)])
                        log.warning("%s", e)
                        continue
                    counts["feedback_leaks"] += conditioned.feedback_leaked
                    ledger.critiqued([sid])
                    if not await asend_until_stopped(out, conditioned, stop):
                        continue  # stopping: it stays 'critiqued' (in flight) in the ledger
                    counts["conditioned"] += 1
                    examples.add(result.sample, result.critique)
                    latency_ms.append(result.critique.latency_ms)
                    scores.append(result.critique.score)
                    if time.perf_counter() - last_report > 2.0:
                        last_report = time.perf_counter()
                        report(last_report - started)
                break  # the samples socket was closed by a stop
            except CritiqueError as e:
                if e.code not in RETRYABLE_NAMES:
                    raise  # e.g. UNAUTHENTICATED: waiting does not fix it
                counts["stream_restarts"] += 1
                log.warning("reward stream failed for good (%s); %d samples pending; waiting for %s",
                            e, len(pending), cfg.client.address)
    finally:
        for task in receiving:
            task.cancel()
        await client.close()
        sink.status({**{f"orchestrator/{k}": v for k, v in counts.items()},
                     "orchestrator/rejects": dict(samples.rejects)})
        sink.close()
        samples.close()
        weights.close()
        out.close()
        ledger.close()
    return counts


def main(cfg: IxtConfig) -> int:
    """The role's entry point: logging -> the critique stage under uvloop -> stop on SIGTERM/SIGINT."""
    import signal

    import uvloop

    from ixt_stream import logs

    logs.setup(cfg.run.log_level, NAME)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        counts = await run(cfg, stop)
        log.info("stopped: %s", counts)

    uvloop.run(serve())
    return 0
