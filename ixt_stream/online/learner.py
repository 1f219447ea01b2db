"""The learner role (`ixt serve learner`): consume ConditionedSamples, train, publish weight versions.

    prefetch thread: PULL ConditionedSample + PULL WeightAck -> bounded queue
    main loop:       fresh samples (stale / already-trained ones dropped, ledgered)
                     -> token-budget groups (batch.pack) -> collate -> DeepSpeed step
                     -> every `sync_every` steps: full weights -> publish version v+1, with the
                        critique most often trained with label good at the best score
                        (the generators' prefix)
                     -> at the end: run_dir/final + ixt_condition.json (format + inference feedback)

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
A run that trained but has no intact checkpoint (corrupt, or never saved with the default
`learner.save_every=0`) is refused with a ConfigError saying what to do, unless
`learner.fresh_on_corrupt_checkpoint`: then every earlier training event is rolled back the same
way and the versions still continue from LATEST.
Several ranks (`learner.num_gpus > 1`, torchrun): rank 0 runs everything above; each step it splits
the group token-balanced across the ranks (`update.ranks`), which train data-parallel under
DeepSpeed and join its collectives (the ZeRO gather before a publish, checkpoints, the final save);
the other ranks (`follow`) open no socket and never touch the ledger. Resume is the same on every
rank; killing any rank ends the group (torchrun) and `ixt up` restarts it whole.
Left out: multi-epoch replay.
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
from ixt_stream.config import ConfigError, IxtConfig, LearnerConfig, StreamConfig
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.stream import sockets
from ixt_stream.types import ConditionedSample, Label, WeightAck
from ixt_stream.update.ranks import Ranks, shard
from ixt_stream.wire.codec import FrameLimits

log = logging.getLogger(__name__)
NAME = "learner"


class Prefetcher(threading.Thread):
    """Owns the learner's inbound sockets; fills `samples` (bounded) and records acks.

    Every ConditionedSample is validated at the socket (`codec.decode_frame` with `limits`): a
    frame no step could train on (empty, mask not matching the ids, ids outside the vocabulary,
    longer than a batch) is rejected, counted by reason and ledgered dropped (`invalid_frame`)."""

    def __init__(self, cfg: IxtConfig, maxsize: int, stop: threading.Event, limits: FrameLimits):
        super().__init__(name="prefetch", daemon=True)
        self.cfg, self.stop, self.limits = cfg, stop, limits
        self.samples: queue.Queue[ConditionedSample] = queue.Queue(maxsize=maxsize)
        self.generator_versions: dict[str, int] = {}
        self.apply_seconds: dict[str, float] = {}
        self.rejects: Counter[str] = Counter()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        """Why the thread could not start (e.g. a port already bound); the trainer raises it."""

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e
            self.stop.set()
            self.ready.set()

    def _run(self) -> None:
        run_id = self.cfg.run.run_id
        opened = [Ledger(Path(self.cfg.run.run_dir) / "ledger.sqlite")]  # its own connection: its own thread
        try:
            ledger = opened[0]
            conditioned = sockets.receiver(self.cfg.stream, "conditioned", run_id, limits=self.limits)
            opened.append(conditioned)
            acks = sockets.receiver(self.cfg.stream, "acks", run_id)
            opened.append(acks)
            poller = zmq.Poller()
            poller.register(conditioned.sock, zmq.POLLIN)
            poller.register(acks.sock, zmq.POLLIN)
            self.ready.set()
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
                if conditioned.rejected:
                    ledger.dropped([(sid, "invalid_frame") for sid, _ in conditioned.rejected])
                    conditioned.rejected.clear()
                self.rejects = conditioned.rejects + acks.rejects
        finally:
            for closable in reversed(opened):
                closable.close()

    def _ack(self, ack: WeightAck) -> None:
        self.generator_versions[ack.generator_id] = ack.version
        self.apply_seconds[ack.generator_id] = ack.apply_seconds


def resume(learner, ledger: Ledger | None, run_dir: Path, lc: LearnerConfig,
           ranks: Ranks | None = None) -> int:
    """Where a (re)started learner stands; returns the weight version to continue from.

    Every rank calls it (loading a checkpoint is collective); rank 0 alone holds the `ledger`
    (None elsewhere) and tells the others whether this run is new.

    A run that already trained resumes from its newest intact checkpoint; training events after it
    are forgotten (ledgered dropped, rolled_back) and versions continue after LATEST. With no
    checkpoint to resume from (none saved: learner.save_every=0, or all corrupt) it raises
    ConfigError: training the base weights again would leave the ledger counting lost samples as
    trained and restart the version count under the generators' feet.
    """
    from ixt_stream.update import checkpoint_integrity as integrity
    from ixt_stream.weights.base import LATEST

    ckpt_dir, latest = run_dir / "checkpoints", run_dir / "weights" / LATEST
    published = json.loads(latest.read_text())["version"] if latest.exists() else 0
    ranks = ranks or Ranks()
    trained_to = ledger.last_trained_step() if ledger else 0
    if not ranks.broadcast(bool(integrity.tags(ckpt_dir) or published or trained_to) if ranks.is_root else None):
        return 0  # a new run
    step = 0
    try:
        if not integrity.tags(ckpt_dir):
            raise integrity.CorruptCheckpoint(ckpt_dir, f"no checkpoint, but this run trained to step {trained_to} "
                                              f"and published v{published} (learner.save_every={lc.save_every})")
        step = learner.load_checkpoint(ckpt_dir)
    except integrity.CorruptCheckpoint as e:
        if not lc.fresh_on_corrupt_checkpoint:
            raise ConfigError(
                f"run.run_dir={run_dir}: {e}. Refusing to train the initial weights again while the ledger "
                "counts earlier samples as trained: use a new run.run_dir, or set "
                "learner.fresh_on_corrupt_checkpoint=true to start over (those samples are ledgered "
                f"dropped, rolled_back; versions continue after v{published}). learner.save_every > 0 makes "
                "a run resumable") from None
        log.error("%s; starting from the initial weights (learner.fresh_on_corrupt_checkpoint)", e)
    if ledger is None:
        return published
    forgotten = ledger.untrain_after(step, drop_reason="rolled_back")
    log.info("resumed at step %d, weights v%d (%d later training events forgotten)", step, published, forgotten)
    return published


def run(cfg: IxtConfig, stop: threading.Event) -> dict:
    """Train until `learner.max_steps` or `stop`; returns the final summary."""
    from ixt_stream.batch.collate import collate, pack
    from ixt_stream.batch.staleness import is_stale
    from ixt_stream.condition import record
    from ixt_stream.condition.format import FeedbackCounter
    from ixt_stream.update.learner import Learner
    from ixt_stream.weights import publish

    run_dir, lc, sc = Path(cfg.run.run_dir), cfg.learner, cfg.stream
    model_dir = models.resolve(cfg.model)
    pad_id = models.load_tokenizer(model_dir).pad_token_id
    learner = Learner.from_config(model_dir, lc)
    ranks = Ranks.current()
    ledger = Ledger(run_dir / "ledger.sqlite") if ranks.is_root else None
    ckpt_dir = run_dir / "checkpoints"
    try:
        version = resume(learner, ledger, run_dir, lc, ranks)
    except ConfigError:
        if ledger is not None:
            ledger.close()
        raise
    if ledger is None:
        return follow(cfg, learner, ranks, pad_id)
    publisher = publish.publisher(sc, str(run_dir), cfg.run.run_id)
    sink = MetricsSink.from_config(cfg, NAME)
    limits = FrameLimits(vocab_size=learner.vocab_size, max_tokens=min(cfg.condition.max_seq_len, lc.tokens_per_batch))
    prefetch = Prefetcher(cfg, maxsize=lc.max_samples_per_batch, stop=stop, limits=limits)  # one batch ahead
    prefetch.start()
    prefetch.ready.wait()
    if prefetch.error is not None:  # e.g. a port already bound
        for closable in (publisher, sink, ledger):
            closable.close()
        raise prefetch.error

    drops: Counter[str] = Counter()
    trained_feedback = FeedbackCounter()  # -> the positive prefix generators and eval condition on
    staleness: Counter[int] = Counter()
    waited = {"s": 0.0}

    def drop_stale(samples: list[ConditionedSample]) -> list[ConditionedSample]:
        """The samples within `max_version_lag` of the newest version; the others are ledgered."""
        stale = [s for s in samples if is_stale(s.sample.weight_version, version, sc.max_version_lag)]
        if stale:
            drops["stale"] += len(stale)
            ledger.dropped([(s.sample.sample_id, "stale") for s in stale])
        return [s for s in samples if not is_stale(s.sample.weight_version, version, sc.max_version_lag)]

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
    groups = pack(fresh(), lc.tokens_per_batch, lc.max_samples_per_batch, lc.row_tokens)
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
            mine = ranks.scatter([(learner.step, version, share) for share in shard(group, ranks.world)])[2]
            metrics = learner.train_step(collate(mine, pad_id, lc.row_tokens) if mine else None)
            busy += time.perf_counter() - t0
            ids = [s.sample.sample_id for s in group]
            if metrics["train/applied"]:
                ledger.trained(ids, learner.step)
                samples_trained += len(group)
                for s in group:
                    trained_feedback.observe(s)
            else:
                drops["nonfinite_step"] += len(group)
                ledger.dropped([(i, "nonfinite_step") for i in ids])
            if publishes(metrics, learner.step, sc):
                t0 = time.perf_counter()
                version += 1
                publisher.publish(learner.full_state_dict(publisher.dtype, copy=False), version, learner.step,
                                  trained_feedback.most_frequent(Label.GOOD))
                pushes.append(time.perf_counter() - t0)
            if saves(metrics, learner.step, lc):
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
            sink.status({k: metrics[k] for k in (
                "train/step", "train/loss", "train/tokens_per_s", "weights/version", "learner/busy_fraction",
                "learner/samples_per_s", "learner/queue_depth")} | {"generators": prefetch.generator_versions})
            if lc.log_every and learner.step % lc.log_every == 0:
                log.info("step %d loss %.4f | %d samples, %.0f tok/s | v%d | busy %.0f%% | gens %s",
                         learner.step, metrics["train/loss"], samples_trained, metrics["train/tokens_per_s"],
                         version, 100 * busy / wall, prefetch.generator_versions)
            if learner.step >= lc.max_steps:
                break  # now, not when the next group is complete (no more samples may come)
        ranks.scatter([None] * ranks.world)  # the other ranks stop, and join the saves below
        if learner.step > 0:
            learner.save_hf(run_dir / "final")
            record.write(run_dir / "final", cfg.condition, trained_feedback.inference_feedback())
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
        sink.status(summary)
        sink.close()
        publisher.close()
        ledger.close()
    return summary


def publishes(metrics: dict, step: int, sc: StreamConfig) -> bool:
    """Whether this step ends with a weight publish (the same answer on every rank)."""
    return bool(metrics["train/applied"]) and step % sc.sync_every == 0


def saves(metrics: dict, step: int, lc: LearnerConfig) -> bool:
    """Whether this step ends with a checkpoint (the same answer on every rank)."""
    return bool(lc.save_every and metrics["train/applied"] and step % lc.save_every == 0)


def follow(cfg: IxtConfig, learner, ranks: Ranks, pad_id: int) -> dict:
    """A rank other than 0: train on the shares rank 0 sends, and join its collectives (the gather
    before a publish, checkpoints, the final save), until it says stop. No socket, no ledger, no
    metrics: rank 0 reports for the group."""
    from ixt_stream.batch.collate import collate

    lc, run_dir = cfg.learner, Path(cfg.run.run_dir)
    while (order := ranks.scatter(None)) is not None:
        step, _version, mine = order
        if step != learner.step:
            raise RuntimeError(f"rank {ranks.rank} is at step {learner.step}, rank 0 at {step}")
        metrics = learner.train_step(collate(mine, pad_id, lc.row_tokens) if mine else None)
        if publishes(metrics, learner.step, cfg.stream) and learner.zero_stage:
            learner.full_state_dict(copy=False)  # ZeRO-1/2/3: every rank's part of rank 0's gather
        if saves(metrics, learner.step, lc):
            learner.save_checkpoint(run_dir / "checkpoints")
    if learner.step > 0:
        learner.save_hf(run_dir / "final")
        if lc.save_every:
            learner.save_checkpoint(run_dir / "checkpoints")
    return {"rank": ranks.rank, "steps": learner.step, "skipped_steps": learner.skipped_steps}


def main(cfg: IxtConfig) -> int:
    """The role's entry point: logging, threads, signals -> heavy imports (torch, DeepSpeed) -> train ->
    stop on SIGTERM/SIGINT (the step in flight finishes; the learner exits cleanly)."""
    from ixt_stream.roles import prepare

    summary = run(cfg, prepare(cfg, NAME, cfg.learner.threads))
    log.info("done: %s", summary)
    return 0
