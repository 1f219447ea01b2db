"""One run of the experiment in its own process: `python -m ixt_stream.experiment.train_run spec.json`.

A run is (size, arm, seed, mixture, lr). It builds the Llama from scratch, reads the mixture's
critiqued corpus in the arm's order (`data.stream`), lays each document out as

    [arm's feedback prefix] <sep> [document] <eos>        loss on the document and <eos> only

and trains with AdamW (linear warmup, then a constant rate; the EMA of the weights is what gets
evaluated) until its FLOPs budget is spent: the FLOPs the baseline layout costs on
`experiment.tokens` tokens of this corpus (`budget_flops`), the same for every arm of a size, so an
arm with a prefix reads fewer documents. At the initial model and at every checkpoint (sqrt(2)
apart, `analysis.checkpoint_flops`) it measures the EMA model on the held-out problems
(`measure.measure`: greedy and sampled accuracy and expert loss per problem), and at the last one
under every inference condition too. It records what the invariants need (the FLOPs counts, the
first documents read, the prefix tokens that carried loss, the prefixes trained on) and writes one
result JSON atomically at the end:

    {"fingerprint", "shape", "budget_flops", "points": [{"flops", "tokens", "pairs", "loss_tokens",
     "step", "greedy", "sampled", "expert_loss", "kinds"}...], "final_conditions", "invariants", ...}

A run is minutes long, so a killed one starts over (the result file is the unit of resumption).
Left out: learning-rate decay (the EMA stands in for it, so every checkpoint is a fair model) and
gradient accumulation.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ixt_stream.config import ExperimentConfig


def fingerprint(e: ExperimentConfig, spec: dict) -> str:
    """What a run's result depends on: a rerun under another world, shape, budget or recipe is not
    mistaken for a finished one."""
    keys = {"world": asdict(e.world), "size": asdict(e.sizes[spec["size"]]), "run": {
        k: spec[k] for k in ("arm", "seed", "mixture", "lr", "fraction")}, "recipe": [
        e.tokens, e.batch_docs, e.warmup_steps, e.weight_decay, e.ema, e.checkpoints, e.feedback_dropout,
        e.eval_temperature]}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, allow_nan=False))
    tmp.replace(path)


def budget_flops(shape, docs: list[list[int]], tokens: int) -> float:
    """FLOPs of `tokens` tokens in the baseline layout (<sep> doc <eos>) at this corpus's mean document."""
    from ixt_stream.experiment.analysis import flops, sequence_counts

    total = [sequence_counts(len(d) + 2, len(d) + 1) for d in docs]
    per_token = sum(flops(shape, *c) for c in total) / sum(c[0] for c in total)
    return per_token * tokens


def run(spec: dict) -> dict:
    import torch

    from ixt_stream.config import load
    from ixt_stream.experiment import analysis, data, world
    from ixt_stream.experiment.measure import measure
    from ixt_stream.experiment.model import EMA, build, loss, shape

    torch.set_num_threads(1)
    e = load(spec["overrides"]).experiment
    arm, seed, tag = spec["arm"], int(spec["seed"]), spec["tag"]
    tok = world.tokenizer()
    rows = data.read_corpus(Path(spec["corpus"]))
    docs = [tok.encode(s.response) for s, _ in rows]
    problems = world.split(e.world.digits, e.world.eval_problems, e.world.seed).eval
    infer = data.inference_prefixes(rows, arm)
    model = build(e.sizes[spec["size"]], len(tok), seed)
    sh = shape(model)
    ema = EMA(model, e.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.98), weight_decay=e.weight_decay)
    budget = budget_flops(sh, docs, e.tokens) * spec["fraction"]
    # a sweep run (a fraction of the budget) is measured at its end only
    marks = analysis.checkpoint_flops(budget, e.checkpoints if spec["fraction"] == 1.0 else 1)
    prefix_cache: dict[str, list[int]] = {}

    def probe(conditions: list[str], counts: dict) -> dict:
        out = {}
        for c in conditions:
            m = measure(ema.model, tok, problems, infer[c], e.eval_temperature, seed, sampled=c == "positive")
            out[c] = {**counts, **asdict(m)}
        return out

    # -- the loop ---------------------------------------------------------------------------------
    counts = {"step": 0, "tokens": 0, "pairs": 0, "loss_tokens": 0, "docs": 0, "epoch": 0, "flops": 0.0,
              "train_loss": None}
    points = [probe(["positive"], counts)["positive"]]
    stream = data.stream(rows, arm, seed, e.feedback_dropout)
    first_docs, trained_prefixes, prefix_loss_tokens = [], set(), 0
    t0, last_print, losses = time.perf_counter(), 0.0, []
    final_conditions = {}
    while len(points) <= len(marks):
        batch = [next(stream) for _ in range(e.batch_docs)]
        seqs, masks = [], []
        for epoch, i, text in batch:
            if len(first_docs) < 256:
                first_docs.append(i)
            trained_prefixes.add(text)
            prefix = prefix_cache.setdefault(text, tok.encode(text) if text else [])
            seqs.append(prefix + [tok.sep_id] + docs[i] + [tok.eos_id])
            masks.append([0] * (len(prefix) + 1) + [1] * (len(docs[i]) + 1))
            counts["epoch"] = epoch
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [tok.pad_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
        for (_, _, text), m in zip(batch, masks, strict=True):  # the invariant, read off the tensors' source
            prefix_loss_tokens += sum(m[:len(prefix_cache[text]) + 1])
        lr = spec["lr"] * min(1.0, (counts["step"] + 1) / max(e.warmup_steps, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        value = loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(value.item())
        counts["step"] += 1
        counts["docs"] += len(batch)
        for s, m in zip(seqs, masks, strict=True):
            for k, v in zip(("tokens", "pairs", "loss_tokens"), analysis.sequence_counts(len(s), sum(m)), strict=True):
                counts[k] += v
        counts["flops"] = analysis.flops(sh, counts["tokens"], counts["pairs"], counts["loss_tokens"])
        crossed = sum(1 for f in marks[len(points) - 1:] if counts["flops"] >= f)
        if crossed:
            counts["train_loss"] = sum(losses) / len(losses)
            losses = []
            final = len(points) - 1 + crossed == len(marks)
            measured = probe(list(infer) if final else ["positive"], dict(counts))
            points += [measured["positive"]] * crossed  # one evaluation for marks crossed in one step
            if final:
                final_conditions = measured
        now = time.perf_counter()
        if now - last_print > 30 or len(points) > len(marks):
            last_print = now
            acc = points[-1]["greedy"].count("1") / len(problems)
            print(f"[train {tag}] step {counts['step']} flops {counts['flops']:.3g}/{budget:.3g} "
                  f"loss {float(value):.3f} acc {acc:.3f} {counts['tokens'] / (now - t0):.0f} tok/s", flush=True)
    seconds = time.perf_counter() - t0
    return {**{k: spec[k] for k in ("size", "arm", "seed", "mixture", "lr", "fraction", "tag")},
            "fingerprint": spec["fingerprint"], "shape": asdict(sh), "budget_flops": budget, "marks": marks,
            "points": points, "final_conditions": final_conditions, "inference": infer,
            "invariants": {"first_docs": first_docs, "prefix_loss_tokens": prefix_loss_tokens,
                           "inference_prefix_trained": infer["positive"] in trained_prefixes},
            "seconds": seconds, "tokens_per_s": counts["tokens"] / seconds}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = run(spec)
    write_atomic(Path(spec["result"]), result)
    last = result["points"][-1]
    print(f"[train {spec['tag']}] done: accuracy {last['greedy'].count('1') / len(last['greedy']):.3f}, "
          f"{result['seconds']:.0f} s, {result['tokens_per_s']:.0f} tok/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
