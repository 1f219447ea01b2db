"""End to end against TRL: the same RL workload through ixt-stream's online loop and TRL's GRPOTrainer.

Workload, identical on both sides: the model (`models.resolve`: SmolLM2-135M-Instruct, or the tiny
random Llama under `--quick`), the first reasoning-gym prompts (one JSONL file both read), k samples
per prompt, the same max new tokens, temperature 1, the same learner batch (completions per
optimizer step) and the same number of optimizer steps, bf16 compute with fp32 master weights.

- ixt-stream: `ixt up` (reward verifier, learner, orchestrator, one generator; each process one
  thread, the CPU profile) with overrides that fix the workload; the learner's metrics JSONL gives
  each step's end time, `learner_summary.json` the samples trained.
- TRL: `bench/trl_peer.py` in `bench/.venv-trl` (created here on first use), one process, one
  thread and all cores, the faster kept (`--quick`: one thread).

Figures: samples trained per second in steady state (between the first and the last optimizer
step, start-up excluded on both sides), and wall time from launch to the last step (start-up
included). Each side's start-up is in details. ixt-stream also trains on a feedback prefix TRL
does not have (longer sequences): that costs ixt-stream, not TRL.
Left out: TRL's vLLM colocate mode (see trl_peer.py), reward/accuracy comparisons (not a speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, port_overrides, prompts_jsonl, read_jsonl, run_stack, steady_rate, workdir
from bench.report import Result, Row

TRL_VENV = ROOT / "bench" / ".venv-trl"


def trl_python() -> Path:
    """bench/.venv-trl/bin/python, creating the venv on first use (torch CPU + trl + reasoning-gym)."""
    py = TRL_VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import trl, reasoning_gym"], capture_output=True).returncode == 0:
        return py
    print("creating bench/.venv-trl (torch 2.13 CPU, trl 1.16): a few minutes, once", flush=True)
    subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(TRL_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first, alone: the CPU wheel, never a CUDA one
    subprocess.run([*pip, "trl==1.16.0", "reasoning_gym"], check=True)
    return py


def sizes(quick: bool) -> dict:
    if quick:
        return {"model": "tiny", "k": 4, "max_new_tokens": 32, "batch": 16, "steps": 5}
    return {"model": "smollm2-135m", "k": 4, "max_new_tokens": 64, "batch": 16, "steps": 8}


def run_ixt(w: dict, prompts: Path, run_dir: Path) -> dict:
    overrides = [
        f"model={'tiny' if w['model'] == 'tiny' else 'smollm2'}", f"task.prompts_file={prompts}",
        f"generator.samples_per_prompt={w['k']}", f"generator.prompts_per_request={max(w['batch'] // w['k'], 1)}",
        f"generator.sampling.max_new_tokens={w['max_new_tokens']}", "generator.sampling.temperature=1.0",
        f"learner.max_steps={w['steps']}", f"learner.max_samples_per_batch={w['batch']}",
        f"learner.tokens_per_batch={w['batch'] * 512}", "condition.max_seq_len=512", "learner.lr=1e-5",
        "learner.dtype=bf16", *port_overrides(run_dir, "e2e"),
    ]
    out = run_stack(overrides, timeout_s=3600)
    rows = [r for r in read_jsonl(run_dir / "metrics" / "learner.jsonl") if r.get("train/applied")]
    ends = [r["time"] for r in rows]
    per_step = [r["train/samples"] for r in rows]
    s = out["summary"]
    gens = read_jsonl(run_dir / "metrics" / "generator-0.jsonl")
    return {
        "overrides": overrides, "steps": s["steps"], "samples": s["samples_trained"],
        "steady_samples_per_s": steady_rate(ends, per_step),
        "wall_to_last_step_s": (ends[-1] - out["started"]) if ends else out["wall_s"],
        "first_step_after_launch_s": (ends[0] - out["started"]) if ends else None,
        "learner_busy_fraction": s["busy_fraction"], "learner_wait_s": s["wait_s"],
        "drops": s["drops"], "staleness": s["staleness"], "versions_pushed": s["versions_pushed"],
        "mean_step_s": sum(r["train/step_s"] for r in rows) / max(len(rows), 1),
        "mean_tokens_per_step": sum(r["train/tokens"] for r in rows) / max(len(rows), 1),
        "generator_tokens_per_s": gens[-1]["generator/tokens_per_s"] if gens else None,
        "score_mean": sum(r.get("critique/score_mean", 0) for r in rows) / max(len(rows), 1),
    }


def run_trl(w: dict, prompts: Path, model_dir: str, out: Path, threads: int) -> dict:
    py = trl_python()
    argv = [str(py), str(ROOT / "bench" / "trl_peer.py"), "--model", model_dir, "--prompts", str(prompts),
            "--k", str(w["k"]), "--max-new-tokens", str(w["max_new_tokens"]), "--batch", str(w["batch"]),
            "--steps", str(w["steps"]), "--lr", "1e-5", "--threads", str(threads), "--bf16",
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    t0 = time.time()
    log = out.with_suffix(".log")
    with log.open("w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"trl_peer failed:\n{log.read_text()[-3000:]}")
    r = json.loads(out.read_text())
    ends = r["step_ends"]
    return {
        "argv": argv[1:], "steps": r["steps"], "samples": r["samples"],
        "steady_samples_per_s": steady_rate(ends, [w["batch"]] * len(ends)),
        "wall_to_last_step_s": r["load_s"] + ends[-1] if ends else time.time() - t0,
        "first_step_after_launch_s": r["load_s"] + ends[0] if ends else None,
        "load_s": r["load_s"], "train_s": r["train_s"], "reward_mean": r["reward_mean"],
        "threads": r["threads"], "bf16": r["bf16"],
        "step_time_s": [h.get("step_time") for h in r["log_history"] if "step_time" in h],
    }


def run(quick: bool = False) -> Result:
    from ixt_stream import models
    from ixt_stream.config import ModelConfig

    w = sizes(quick)
    model_dir = models.resolve(ModelConfig(name=w["model"]))
    work = workdir("e2e")
    prompts = prompts_jsonl(work / "prompts.jsonl", 4000)
    load = {"before": os.getloadavg()}
    ixt = run_ixt(w, prompts, work / "ixt")
    load["after_ixt"] = os.getloadavg()
    # TRL's best thread count on a shared 2-core machine varies with the neighbours' load (tiny
    # model, busy neighbours: 11-22 s/step with 1 thread vs 29 s with 2), so the full size tries
    # 1 thread and all cores and compares against the faster; --quick tries 1 thread only.
    tries = [1] if quick else sorted({1, os.cpu_count() or 2})
    trls = [run_trl(w, prompts, model_dir, work / f"trl-{t}.json", t) for t in tries]
    trl = max(trls, key=lambda r: r["steady_samples_per_s"])
    load["after_trl"] = os.getloadavg()

    result = Result("e2e", quick=quick)
    note = " (tiny random model)" if w["model"] == "tiny" else " (SmolLM2-135M)"
    ratio = ixt["steady_samples_per_s"] / max(trl["steady_samples_per_s"], 1e-12)
    result.rows.append(Row(f"samples trained/s, steady state{note}", ixt["steady_samples_per_s"],
                           trl["steady_samples_per_s"], "TRL GRPOTrainer", "samples/s", True, ">= 2x",
                           ratio >= 2.0))
    result.rows.append(Row(f"wall time, launch -> {w['steps']} learner updates{note}", ixt["wall_to_last_step_s"],
                           trl["wall_to_last_step_s"], "TRL GRPOTrainer", "s", False, "", None))
    result.details.update({
        "workload": {**w, "model_dir": model_dir, "prompts": str(prompts), "temperature": 1.0,
                     "dtype": "bf16 compute, fp32 master weights (both)",
                     "ixt": "ixt up, CPU profile: one thread per process (reward, learner, orchestrator, 1 generator)",
                     "trl": "one process, the faster of 1 thread and all cores; transformers generate; "
                            "gradient checkpointing off; beta=0"},
        "ixt": ixt, "trl": trl, "trl_tries": trls, "ratio_steady": ratio,
        "ixt_samples_per_s": ixt["steady_samples_per_s"],
        "loadavg": load, "workdir": str(work),
    })
    return result
