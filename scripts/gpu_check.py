"""The GPU check: what of ixt-stream can run on a single-GPU node with no network.

Runs, on one CUDA device (or the CPU with --dry, tiny sizes):
  1. matmul peak (bf16, fp32/TF32) measured here, the MFU denominator;
  2. IXT conditioning + collate + loss on CUDA tensors, checked against the same loss on the CPU;
  3. the DeepSpeed learner (bf16, ZeRO-0 and ZeRO-3 on one GPU) training a SmolLM2-135M-shaped
     model with IXT-conditioned batches: tokens/s and model FLOPs utilisation (6 x params x tokens);
  4. weight gather (`full_state_dict`) + serialise (safetensors bytes) time;
  5. with >= 2 GPUs, the multi-rank learner: 1 rank vs all of them on the same groups (same
     losses, step time; scripts/gpu_check_ranks.py).
Prints a table last; writes results.json to the output folder.

vLLM and SGLang cannot be installed on that machine (no network; tree + carried files <= 64 MiB),
so generation and the reward LLM are not exercised here. The SmolLM2 weights (538 MB) cannot be
carried either: the model is random-init from SmolLM2's own config.json, which costs exactly the
same FLOPs. Usage: python scripts/gpu_check.py OUT_DIR [--dry] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ixt_stream.batch.collate import collate  # noqa: E402
from ixt_stream.condition.format import Conditioner  # noqa: E402
from ixt_stream.types import Critique, Label, Sample  # noqa: E402
from ixt_stream.update.loss import token_loss  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int, reps: int) -> float:
    """Achieved FLOP/s of an n x n x n matmul (median of `reps` after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def synthetic_batch(tok, n: int, rng: random.Random) -> list:
    """IXT-conditioned arithmetic samples with verifier-style critiques (right and wrong)."""
    cond = Conditioner(tok, max_seq_len=512)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        right = rng.random() < 0.5
        ans = a + b if right else a + b + rng.choice([-1, 1])
        s = Sample(f"s{i}", f"Calculate {a} + {b}.", f"{a} plus {b} is {ans}. " * rng.randint(8, 40)
                   + f"<answer>{ans}</answer>", task="basic_arithmetic", reference_answer=str(a + b))
        crit = Critique(s.sample_id, "The final answer is correct." if right else f"The final answer {ans} is wrong.",
                        1.0 if right else 0.0, Label.GOOD if right else Label.BAD)
        out.append(cond.condition(s, crit))
    return out


def check_loss(samples, pad_id: int, vocab: int, device: str) -> dict:
    """The same collate + loss on the CPU and on `device` agree."""
    batch = collate(samples, pad_id)
    torch.manual_seed(0)
    logits = torch.randn(*batch.input_ids.shape, vocab)
    cpu, _ = token_loss(logits, batch.targets)
    dev, stats = token_loss(logits.to(device), batch.to(device).targets)
    return {"loss_cpu": float(cpu), "loss_device": float(dev), "abs_diff": abs(float(cpu) - float(dev)),
            "loss_tokens": stats["loss/tokens"], "ok": abs(float(cpu) - float(dev)) < 1e-3}


def build_model(config_dir: str, out: Path, dry: bool) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(config_dir)
    if dry:  # a few layers of the same width: the same code path in seconds
        config.num_hidden_layers = 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def train(model_dir: Path, zero: int, samples, pad_id: int, steps: int, per_batch: int) -> dict:
    from ixt_stream.update.learner import Learner

    learner = Learner(str(model_dir), zero_stage=zero, dtype="bf16", lr=1e-4, threads=0)
    params = sum(p.numel() for p in learner.engine.module.parameters()) if zero != 3 else \
        sum(p.ds_numel for p in learner.engine.module.parameters())
    batches = [collate(samples[i:i + per_batch], pad_id) for i in range(0, len(samples) - per_batch + 1, per_batch)]
    learner.train_step(batches[0])  # warm-up (allocations, kernels)
    sync(str(learner.engine.device.type))
    t0, tokens, losses = time.perf_counter(), 0, []
    for k in range(steps):
        m = learner.train_step(batches[(k + 1) % len(batches)])
        tokens += int(m["train/tokens"])
        losses.append(m["train/loss"])
    sync(str(learner.engine.device.type))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    state = learner.full_state_dict()
    gather_s = time.perf_counter() - t1
    from safetensors.torch import save

    t2 = time.perf_counter()
    payload = save(state)
    serialise_s = time.perf_counter() - t2
    out = {"zero_stage": zero, "params": params, "steps": steps, "tokens": tokens, "seconds": seconds,
           "tokens_per_s": tokens / seconds, "flops_per_s": 6 * params * tokens / seconds,
           "loss_first": losses[0], "loss_last": losses[-1], "gather_s": gather_s, "serialise_s": serialise_s,
           "payload_mb": len(payload) / 1e6}
    del learner
    import deepspeed

    deepspeed.comm.destroy_process_group() if deepspeed.comm.is_initialized() else None
    return out


def check_ranks(model_dir: Path, out: Path, dry: bool, steps: int) -> dict | None:
    """The multi-rank learner: 1 rank vs every GPU here (2 gloo ranks with --dry) on the same groups,
    each rank training its token-balanced share (scripts/gpu_check_ranks.py under torchrun).
    None with fewer than 2 GPUs."""
    world = 2 if dry else torch.cuda.device_count()
    if world < 2:
        return None
    dtype, per_batch = ("fp32", 4) if dry else ("bf16", 64)
    runs = {}
    for n in (1, world):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
               f"--master-port={29900 + n}", str(Path(__file__).with_name("gpu_check_ranks.py")), str(out),
               "--model-dir", str(model_dir), "--dtype", dtype, "--steps", str(steps), "--per-batch", str(per_batch)]
        subprocess.run(cmd, check=True, timeout=300)
        runs[n] = json.loads((out / f"ranks-{n}.json").read_text())
    one, many = runs[1]["rows"], runs[world]["rows"]
    rel = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, many, strict=True))
    same_tokens = [a["tokens"] for a in one] == [b["tokens"] for b in many]

    def step_s(rows: list) -> float:
        return sorted(r["step_s"] for r in rows)[len(rows) // 2]

    return {"world": world, "dtype": dtype, "zero_stage": runs[world]["zero_stage"],
            "loss_1": [r["loss"] for r in one], "loss_n": [r["loss"] for r in many],
            "max_rel_loss_diff": rel, "step_s_1": step_s(one), "step_s_n": step_s(many),
            "ok": same_tokens and rel < (1e-4 if dtype == "fp32" else 2e-2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes: checks the script end to end")
    ap.add_argument("--model-dir", default=".gpu/smollm2", help="SmolLM2 config.json + tokenizer")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry else "cuda"
    if not args.dry and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --dry on a CPU machine)")
    results: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry)",
                     "torch": torch.__version__}
    n, reps = (512, 3) if args.dry else (8192, 10)
    results["peak_bf16_flops"] = matmul_peak(device, torch.bfloat16, n, reps)
    torch.backends.cuda.matmul.allow_tf32 = False
    results["peak_fp32_flops"] = matmul_peak(device, torch.float32, n, reps)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rng = random.Random(0)
    per_batch = 4 if args.dry else 64
    samples = synthetic_batch(tok, per_batch * 8, rng)
    results["loss_check"] = check_loss(samples[:8], pad_id, len(tok), device)

    steps = 2 if args.dry else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.model_dir, Path(tmp) / "model", args.dry)
        results["train"] = []
        for zero in (0, 3):
            os.environ["MASTER_PORT"] = str(29500 + zero + random.randint(0, 400))
            r = train(model_dir, zero, samples, pad_id, steps, per_batch)
            r["mfu_vs_measured_bf16_peak"] = r["flops_per_s"] / results["peak_bf16_flops"]
            results["train"].append(r)
        results["ranks"] = check_ranks(model_dir, out, args.dry, steps)
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\n== ixt-stream GPU check on {results['device']} (torch {results['torch']})")
    print(f"matmul peak: bf16 {results['peak_bf16_flops'] / 1e12:.1f} TFLOP/s, "
          f"fp32 {results['peak_fp32_flops'] / 1e12:.1f} TFLOP/s")
    lc = results["loss_check"]
    print(f"IXT loss on {device} vs cpu: {lc['loss_device']:.5f} vs {lc['loss_cpu']:.5f} "
          f"({int(lc['loss_tokens'])} loss tokens) -> {'OK' if lc['ok'] else 'MISMATCH'}")
    print(f"{'learner':<14}{'params':>10}{'tok/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'loss':>16}"
          f"{'gather s':>10}{'ser. s':>8}")
    for r in results["train"]:
        print(f"{'bf16 ZeRO-' + str(r['zero_stage']):<14}{r['params'] / 1e6:>9.1f}M{r['tokens_per_s']:>12.0f}"
              f"{r['flops_per_s'] / 1e12:>10.2f}{100 * r['mfu_vs_measured_bf16_peak']:>7.1f}%"
              f"{r['loss_first']:>8.3f}->{r['loss_last']:<7.3f}{r['gather_s']:>10.3f}{r['serialise_s']:>8.3f}")
    rk = results["ranks"]
    if rk is None:
        print("multi-rank learner: skipped (fewer than 2 GPUs here)")
    else:
        print(f"multi-rank learner ({rk['dtype']} ZeRO-{rk['zero_stage']}): 1 rank {rk['step_s_1']:.3f} s/step, "
              f"{rk['world']} ranks {rk['step_s_n']:.3f} s/step; loss max rel diff {rk['max_rel_loss_diff']:.1e} -> "
              f"{'OK' if rk['ok'] else 'MISMATCH'}")
    print(f"-> {out / 'results.json'}")
    return 0 if lc["ok"] and (rk is None or rk["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
