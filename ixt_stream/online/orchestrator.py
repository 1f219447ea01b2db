"""The orchestrator role (critique stage): Sample -> critique -> ConditionedSample.

    PULL Sample (generators) -> CritiqueStream (reward service, bounded in flight)
        -> hindsight relabelling: the prompt's positive prefix is *replaced* by the fresh critique
           of what was actually generated (FCP-style) -> PUSH ConditionedSample (learner)

One asyncio task feeds samples from ZeroMQ into the reward client's stream; the results loop
conditions and pushes. When the learner is slow the PUSH blocks, the stream stops pulling, the
samples socket fills and the generators block: back-pressure end to end, nothing dropped. A
critique that fails for good (after the client's retries) is dropped with reason
`critique_failed`; a sample too long for `condition.max_seq_len` with `too_long`. Both go to the
ledger, so no sample is trained without a critique or lost silently.
Left out: re-critiquing with a second reward model, critique caching across samples.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path

from ixt_stream import models
from ixt_stream.condition import Conditioner
from ixt_stream.config import IxtConfig
from ixt_stream.critique.client import RewardClient
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.online.supervisor import write_status
from ixt_stream.stream import sockets

log = logging.getLogger(__name__)
NAME = "orchestrator"


async def run(cfg: IxtConfig, stop: asyncio.Event) -> dict:
    """Critique and condition until `stop` is set; returns the final counters."""
    run_dir = cfg.run.run_dir
    conditioner = Conditioner.from_config(models.load_tokenizer(models.resolve(cfg.model)), cfg.condition, cfg.run.seed)
    ledger = Ledger(Path(run_dir) / "ledger.sqlite")
    samples = sockets.receiver(cfg.stream, "samples", cfg.run.run_id)
    out = sockets.sender(cfg.stream, "conditioned", cfg.run.run_id)
    sink = MetricsSink(run_dir, NAME, prometheus_port=cfg.run.metrics_port)
    counts = {"received": 0, "conditioned": 0, "critique_failed": 0, "too_long": 0}
    latency_ms: deque[float] = deque(maxlen=256)
    scores: deque[float] = deque(maxlen=256)
    started = time.perf_counter()

    async def incoming():
        while not stop.is_set():
            recv = asyncio.ensure_future(samples.arecv())
            halt = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({recv, halt}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                halt.cancel()
                return
            halt.cancel()
            counts["received"] += 1
            yield recv.result()

    async def push(body) -> bool:
        """Queue one frame, waiting at the HWM (never dropping) but noticing a stop."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(out.asend(body), timeout=0.5)
                return True
            except TimeoutError:
                continue
        return False

    client = RewardClient.from_config(cfg.client)
    try:
        await client.wait_ready()
        log.info("reward service %s is SERVING; critiquing", cfg.client.address)
        last_report = 0.0
        async for result in client.stream(incoming()):
            sid = result.sample.sample_id
            if result.error is not None:
                counts["critique_failed"] += 1
                ledger.dropped([(sid, "critique_failed")])
                log.warning("critique of %s failed for good: %s", sid, result.error)
                continue
            try:
                conditioned = conditioner.condition(result.sample, result.critique)
            except ValueError as e:
                counts["too_long"] += 1
                ledger.dropped([(sid, "too_long")])
                log.warning("%s", e)
                continue
            ledger.critiqued([sid])
            if not await push(conditioned):
                continue  # stopping: it stays 'critiqued' (in flight) in the ledger
            counts["conditioned"] += 1
            latency_ms.append(result.critique.latency_ms)
            scores.append(result.critique.score)
            if time.perf_counter() - last_report > 2.0:
                last_report = time.perf_counter()
                elapsed = last_report - started
                lat = sorted(latency_ms)
                metrics = {
                    **{f"orchestrator/{k}": v for k, v in counts.items()},
                    "orchestrator/critiques_per_s": counts["conditioned"] / elapsed,
                    "critique/latency_ms_p50": lat[len(lat) // 2],
                    "critique/score_mean": sum(scores) / len(scores),
                    "orchestrator/rejected_frames": sum(samples.rejects.values()),
                }
                sink.log(metrics, step=counts["conditioned"])
                write_status(run_dir, NAME, metrics)
    finally:
        await client.close()
        write_status(run_dir, NAME, {**{f"orchestrator/{k}": v for k, v in counts.items()},
                                     "orchestrator/rejects": dict(samples.rejects)})
        sink.close()
        samples.close()
        out.close()
        ledger.close()
    return counts
