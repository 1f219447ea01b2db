"""One training run of the experiment, in its own process: `python -m ixt_stream.experiment.train_run spec.json`.

The run is (scale, arm, seed). It builds the project's DeepSpeed `Learner` (the same loss, optimizer
and dtype handling as `ixt train`), reads the scale's annotated pool in the arm's order
(`data.arm_stream`), lays each sample out with the `Conditioner` of the arm's mode, packs token-budget
batches, and trains until `budget_tokens` real tokens (feedback prefix, prompt and response) are
spent. At each FLOPs milestone (and before the first step) it saves the full state dict in bf16,
for the evaluation process to swap into vLLM, and appends the milestone to `train.json`:

    {"params": {...}, "milestones": [{"index", "step", "tokens", "flops", "path"}...],
     "loss": [[tokens, loss]...], "samples_seen", "epochs", "done"}

A run whose `train.json` says done is not trained again; one that died midway starts over (its
runs are minutes long, so resuming from a DeepSpeed checkpoint is not worth the disk).
Left out: evaluation (a separate process: vLLM must not share a process with the learner).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from ixt_stream.experiment.data import ARM_MODES, fingerprint


def milestone_tokens(budget_tokens: int, milestones: int) -> list[float]:
    """budget x 2^-k for k = milestones-1 .. 0 (ascending)."""
    return [budget_tokens / 2 ** k for k in range(milestones - 1, -1, -1)]


def count_params(module, vocab_size: int) -> dict[str, int]:
    """Parameters of the built model, tied weights once: total, embedding, non_embedding."""
    total = sum(p.numel() for p in module.parameters())
    embedding = sum(p.numel() for p in module.parameters() if p.dim() == 2 and p.shape[0] == vocab_size)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def train(spec: dict) -> dict:
    import torch

    from ixt_stream import models
    from ixt_stream.batch.collate import collate, pack
    from ixt_stream.condition.format import Conditioner, FeedbackCounter
    from ixt_stream.config import load
    from ixt_stream.experiment.analysis import training_flops
    from ixt_stream.experiment.data import arm_stream, read_pool
    from ixt_stream.update.learner import Learner

    cfg = load(spec["overrides"])
    e, scale = cfg.experiment, cfg.experiment.scales[spec["scale"]]
    arm, seed, out = spec["arm"], int(spec["seed"]), Path(spec["run_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{spec['scale']}/{arm}/s{seed}"

    tokenizer = models.load_tokenizer(spec["model_dir"])
    cond_cfg = dataclasses.replace(cfg.condition, mode=ARM_MODES[arm],
                                   feedback_dropout=e.feedback_dropout if arm == "ixt_dropout" else 0.0)
    conditioner = Conditioner.from_config(tokenizer, cond_cfg, seed=seed)
    rows = read_pool(Path(spec["data"]))
    torch.manual_seed(seed)
    learner = Learner(spec["model_dir"], zero_stage=0, dtype=e.dtype, lr=scale.lr, warmup_steps=scale.warmup_steps,
                      grad_clip=1.0, threads=1)
    params = count_params(learner.engine.module, learner.engine.module.config.vocab_size)
    record = {"scale": spec["scale"], "arm": arm, "seed": seed, "mode": cond_cfg.mode, "params": params,
              "fingerprint": fingerprint(e, scale),
              "budget_tokens": scale.budget_tokens, "milestones": [], "loss": [], "done": False}

    def save(index: int, tokens: int) -> None:
        path = out / f"m{index}.pt"
        torch.save(learner.full_state_dict(dtype=torch.bfloat16), path)
        record["milestones"].append({"index": index, "step": learner.step, "tokens": tokens,
                                     "flops": training_flops(params["total"], tokens), "path": str(path)})
        (out / "train.json").write_text(json.dumps(record))

    # -- the loop ---------------------------------------------------------------------------------
    targets = milestone_tokens(scale.budget_tokens, scale.milestones)
    save(0, 0)
    stream = arm_stream(rows, arm, seed)
    epochs = {"n": 0}

    def conditioned():
        for epoch, sample, critique in stream:
            epochs["n"] = epoch
            yield conditioner.condition(sample, critique)

    tokens = samples = 0
    next_index = 1
    trained_feedback = FeedbackCounter()  # -> the prefix the evaluation conditions on
    t0, last_print = time.perf_counter(), 0.0
    for group in pack(conditioned(), e.tokens_per_batch, e.max_samples_per_batch):
        m = learner.train_step(collate(group, tokenizer.pad_token_id))
        for s in group:
            trained_feedback.observe(s)
        tokens += int(m["train/tokens"])
        samples += len(group)
        record["loss"].append([tokens, m["train/loss"]])
        first = next_index
        while next_index <= len(targets) and tokens >= targets[next_index - 1]:
            next_index += 1
        if next_index > first:  # one checkpoint at the largest milestone this step crossed
            save(next_index - 1, tokens)
        now = time.perf_counter()
        if now - last_print > 15 or tokens >= scale.budget_tokens:
            last_print = now
            print(f"[train {tag}] step {learner.step} tokens {tokens}/{scale.budget_tokens} "
                  f"epoch {epochs['n']} loss {m['train/loss']:.3f} {tokens / (now - t0):.0f} tok/s", flush=True)
        if tokens >= scale.budget_tokens:
            break
    inference = trained_feedback.inference_feedback()
    record.update(done=True, inference=dataclasses.asdict(inference) if inference else None,
                  samples_seen=samples, epochs=epochs["n"] + 1, seconds=time.perf_counter() - t0,
                  skipped_steps=learner.skipped_steps)
    (out / "train.json").write_text(json.dumps(record))
    return record


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    record = train(spec)
    print(f"[train {spec['scale']}/{spec['arm']}/s{spec['seed']}] done: {len(record['milestones'])} checkpoints, "
          f"{record['samples_seen']} samples, {record['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
