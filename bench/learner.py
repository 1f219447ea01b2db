"""Learner: tokens/s and MFU of the DeepSpeed `Learner` against the matmul peak measured in the same run.

Peak: square torch matmuls (bf16 and fp32, the learner's thread count) on this CPU, best of a few.
Learner: SmolLM2-135M, `Learner.train_step` on IXT-conditioned samples (`Conditioner`, critique
mode: [feedback][prompt][response], loss on the response) and on the same samples without the
feedback segment (mode none), under ZeRO-0 and ZeRO-2, bf16 (the CPU profile). Both engines live
side by side and step in turn on both batches (interleaved rounds after a warm-up round), so a
neighbour's burst hits every configuration alike; step time is the median per configuration.
Model FLOPs per token = 6 N + 12 L d T (N parameters with the tied embedding counted once as the
LM head; L layers, d hidden, T sequence length), PaLM's accounting; padded positions not counted.
MFU = model FLOP/s / the bf16 matmul peak (the learner computes in bf16; the fp32 peak and MFU
against it are in details). The prefix's token overhead is feedback tokens
/ all tokens; its cost is the step-time ratio with / without it.
Left out: several ranks (two processes on 2 cores measure the cores, not ZeRO), an fp32 learner
(a third SmolLM2 engine in memory), activation checkpointing, optimizer offload.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

from bench.report import Result, Row

THREADS = 1
"""The CPU profile's learner.threads; the peak is measured with the same count."""


def matmul_peak(dtype_name: str, n: int = 1024, repeat: int = 5) -> float:
    """FLOP/s of an n x n x n matmul (best of `repeat`, after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def conditioned_batch(model_dir: str, n: int, with_prefix: bool):
    """`n` realistic samples laid out by the IXT Conditioner (critique mode) or without feedback."""
    from bench.reward import make_samples
    from ixt_stream import models
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.config import ConditionConfig
    from ixt_stream.critique.verifier import VerifierBackend

    tok = models.load_tokenizer(model_dir)
    cond = Conditioner.from_config(tok, ConditionConfig(mode="critique" if with_prefix else "none",
                                                        max_seq_len=512))
    verifier = VerifierBackend()
    out = []
    for s in make_samples(n):
        v = verifier.verdict(s)
        # a policy-length response (~100 tokens): the verifier's samples are one-liners
        s.response = ("Let me work through this carefully. " * 12) + s.response
        from ixt_stream.types import Critique

        out.append(cond.condition(s, Critique(s.sample_id, v.critique, v.score, v.label)))
    return out, tok.pad_token_id


def model_flops_per_token(model, seq_len: float) -> float:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def measure(model_dir: str, batches: dict, pad_id: int, steps: int) -> dict:
    """ZeRO-0 and ZeRO-2 engines side by side, each stepping on every batch in turn, `steps` rounds
    after one warm-up round: interleaved, so a neighbour's burst hits every configuration alike."""
    from ixt_stream.batch.collate import collate
    from ixt_stream.update.learner import Learner

    engines = {z: Learner(model_dir, zero_stage=z, dtype="bf16", lr=1e-6, threads=THREADS) for z in (0, 2)}
    tensors = {k: collate(g, pad_id) for k, g in batches.items()}
    times: dict[tuple[int, str], list[float]] = {(z, k): [] for z in engines for k in tensors}
    for r in range(steps + 1):
        for z, learner in engines.items():
            for k, batch in tensors.items():
                m = learner.train_step(batch)
                if r > 0:
                    times[(z, k)].append(m["train/step_s"])
    module = engines[0].engine.module
    out = {}
    for (z, k), ts in times.items():
        batch = tensors[k]
        step_s = statistics.median(ts)
        seq = batch.num_tokens / batch.input_ids.shape[0]
        fpt = model_flops_per_token(module, seq)
        out[f"zero{z}-bf16-{k}"] = {
            "zero": z, "dtype": "bf16", "step_s": step_s, "step_times": ts, "tokens": batch.num_tokens,
            "padded_tokens": batch.num_padded_tokens, "samples": batch.input_ids.shape[0],
            "tokens_per_s": batch.num_tokens / step_s, "flops_per_token": fpt,
            "model_flops_per_s": fpt * batch.num_tokens / step_s}
    del engines, module
    gc.collect()
    return out


def run(quick: bool = False) -> Result:
    import torch

    from ixt_stream import models
    from ixt_stream.config import ModelConfig

    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    model_dir = models.resolve(ModelConfig())
    n, steps = (4, 2) if quick else (8, 3)
    peaks = {d: matmul_peak(d, 1024 if quick else 2048) for d in ("bfloat16", "float32")}
    with_p, pad_id = conditioned_batch(model_dir, n, True)
    without_p, _ = conditioned_batch(model_dir, n, False)
    fb = sum(s.num_feedback_tokens for s in with_p)
    tok_with = sum(s.num_tokens for s in with_p)
    tok_without = sum(s.num_tokens for s in without_p)
    runs = measure(model_dir, {"prefix": with_p, "noprefix": without_p}, pad_id, steps)
    for r in runs.values():
        r["mfu"] = r["model_flops_per_s"] / peaks["bfloat16"]
        r["mfu_vs_fp32_peak"] = r["model_flops_per_s"] / peaks["float32"]
    result = Result("learner", quick=quick)
    for key, r in runs.items():
        peak_tok = peaks["bfloat16"] / r["flops_per_token"]
        result.rows.append(Row(f"{key} ({r['samples']} x {r['tokens'] // r['samples']} tok): tokens/s (ratio = MFU)",
                               r["tokens_per_s"], peak_tok, "bf16 matmul peak", "tokens/s"))
    extra = 100 * (tok_with - tok_without) / tok_without
    for zero in (0, 2):
        a, b = runs[f"zero{zero}-bf16-prefix"], runs[f"zero{zero}-bf16-noprefix"]
        result.rows.append(Row(f"ZeRO-{zero} bf16 step time with the feedback prefix (+{extra:.0f}% "
                               "tokens)", a["step_s"], b["step_s"], "same samples, no prefix", "s", False))
    result.details.update({
        "threads": THREADS, "matmul_peak_flops": peaks, "runs": runs, "samples": n,
        "prefix": {"feedback_tokens": fb, "tokens_with": tok_with, "tokens_without": tok_without,
                   "token_overhead": (tok_with - tok_without) / tok_without,
                   "feedback_share_of_tokens": fb / tok_with},
        "loadavg": os.getloadavg(),
    })
    return result
