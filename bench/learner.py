"""Learner: tokens/s and MFU of the DeepSpeed `Learner` against the matmul peak measured in the same run,
and the same samples in packed rows against padded rows.

Peak: square torch matmuls (bf16 and fp32, the learner's thread count) on this CPU, best of a few.
Learner: SmolLM2-135M, `Learner.train_step` on IXT-conditioned samples (`Conditioner`, critique
mode: [feedback][prompt][response], loss on the response; responses of the online workload's
varied lengths) and on the same samples without the feedback segment (mode none), under ZeRO-0
and ZeRO-2, bf16, at the CPU profile's `learner.threads`; and the prefixed samples packed into
rows of `condition.max_seq_len` tokens (`collate(row_tokens=...)`, the CPU profile's
`learner.row_tokens`) under ZeRO-0. The engines live side by side and step in turn on every
batch (interleaved rounds after a warm-up round), so a neighbour's burst hits every configuration
alike; step time is the median per configuration.
Model FLOPs per token = 6 N + 12 L d T (N parameters with the tied embedding counted once as the
LM head; L layers, d hidden, T the mean sample length), PaLM's accounting; padded positions not
counted. MFU = model FLOP/s / the bf16 matmul peak (the learner computes in bf16; the fp32 peak and
MFU against it are in details). The prefix's token overhead is feedback tokens / all tokens; its
cost is the step-time ratio with / without it. Packing's gain is the tokens/s ratio packed /
padded on the same samples (real tokens only; the padding fraction of each layout is in details).
Left out: several ranks (two processes on 2 cores measure the cores, not ZeRO), an fp32 learner
(a third SmolLM2 engine in memory), activation checkpointing, optimizer offload.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

from bench.report import Result, Row

ROW_TOKENS = 512
"""Packed rows: condition.max_seq_len of the CPU profile."""


def profile_threads() -> int:
    """The CPU profile's learner.threads; the peak is measured with the same count."""
    from ixt_stream.config import load

    return load([]).learner.threads


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
    for i, s in enumerate(make_samples(n)):
        v = verifier.verdict(s)
        # policy-length responses of the online workload's spread (~20 to ~110 tokens): the
        # verifier's samples are one-liners
        s.response = ("Let me work through this carefully. " * (2 + (7 * i) % 13)) + s.response
        from ixt_stream.types import Critique

        out.append(cond.condition(s, Critique(s.sample_id, v.critique, v.score, v.label)))
    return out, tok.pad_token_id


def model_flops_per_token(model, seq_len: float) -> float:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def measure(model_dir: str, tensors: dict, steps: int, threads: int) -> dict:
    """ZeRO-0 and ZeRO-2 engines side by side, each stepping on its batches in turn, `steps` rounds
    after one warm-up round: interleaved, so a neighbour's burst hits every configuration alike.
    Packed batches (names ending in -packed) run under ZeRO-0 only."""
    from ixt_stream.update.learner import Learner

    engines = {z: Learner(model_dir, zero_stage=z, dtype="bf16", lr=1e-6, threads=threads) for z in (0, 2)}
    times: dict[tuple[int, str], list[float]] = {(z, k): [] for z in engines for k in tensors
                                                 if z == 0 or not k.endswith("-packed")}
    for r in range(steps + 1):
        for z, k in times:
            m = engines[z].train_step(tensors[k])
            if r > 0:
                times[(z, k)].append(m["train/step_s"])
    module = engines[0].engine.module
    out = {}
    for (z, k), ts in times.items():
        batch = tensors[k]
        step_s = statistics.median(ts)
        seq = batch.num_tokens / batch.num_samples
        fpt = model_flops_per_token(module, seq)
        out[f"zero{z}-bf16-{k}"] = {
            "zero": z, "dtype": "bf16", "step_s": step_s, "step_times": ts, "tokens": batch.num_tokens,
            "padded_tokens": batch.num_padded_tokens, "samples": batch.num_samples, "rows": batch.input_ids.shape[0],
            "padding": 1 - batch.num_tokens / batch.num_padded_tokens,
            "tokens_per_s": batch.num_tokens / step_s, "flops_per_token": fpt,
            "model_flops_per_s": fpt * batch.num_tokens / step_s}
    del engines, module
    gc.collect()
    return out


def run(quick: bool = False) -> Result:
    import torch

    from ixt_stream import models
    from ixt_stream.batch.collate import collate
    from ixt_stream.config import ModelConfig

    threads = profile_threads()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    model_dir = models.resolve(ModelConfig())
    n, steps = (8, 2) if quick else (16, 3)
    peaks = {d: matmul_peak(d, 1024 if quick else 2048) for d in ("bfloat16", "float32")}
    with_p, pad_id = conditioned_batch(model_dir, n, True)
    without_p, _ = conditioned_batch(model_dir, n, False)
    fb = sum(s.num_feedback_tokens for s in with_p)
    tok_with = sum(s.num_tokens for s in with_p)
    tok_without = sum(s.num_tokens for s in without_p)
    tensors = {"prefix": collate(with_p, pad_id), "noprefix": collate(without_p, pad_id),
               "prefix-packed": collate(with_p, pad_id, ROW_TOKENS)}
    runs = measure(model_dir, tensors, steps, threads)
    for r in runs.values():
        r["mfu"] = r["model_flops_per_s"] / peaks["bfloat16"]
        r["mfu_vs_fp32_peak"] = r["model_flops_per_s"] / peaks["float32"]
    result = Result("learner", quick=quick)
    for key, r in runs.items():
        peak_tok = peaks["bfloat16"] / r["flops_per_token"]
        result.rows.append(Row(f"{key} ({r['samples']} x {r['tokens'] // r['samples']} tok in {r['rows']} rows, "
                               f"{100 * r['padding']:.0f}% padding): tokens/s (ratio = MFU)",
                               r["tokens_per_s"], peak_tok, "bf16 matmul peak", "tokens/s"))
    extra = 100 * (tok_with - tok_without) / tok_without
    for zero in (0, 2):
        a, b = runs[f"zero{zero}-bf16-prefix"], runs[f"zero{zero}-bf16-noprefix"]
        result.rows.append(Row(f"ZeRO-{zero} bf16 step time with the feedback prefix (+{extra:.0f}% "
                               "tokens)", a["step_s"], b["step_s"], "same samples, no prefix", "s", False))
    packed, padded = runs["zero0-bf16-prefix-packed"], runs["zero0-bf16-prefix"]
    result.rows.append(Row(f"ZeRO-0 bf16 tokens/s, samples packed into {ROW_TOKENS}-token rows "
                           f"({100 * packed['padding']:.0f}% padding vs {100 * padded['padding']:.0f}%)",
                           packed["tokens_per_s"], padded["tokens_per_s"], "same samples, padded rows", "tokens/s",
                           True, "padding <= 5%", packed["padding"] <= 0.05))
    result.details.update({
        "threads": threads, "matmul_peak_flops": peaks, "runs": runs, "samples": n, "row_tokens": ROW_TOKENS,
        "prefix": {"feedback_tokens": fb, "tokens_with": tok_with, "tokens_without": tok_without,
                   "token_overhead": (tok_with - tok_without) / tok_without,
                   "feedback_share_of_tokens": fb / tok_with},
        "loadavg": os.getloadavg(),
    })
    return result
