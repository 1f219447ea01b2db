"""Every checkpoint of a scale's runs on one vLLM engine: `python -m ixt_stream.experiment.eval_runs spec.json`.

All runs of a scale share one model shape, so one engine serves them all: each milestone's state
dict is swapped in with `Engine.reload_weights(state_dict=...)` (well under a second for these
models) instead of starting an engine per checkpoint (tens of seconds each on CPU). Held-out
prompts are `tasks.eval_prompts(experiment.task)` (a seed the training pool never uses), decoding
is greedy, and scoring is reasoning-gym's own, through `offline.evaluate.evaluate`: `accuracy` reads
the tagged answer or else the last number (as `ixt eval` does), `strict_accuracy` tagged answers only.

Earlier checkpoints are evaluated under the arm's inference condition only ("positive", which for
a mode-none arm is the bare prompt); the final one under every `experiment.eval_conditions`, for
the conditioning gap. Each run's result is written atomically to `results/<scale>/<arm>-s<seed>.json`
and its checkpoints are then deleted (unless `keep_checkpoints`); a run with a result is skipped.
On CPU, `Engine.reload_weights` repacks vLLM's linear kernels after each swap (see
`sample/engine.py`), so every checkpoint is evaluated with all of its weights.
Left out: sampling several answers per prompt (pass@k) and judging answers with an LLM critic.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from ixt_stream.experiment.data import ARM_MODES


def result_path(out_dir: str | Path, scale: str, arm: str, seed: int) -> Path:
    return Path(out_dir) / "results" / scale / f"{arm}-s{seed}.json"


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
    tmp.replace(path)


def evaluate_scale(spec: dict) -> int:
    import torch

    from ixt_stream import models, tasks
    from ixt_stream.condition.format import Conditioner, InferenceFeedback
    from ixt_stream.config import load
    from ixt_stream.offline.evaluate import evaluate
    from ixt_stream.sample.engine import Engine

    cfg = load(spec["overrides"])
    e, scale = cfg.experiment, cfg.experiment.scales[spec["scale"]]
    if all(result_path(e.out_dir, spec["scale"], r["arm"], r["seed"]).exists() for r in spec["runs"]):
        return 0  # evaluated already (by an earlier or a parallel process): no engine to build
    prompts = tasks.eval_prompts(e.task)
    tokenizer = models.load_tokenizer(spec["model_dir"])
    engine = Engine(spec["model_dir"], dtype="bfloat16", max_model_len=cfg.condition.max_seq_len, kv_cache_gib=1,
                    threads=1, seed=0)
    done = 0
    for run in spec["runs"]:
        out = result_path(e.out_dir, spec["scale"], run["arm"], run["seed"])
        if out.exists():
            continue
        train = json.loads((Path(run["run_dir"]) / "train.json").read_text())
        if not train.get("done"):
            print(f"[eval {spec['scale']}] {run['arm']}-s{run['seed']}: training not finished, skipped", flush=True)
            continue
        mode = ARM_MODES[run["arm"]]
        inference = InferenceFeedback(**train["inference"]) if train.get("inference") else None
        conditioner = Conditioner.from_config(tokenizer, dataclasses.replace(cfg.condition, mode=mode),
                                              inference=inference)
        points, examples, t0 = [], [], time.perf_counter()
        for i, milestone in enumerate(train["milestones"]):
            final = i == len(train["milestones"]) - 1
            state = torch.load(milestone["path"], map_location="cpu", weights_only=True)
            engine.reload_weights(state_dict=state)
            conditions = list(e.eval_conditions) if final else ["positive"]
            result = evaluate(engine, conditioner, prompts, conditions, scale.eval_max_new_tokens, 0.0)
            metrics = result["metrics"]
            points.append({**{k: milestone[k] for k in ("index", "step", "tokens", "flops")},
                           "accuracy": metrics["eval/positive/accuracy"],
                           "strict_accuracy": metrics["eval/positive/strict_accuracy"],
                           "answered": metrics["eval/positive/answered"],
                           "conditions": {c: {"accuracy": metrics[f"eval/{c}/accuracy"],
                                              "strict_accuracy": metrics[f"eval/{c}/strict_accuracy"],
                                              "answered": metrics[f"eval/{c}/answered"],
                                              "response_tokens": metrics[f"eval/{c}/response_tokens"]}
                                          for c in conditions}})
            if final:  # a few answers per condition, for the report to show what the model writes
                examples = [s for c in conditions for s in [x for x in result["samples"] if x["condition"] == c][:2]]
        payload = {"scale": spec["scale"], "arm": run["arm"], "seed": run["seed"], "mode": mode,
                   "fingerprint": train.get("fingerprint"),
                   "params": train["params"], "budget_tokens": train["budget_tokens"],
                   "samples_seen": train["samples_seen"], "epochs": train["epochs"],
                   "train_seconds": train["seconds"], "loss": train["loss"], "points": points,
                   "examples": examples, "num_eval_prompts": len(prompts)}
        write_atomic(out, payload)
        if not e.keep_checkpoints:
            for milestone in train["milestones"]:
                Path(milestone["path"]).unlink(missing_ok=True)
        done += 1
        print(f"[eval {spec['scale']}] {run['arm']}-s{run['seed']}: accuracy "
              + " ".join(f"{p['accuracy']:.2f}" for p in points)
              + f" | final {json.dumps({c: round(v['accuracy'], 3) for c, v in points[-1]['conditions'].items()})}"
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return done


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    n = evaluate_scale(spec)
    print(f"[eval {spec['scale']}] {n} runs evaluated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
