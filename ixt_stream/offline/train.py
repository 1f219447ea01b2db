"""`ixt train [overrides]`: fine-tune on annotated data with the DeepSpeed learner.

IXT (`condition.mode=critique|label`): every sample, good or bad, is trained as
[feedback][prompt][response] with loss on the response only, so the model learns what a response
*given* its feedback looks like. Baseline (`condition.mode=none`): the same samples and the same
loop, without the feedback prefix. Each epoch reshuffles the samples (seeded), re-draws feedback
dropout, and packs them into token-budget batches; one batch is one optimizer step.

Reads `train.data`: JSONL, Parquet or a `datasets` folder (`corpus.read_annotated`). Writes: the
model as an HF folder in `train.output_dir` (+ `ixt_condition.json`: the format it was trained on
and the feedback it most often trained with per label, which `ixt eval` conditions on), metrics to
`run.run_dir/metrics/train.jsonl`, and DeepSpeed checkpoints to `run.run_dir/checkpoints/train`
(`train.resume=true` continues from the latest one; the batch order is a function of the seed, so
resuming skips exactly the batches already consumed).

Every row is checked before the first step: a broken line (`file:line: reason`) or a sample whose
feedback and prompt leave no room for data within `condition.max_seq_len` (`too_long`) is skipped
and counted, and the summary (`train/skipped/<reason>`) says how many; the exit code is then 1
(`run.bad_input=fail`: stop before training instead).

Several ranks (`learner.num_gpus > 1`): `ixt train` starts itself again under torchrun, one rank per
GPU (gloo processes on a CPU); every rank reads the data and draws the same batches, trains on its
token-balanced share of each (`update.ranks.shard`), and rank 0 alone logs and writes the model.

Left out: a held-out loss during training (`ixt eval` measures accuracy, which is what matters),
filtering samples by label.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import replace
from pathlib import Path

from ixt_stream import logs, progress
from ixt_stream.condition import record
from ixt_stream.condition.format import Conditioner, FeedbackCounter, Rejected
from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.corpus import BadInput, Skips, read_annotated
from ixt_stream.types import ConditionedSample, Critique, Sample
from ixt_stream.update.ranks import Ranks, shard

log = logging.getLogger("ixt.train")


def fitting(rows: list[tuple[Sample, Critique | None]], conditioner: Conditioner,
            skips: Skips) -> list[tuple[Sample, Critique | None]]:
    """The rows the conditioner accepts (fitting `max_seq_len`, feedback included, and within the
    leak and truncation policies), checked before the first step; the others are reported to
    `skips` with the conditioner's reason. Feedback dropout only shortens a
    sample, so a row that fits with its feedback fits in every epoch."""
    out = []
    for sample, critique in rows:
        try:
            conditioner.condition(sample, critique)
        except Rejected as e:
            skips.bad(sample.sample_id, e.reason, str(e))
            continue
        out.append((sample, critique))
    return out


# -- the run ----------------------------------------------------------------------------------


def epoch_batches(
    rows: list[tuple[Sample, Critique | None]], conditioner, epochs: int, seed: int,
    tokens_per_batch: int, max_samples: int,
) -> Iterator[tuple[int, list[ConditionedSample]]]:
    """(epoch, group) for the whole run, in an order fixed by `seed`."""
    from ixt_stream.batch.collate import pack

    for epoch in range(epochs):
        order = list(rows)
        random.Random(seed + epoch).shuffle(order)
        for group in pack((conditioner.condition(s, c) for s, c in order), tokens_per_batch, max_samples):
            yield epoch, group


def train(cfg: IxtConfig) -> dict[str, float]:
    """Train per `cfg`; returns the run summary (steps, skipped, tokens, tokens/s, last loss)."""
    from ixt_stream import models
    from ixt_stream.batch.collate import collate
    from ixt_stream.metrics import MetricsSink
    from ixt_stream.update.learner import Learner

    lc = cfg.learner
    model_dir = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(model_dir)
    conditioner = Conditioner.from_config(tokenizer, cfg.condition, seed=cfg.run.seed)
    if not Path(cfg.train.data).exists():
        raise ConfigError(f"train.data: {cfg.train.data} does not exist")
    skips = Skips(fail=cfg.run.bad_input == "fail")
    rows = read_annotated(cfg.train.data, cfg.train.columns, "train.columns", skips)
    rows = fitting(rows, Conditioner.from_config(tokenizer, replace(cfg.condition, feedback_dropout=0.0)), skips)
    if not rows:
        raise ConfigError(f"train.data: {cfg.train.data} holds no trainable samples (skipped: {dict(skips.reasons)})")
    with_feedback = sum(c is not None for _, c in rows)
    log.info("%d samples (%d with a critique) from %s; mode %s; model %s; skipped %s", len(rows), with_feedback,
             cfg.train.data, cfg.condition.mode, model_dir, dict(skips.reasons))

    learner = Learner.from_config(model_dir, lc)
    ranks = Ranks.current()
    checkpoints = Path(cfg.run.run_dir) / "checkpoints" / "train"
    consumed = 0
    if cfg.train.resume and (checkpoints / "latest").exists():
        learner.load_checkpoint(checkpoints)
        consumed = learner.step + learner.skipped_steps
        log.info("resumed at step %d (%d batches consumed)", learner.step, consumed)

    sink = MetricsSink.from_config(cfg, "train") if ranks.is_root else None
    tokens, seconds, last, trained_feedback = 0, 0.0, {}, FeedbackCounter()
    batches = epoch_batches(rows, conditioner, lc.epochs, cfg.run.seed, lc.tokens_per_batch,
                            lc.max_samples_per_batch)
    with closing(sink) if sink else nullcontext(), progress.bar(
            total=lc.max_steps or None, initial=learner.step, desc="train", unit="step",
            disable=not ranks.is_root) as bar:
        for index, (epoch, group) in enumerate(batches):
            if index < consumed:  # trained before the resume: its feedback still counts
                for s in group:
                    trained_feedback.observe(s)
                continue
            if lc.max_steps and learner.step >= lc.max_steps:
                break
            mine = shard(group, ranks.world)[ranks.rank]
            last = learner.train_step(collate(mine, tokenizer.pad_token_id) if mine else None)
            if last["train/applied"]:
                for s in group:
                    trained_feedback.observe(s)
            bar.set_postfix(loss=f"{last['train/loss']:.3f}", epoch=epoch, refresh=False)
            bar.update(learner.step - bar.n)
            last["train/epoch"] = float(epoch)
            tokens += int(last["train/tokens"])
            seconds += last["train/step_s"]
            if sink and (learner.step % lc.log_every == 0 or not last["train/applied"]):
                sink.log(last, step=learner.step)
                log.info("step %d epoch %d loss %.4f lr %.2e tokens %d %.0f tok/s", learner.step, epoch,
                         last["train/loss"], last["train/lr"], last["train/tokens"],
                         last["train/tokens_per_s"])
            if lc.save_every and last["train/applied"] and learner.step % lc.save_every == 0:
                learner.save_checkpoint(checkpoints)

    learner.save_checkpoint(checkpoints)
    out = learner.save_hf(cfg.train.output_dir)
    if ranks.is_root:
        record.write(out, cfg.condition, trained_feedback.inference_feedback())
    summary = {"train/steps": float(learner.step), "train/skipped_steps": float(learner.skipped_steps),
               "train/tokens_total": float(tokens), "train/seconds": seconds,
               "train/mean_tokens_per_s": tokens / seconds if seconds else 0.0,
               "train/last_loss": last.get("train/loss", float("nan")), "train/samples": float(len(rows)),
               **{f"train/skipped/{reason}": float(n) for reason, n in skips.reasons.items()}}
    log.info("done: %s -> %s", {k: round(v, 4) for k, v in summary.items()}, out)
    return summary


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    """Prints the summary as one JSON line; exits 1 when rows were skipped (`train/skipped/<reason>`)."""
    if cfg.learner.num_gpus > 1 and "WORLD_SIZE" not in os.environ:  # not a rank yet: start the ranks
        from ixt_stream.online.supervisor import learner_ranks

        return subprocess.call([*learner_ranks(cfg.learner.num_gpus, cfg.learner.master_port),
                                "ixt_stream.cli", "train", *overrides])
    logs.setup(cfg.run.log_level, "train")
    try:
        summary = train(cfg)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    except BadInput as e:
        sys.stderr.write(f"train: bad input: {e} (run.bad_input=fail)\n")
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 1 if any(k.startswith("train/skipped/") for k in summary) else 0


if __name__ == "__main__":  # the same as `ixt train`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
