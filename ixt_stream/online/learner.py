"""The learner role: consume ConditionedSamples, train, publish weight versions.

    prefetch thread: PULL ConditionedSample + PULL WeightAck -> bounded queue
    main loop:       fresh samples (stale / already-trained ones dropped, ledgered)
                     -> token-budget groups (batch.pack) -> collate -> DeepSpeed step
                     -> every `sync_every` steps: full weights -> publish version v+1

The receiver runs in its own thread so the optimizer step never waits on socket I/O it could
have overlapped; the queue is bounded, so a slow learner pushes back on the whole pipeline
instead of buffering without limit. Off-policy control: a sample produced by weights more than
`max_version_lag` versions behind the newest published one is dropped with reason `stale`.
Resume: with `learner.save_every`, DeepSpeed checkpoints go to `run_dir/checkpoints`; a restarted
learner loads the newest intact one (model, optimizer, step, skipped steps, torch RNG; the LR is
a function of the step; a corrupt or unfinished checkpoint is refused and the previous one used),
forgets ledger training events after that step (those updates were lost with the crash, and the
crashed process had consumed their samples: they are ledgered dropped, `rolled_back`, so nothing
is ever trained twice in the model), and continues the version count from `weights/LATEST`, so
the generators, which keep serving their last weights meanwhile, never see a version go back.
With no intact checkpoint it refuses to start, unless `learner.fresh_on_corrupt_checkpoint`.
Left out: several learner ranks (ZeRO across processes) in the online loop; multi-epoch replay.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import zmq

from ixt_stream import models
from ixt_stream.config import IxtConfig
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.online.supervisor import write_status
from ixt_stream.stream import sockets
from ixt_stream.types import ConditionedSample, WeightAck

log = logging.getLogger(__name__)
NAME = "learner"


class Prefetcher(threading.Thread):
    """Owns the learner's inbound sockets; fills `samples` (bounded) and records acks."""

    def __init__(self, cfg: IxtConfig, maxsize: int, stop: threading.Event):
        super().__init__(name="prefetch", daemon=True)
        self.cfg, self.stop = cfg, stop
        self.samples: queue.Queue[ConditionedSample] = queue.Queue(maxsize=maxsize)
        self.generator_versions: dict[str, int] = {}
        self.apply_seconds: dict[str, float] = {}
        self.rejects: Counter[str] = Counter()
        self.ready = threading.Event()

    def run(self) -> None:
        run_id = self.cfg.run.run_id
        conditioned = sockets.receiver(self.cfg.stream, "conditioned", run_id)
        acks = sockets.receiver(self.cfg.stream, "acks", run_id)
        poller = zmq.Poller()
        poller.register(conditioned.sock, zmq.POLLIN)
        poller.register(acks.sock, zmq.POLLIN)
        self.ready.set()
        try:
            while not self.stop.is_set():
                ready = dict(poller.poll(200))
                if acks.sock in ready:
                    for ack in acks.drain():
                        self._ack(ack)
                if conditioned.sock in ready and not self.samples.full():
                    body = conditioned.recv(timeout_ms=0)
                    while body is not None and not self.stop.is_set():
                        try:
                            self.samples.put(body, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                elif self.samples.full():
                    time.sleep(0.01)  # let the trainer drain; ZeroMQ's HWM holds the rest upstream
                self.rejects = conditioned.rejects + acks.rejects
        finally:
            conditioned.close()
            acks.close()

    def _ack(self, ack: WeightAck) -> None:
        self.generator_versions[ack.generator_id] = ack.version
        self.apply_seconds[ack.generator_id] = ack.apply_seconds


def run(cfg: IxtConfig, stop: threading.Event) -> dict:
    """Train until `learner.max_steps` or `stop`; returns the final summary."""
    from ixt_stream.batch.collate import collate, pack
    from ixt_stream.update import checkpoint_integrity as integrity
    from ixt_stream.update.learner import Learner
    from ixt_stream.weights import publish

    run_dir, lc, sc = Path(cfg.run.run_dir), cfg.learner, cfg.stream
    model_dir = models.resolve(cfg.model)
    pad_id = models.load_tokenizer(model_dir).pad_token_id
    learner = Learner.from_config(model_dir, lc)
    ledger = Ledger(run_dir / "ledger.sqlite")
    publisher = publish.publisher(sc, str(run_dir), cfg.run.run_id)
    sink = MetricsSink.from_config(cfg, NAME)
    prefetch = Prefetcher(cfg, maxsize=lc.max_samples_per_batch, stop=stop)  # one batch ahead
    prefetch.start()
    prefetch.ready.wait()

    # -- resume -----------------------------------------------------------------------------------
    version, ckpt_dir = 0, run_dir / "checkpoints"
    if integrity.tags(ckpt_dir):
        try:
            step = learner.load_checkpoint(ckpt_dir)
        except integrity.CorruptCheckpoint as e:
            # getattr: the LearnerConfig field is being added by the config's owner
            if not lc.fresh_on_corrupt_checkpoint:
                raise
            log.error("%s; starting from the initial weights (learner.fresh_on_corrupt_checkpoint)", e)
            step = 0
        forgotten = ledger.untrain_after(step, drop_reason="rolled_back")
        latest = run_dir / "weights" / publish.LATEST
        version = json.loads(latest.read_text())["version"] if latest.exists() else 0
        log.info("resumed at step %d, weights v%d (%d later training events forgotten)", step, version, forgotten)

    drops: Counter[str] = Counter()
    staleness: Counter[int] = Counter()
    waited = {"s": 0.0}

    def drop_stale(samples: list[ConditionedSample]) -> list[ConditionedSample]:
        """The samples within `max_version_lag` of the newest version; the others are ledgered."""
        stale = [s for s in samples if version - s.sample.weight_version > sc.max_version_lag]
        if stale:
            drops["stale"] += len(stale)
            ledger.dropped([(s.sample.sample_id, "stale") for s in stale])
        return [s for s in samples if version - s.sample.weight_version <= sc.max_version_lag]

    def fresh():
        """Samples worth training on now, in arrival order; drops are ledgered."""
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                s = prefetch.samples.get(timeout=0.2)
            except queue.Empty:
                waited["s"] += time.perf_counter() - t0
                continue
            waited["s"] += time.perf_counter() - t0
            if not drop_stale([s]):
                continue
            if ledger.trained_ids([s.sample.sample_id]):
                drops["already_trained"] += 1  # a redelivery: it is in the model already
                continue
            yield s

    # -- train ------------------------------------------------------------------------------------
    started, busy, pushes, samples_trained = time.perf_counter(), 0.0, [], 0
    groups = pack(fresh(), lc.tokens_per_batch, lc.max_samples_per_batch)
    try:
        for group in groups:
            if learner.step >= lc.max_steps:
                break
            # a version may have been pushed since these were pulled: check the bound again
            group = drop_stale(group)
            if not group:
                continue
            for s in group:
                staleness[version - s.sample.weight_version] += 1
            t0 = time.perf_counter()
            metrics = learner.train_step(collate(group, pad_id))
            busy += time.perf_counter() - t0
            ids = [s.sample.sample_id for s in group]
            if metrics["train/applied"]:
                ledger.trained(ids, learner.step)
                samples_trained += len(group)
            else:
                drops["nonfinite_step"] += len(group)
                ledger.dropped([(i, "nonfinite_step") for i in ids])
            if metrics["train/applied"] and learner.step % sc.sync_every == 0:
                t0 = time.perf_counter()
                version += 1
                publisher.publish(learner.full_state_dict(), version, learner.step)
                pushes.append(time.perf_counter() - t0)
            if lc.save_every and metrics["train/applied"] and learner.step % lc.save_every == 0:
                learner.save_checkpoint(ckpt_dir)
            wall = time.perf_counter() - started
            scores = [s.critique.score for s in group if s.critique is not None]
            metrics.update({
                "weights/version": version,
                "weights/push_s": pushes[-1] if pushes else 0.0,
                "learner/busy_fraction": busy / wall,
                "learner/wait_s": waited["s"],
                "learner/samples_trained": samples_trained,
                "learner/samples_per_s": samples_trained / wall,
                "learner/queue_depth": prefetch.samples.qsize(),
                "critique/score_mean": sum(scores) / max(len(scores), 1),
                "critique/feedback_tokens": sum(s.num_feedback_tokens for s in group) / len(group),
                **{f"drops/{k}": v for k, v in drops.items()},
                **{f"staleness/lag_{k}": v for k, v in sorted(staleness.items())},
                **{f"generators/{g}_version": v for g, v in prefetch.generator_versions.items()},
            })
            sink.log(metrics, step=learner.step)
            write_status(run_dir, NAME, {k: metrics[k] for k in (
                "train/step", "train/loss", "train/tokens_per_s", "weights/version", "learner/busy_fraction",
                "learner/samples_per_s", "learner/queue_depth")} | {"generators": prefetch.generator_versions})
            if lc.log_every and learner.step % lc.log_every == 0:
                log.info("step %d loss %.4f | %d samples, %.0f tok/s | v%d | busy %.0f%% | gens %s",
                         learner.step, metrics["train/loss"], samples_trained, metrics["train/tokens_per_s"],
                         version, 100 * busy / wall, prefetch.generator_versions)
            if learner.step >= lc.max_steps:
                break  # now, not when the next group is complete (no more samples may come)
        if learner.step > 0:
            learner.save_hf(run_dir / "final")
            if lc.save_every:
                learner.save_checkpoint(ckpt_dir)
    finally:
        stop.set()
        prefetch.join(timeout=5)
        wall = time.perf_counter() - started
        summary = {
            "done": learner.step >= lc.max_steps, "steps": learner.step, "skipped_steps": learner.skipped_steps,
            "samples_trained": samples_trained, "versions_pushed": version, "push_s": pushes,
            "busy_fraction": busy / wall if wall else 0.0, "wait_s": waited["s"], "wall_s": wall,
            "drops": dict(drops), "staleness": {str(k): v for k, v in sorted(staleness.items())},
            "generator_versions": prefetch.generator_versions, "apply_s": prefetch.apply_seconds,
            "rejected_frames": dict(prefetch.rejects),
        }
        (run_dir / "learner_summary.json").write_text(json.dumps(summary, indent=2))
        write_status(run_dir, NAME, summary)
        sink.close()
        publisher.close()
        ledger.close()
    return summary
