"""One rank of the GPU check's multi-rank learner check; `gpu_check.py` starts it under torchrun.

Every rank builds the same IXT-conditioned samples, then trains `--steps` groups, each rank on its
token-balanced share of every group (`update.ranks.shard`, exactly as the online learner splits a
step), so 1 rank and N ranks make the same updates: their per-step losses must agree. Rank 0
writes the per-step loss, tokens and step time to OUT/ranks-<world>.json.
Usage (from gpu_check.py): torchrun --nproc-per-node=N scripts/gpu_check_ranks.py OUT --model-dir DIR
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import sync, synthetic_batch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model-dir", required=True, help="a model folder with its tokenizer")
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--per-batch", type=int, default=64)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from ixt_stream.batch.collate import collate
    from ixt_stream.update.learner import Learner
    from ixt_stream.update.ranks import Ranks, shard

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    samples = synthetic_batch(tok, args.per_batch * (args.steps + 1), random.Random(0))
    groups = [samples[i:i + args.per_batch] for i in range(0, len(samples), args.per_batch)]
    learner = Learner(args.model_dir, zero_stage=args.zero, dtype=args.dtype, lr=1e-4, threads=0)
    ranks = Ranks.current()
    device = learner.engine.device.type

    def step(group: list) -> dict:
        mine = shard(group, ranks.world)[ranks.rank]
        return learner.train_step(collate(mine, pad_id) if mine else None)

    step(groups[0])  # warm-up: allocations, kernels, NCCL/gloo connections
    rows = []
    for group in groups[1:]:
        sync(device)
        t0 = time.perf_counter()
        m = step(group)
        sync(device)
        rows.append({"loss": m["train/loss"], "tokens": m["train/tokens"], "step_s": time.perf_counter() - t0})
    if ranks.is_root:
        result = {"world": ranks.world, "zero_stage": args.zero, "dtype": args.dtype, "rows": rows}
        (Path(args.out) / f"ranks-{ranks.world}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
