"""The orchestrator drops samples that are already stale before paying for their critique.

In-process, over real sockets and a real gRPC reward server: this test plays the generator
(PUSH samples, ledgered first), the learner (PUB a weight version, PULL what comes out) and
counts the critiques the reward backend was asked for. The ledger stays conserved throughout, and
the run report's sample log keeps the first two fresh samples of each version with their critiques.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.online import orchestrator
from ixt_stream.report import SAMPLE_LOG
from ixt_stream.stream import sockets
from ixt_stream.types import WeightVersion
from tests.conftest import free_port
from tests.integration.test_reward_service import GOOD, ScriptedBackend, sample, serving

RUN = "orch-stale"


@pytest.mark.timeout(120)
def test_stale_samples_are_dropped_before_their_critique_and_the_ledger_stays_conserved(tmp_path, tiny_model_dir):
    ports = [free_port() for _ in range(4)]
    cfg = load(["profile=smoke", f"run.run_dir={tmp_path}", f"run.run_id={RUN}", "run.tensorboard=false",
                f"reward.port={ports[0]}", f"client.address=127.0.0.1:{ports[0]}",
                f"stream.samples_port={ports[1]}", f"stream.conditioned_port={ports[2]}",
                f"stream.weights_port={ports[3]}", "stream.max_version_lag=1", "stream.linger_ms=0"])
    backend = ScriptedBackend()
    # versions 0..3, three samples each; with version 3 announced and a lag of 1, 0 and 1 are stale
    samples = [sample(f"g0-{v}-{i}", GOOD, weight_version=v, generator_id="generator-0")
               for v in range(4) for i in range(3)]
    fresh = {s.sample_id for s in samples if s.weight_version >= 2}
    ledger = Ledger(tmp_path / "ledger.sqlite")

    async def main():
        async with serving(backend, ports[0]):
            stop = asyncio.Event()
            push = sockets.sender(cfg.stream, "samples", RUN)
            announce = sockets.sender(cfg.stream, "weights", RUN)
            pulled = sockets.receiver(cfg.stream, "conditioned", RUN)
            task = asyncio.create_task(orchestrator.run(cfg, stop))
            try:
                await asyncio.sleep(1.0)  # the orchestrator's SUB reaches the PUB (slow joiner)
                for _ in range(3):  # PUB may drop before the subscription lands: say it again
                    announce.send(WeightVersion(version=3, step=3))
                    await asyncio.sleep(0.1)
                ledger.generated(samples)  # as a generator does, before sending
                for s in samples:
                    assert push.send(s, timeout_ms=5000)
                got, deadline = [], time.monotonic() + 60
                while len(got) < len(fresh) and time.monotonic() < deadline:
                    got.extend(c.sample.sample_id for c in pulled.drain())
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # nothing else comes
                got.extend(c.sample.sample_id for c in pulled.drain())
            finally:
                stop.set()
                counts = await asyncio.wait_for(task, 30)
                for end in (push, announce, pulled):
                    end.close()
        return got, counts

    got, counts = asyncio.run(main())
    assert sorted(got) == sorted(fresh)
    assert backend.calls == len(fresh)  # no critique paid for a stale sample
    assert counts["received"] == len(samples) and counts["stale_before_critique"] == len(samples) - len(fresh)
    summary = ledger.summary()
    assert summary["conserved"] and summary["dropped_by_reason"] == {"stale_before_critique": 6}
    assert summary["in_flight"] == len(fresh)  # critiqued, on their way to the learner
    examples = [json.loads(line) for line in (tmp_path / SAMPLE_LOG).read_text().splitlines()]
    assert sorted((r["weight_version"], r["response"]) for r in examples) == [(2, GOOD)] * 2 + [(3, GOOD)] * 2
    assert all(r["critique"] and r["sample_id"] in fresh for r in examples)  # two per version, with critiques
    ledger.trained(sorted(fresh), step=4)
    summary = ledger.summary()
    assert summary["conserved"] and summary["in_flight"] == 0 and summary["trained_twice"] == 0
    ledger.close()
