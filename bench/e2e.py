"""End to end against TRL: the same RL workload through ixt-stream's online loop and TRL's GRPOTrainer.

Workload, identical on both sides: the model (`models.resolve`: SmolLM2-135M-Instruct, or the tiny
random Llama under `--quick`), the main job's task (the first training prompts, one JSONL file both
read), its sampling (temperature, top_p) and learning rate, k samples per prompt, the same max new
tokens, the same learner batch (completions per optimizer step) and number of optimizer steps.

- ixt-stream: `ixt up` (reward verifier, learner, orchestrator, one generator: the CPU profile)
  with overrides that fix the workload; the learner's metrics JSONL gives each step's end time,
  `learner_summary.json` the samples trained.
- TRL at its best on this CPU: `bench/trl_peer.py` in `bench/.venv-trl` (created here on first
  use), one process; bf16 weights with one thread and with all cores, and fp32 weights under bf16
  autocast at the better thread count; the fastest is the peer (`--quick`: bf16, one thread).

Figures: samples trained per second in steady state (between the first and the last optimizer
step, start-up excluded on both sides), wall time from launch to the last step (start-up
included), and what the updates taught: greedy accuracy on the main job's held-out problems
(`ixt eval`, disjoint from the training prompts) of both trained models (ixt-stream under its
positive prefix, TRL without one) and of the base model under the same conditions, with paired
bootstrap CIs, and the gain over the base per wall-clock minute. ixt-stream also trains on a
feedback prefix TRL does not have (longer sequences): that costs ixt-stream, not TRL.
Left out: TRL's vLLM colocate mode (see trl_peer.py: slower than its HF mode on this CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, port_overrides, prompts_jsonl, read_jsonl, run_stack, steady_rate, workdir
from bench.report import Result, Row
from ixt_stream.ledger import Ledger

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


def sizes(quick: bool, cfg) -> dict:
    """The workload: the CPU profile's sampling and learning rate, k, batch, length and steps."""
    s = cfg.generator.sampling
    base = {"k": 4, "batch": 16, "temperature": s.temperature, "top_p": s.top_p, "lr": cfg.learner.lr}
    if quick:
        return {**base, "model": "tiny", "max_new_tokens": 32, "steps": 5}
    return {**base, "model": "smollm2-135m", "max_new_tokens": 64, "steps": 8}


def run_ixt(w: dict, prompts: Path, run_dir: Path) -> dict:
    overrides = [
        f"model={'tiny' if w['model'] == 'tiny' else 'smollm2'}", f"task.prompts_file={prompts}",
        f"generator.samples_per_prompt={w['k']}", f"generator.prompts_per_request={max(w['batch'] // w['k'], 1)}",
        f"generator.sampling.max_new_tokens={w['max_new_tokens']}",
        f"generator.sampling.temperature={w['temperature']}", f"generator.sampling.top_p={w['top_p']}",
        f"learner.max_steps={w['steps']}", f"learner.max_samples_per_batch={w['batch']}",
        f"learner.tokens_per_batch={w['batch'] * 512}", "condition.max_seq_len=512", f"learner.lr={w['lr']}",
        "condition.truncated=train",  # TRL trains on every completion, cut or not (and the tiny model is always cut)
        "learner.dtype=bf16", *port_overrides(run_dir, "e2e"),
    ]
    out = run_stack(overrides, timeout_s=3600)
    rows = [r for r in read_jsonl(run_dir / "metrics" / "learner.jsonl") if r.get("train/applied")]
    ends = [r["time"] for r in rows]
    per_step = [r["train/samples"] for r in rows]
    s = out["summary"]
    gens = read_jsonl(run_dir / "metrics" / "generator-0.jsonl")
    return {
        "overrides": overrides, "final": str(run_dir / "final"), "steps": s["steps"], "samples": s["samples_trained"],
        "steady_samples_per_s": steady_rate(ends, per_step),
        "wall_to_last_step_s": (ends[-1] - out["started"]) if ends else out["wall_s"],
        "first_step_after_launch_s": (ends[0] - out["started"]) if ends else None,
        "learner_busy_fraction": s["busy_fraction"], "learner_wait_s": s["wait_s"],
        "drops": s["drops"], "ledger_dropped": Ledger(run_dir / "ledger.sqlite").summary()["dropped_by_reason"],
        "staleness": s["staleness"], "versions_pushed": s["versions_pushed"],
        "mean_step_s": sum(r["train/step_s"] for r in rows) / max(len(rows), 1),
        "mean_tokens_per_step": sum(r["train/tokens"] for r in rows) / max(len(rows), 1),
        "generator_tokens_per_s": gens[-1]["generator/tokens_per_s"] if gens else None,
        "score_mean": sum(r.get("critique/score_mean", 0) for r in rows) / max(len(rows), 1),
    }


def run_trl(w: dict, prompts: Path, model_dir: str, out: Path, threads: int, dtype: str) -> dict:
    py = trl_python()
    argv = [str(py), str(ROOT / "bench" / "trl_peer.py"), "--model", model_dir, "--prompts", str(prompts),
            "--k", str(w["k"]), "--max-new-tokens", str(w["max_new_tokens"]), "--batch", str(w["batch"]),
            "--steps", str(w["steps"]), "--lr", str(w["lr"]), "--threads", str(threads), "--dtype", dtype,
            "--temperature", str(w["temperature"]), "--top-p", str(w["top_p"]),
            "--save", str(out.with_suffix(".final")), "--out", str(out)]
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
        "threads": r["threads"], "dtype": r["dtype"], "final": str(out.with_suffix(".final")),
        "step_time_s": [h.get("step_time") for h in r["log_history"] if "step_time" in h],
    }


def held_out(w: dict, ixt: dict, trl: dict, work: Path) -> dict:
    """Greedy accuracy on the main job's held-out problems: both trained models and the base model
    under the same conditions, paired bootstrap CIs over problems. ixt-stream's model is read under
    its positive prefix (under none if it never trained on a right sample, so has none)."""
    from ixt_stream.condition import record
    from ixt_stream.config import ConditionConfig
    from ixt_stream.offline.paired import paired_ci, scores_by_condition
    from ixt_stream.online.main_job import positive_prefix, run_eval

    common = [f"model={'tiny' if w['model'] == 'tiny' else 'smollm2'}", f"run.run_dir={work / 'eval'}",
              f"eval.sampling.max_new_tokens={w['max_new_tokens']}"]
    found = record.read(ixt["final"], ConditionConfig())
    cond = "positive" if found and found[1] and found[1].positive else "none"  # no right sample, no positive
    reports = {
        "ixt": run_eval([*common, f"eval.conditions=[{cond}]"], ixt["final"], work / "eval_ixt.json"),
        "trl": run_eval([*common, "eval.conditions=[none]"], trl["final"], work / "eval_trl.json"),
        "base": run_eval([*common, f"eval.condition_from={ixt['final']}", f"eval.conditions=[{cond},none]"],
                         ixt["base_model"], work / "eval_base.json"),
    }
    by = {k: scores_by_condition(r) for k, r in reports.items()}
    ixt_s, trl_s = by["ixt"][cond], by["trl"]["none"]
    ids = sorted(ixt_s.keys() & trl_s.keys())

    def scores(side: str, condition: str) -> list[float]:
        return [by[side][condition][i] for i in ids]

    return {
        "problems": len(ids), "ixt_condition": cond, "ixt": sum(scores("ixt", cond)) / len(ids),
        "trl_none": sum(scores("trl", "none")) / len(ids),
        "base_ixt_condition": sum(scores("base", cond)) / len(ids),
        "base_none": sum(scores("base", "none")) / len(ids),
        "ixt_minus_trl": paired_ci(scores("trl", "none"), scores("ixt", cond)),
        "ixt_gain": paired_ci(scores("base", cond), scores("ixt", cond)),
        "trl_gain": paired_ci(scores("base", "none"), scores("trl", "none")),
        "positive_prefix": positive_prefix(reports["ixt"]),
    }


def run(quick: bool = False) -> Result:
    from ixt_stream import models
    from ixt_stream.config import ModelConfig, load

    cfg = load([])  # the main job's config: its task, sampling and learning rate
    w = sizes(quick, cfg)
    model_dir = models.resolve(ModelConfig(name=w["model"]))
    work = workdir("e2e")
    prompts = prompts_jsonl(work / "prompts.jsonl", 4000, cfg.task)
    load_avg = {"before": os.getloadavg()}
    ixt = {**run_ixt(w, prompts, work / "ixt"), "base_model": model_dir}
    load_avg["after_ixt"] = os.getloadavg()
    # TRL's best thread count on a shared 2-core machine varies with the neighbours' load (tiny
    # model, busy neighbours: 11-22 s/step with 1 thread vs 29 s with 2), so the full size tries
    # 1 thread and all cores with bf16 weights, then fp32 weights under autocast at the better one.
    if quick:
        trls = [run_trl(w, prompts, model_dir, work / "trl-1-bf16.json", 1, "bf16")]
    else:
        trls = [run_trl(w, prompts, model_dir, work / f"trl-{t}-bf16.json", t, "bf16")
                for t in sorted({1, os.cpu_count() or 2})]
        t = max(trls, key=lambda r: r["steady_samples_per_s"])["threads"]
        trls.append(run_trl(w, prompts, model_dir, work / f"trl-{t}-autocast.json", t, "autocast"))
    trl = max(trls, key=lambda r: r["steady_samples_per_s"])
    load_avg["after_trl"] = os.getloadavg()
    acc = held_out(w, ixt, trl, work)
    load_avg["after_eval"] = os.getloadavg()

    result = Result("e2e", quick=quick)
    note = " (tiny random model)" if w["model"] == "tiny" else " (SmolLM2-135M)"
    peer = f"TRL GRPOTrainer, {trl['dtype']}, {trl['threads']} thread(s)"
    ratio = ixt["steady_samples_per_s"] / max(trl["steady_samples_per_s"], 1e-12)
    result.rows.append(Row(f"samples trained/s, steady state{note}", ixt["steady_samples_per_s"],
                           trl["steady_samples_per_s"], peer, "samples/s", True, ">= 3x", ratio >= 3.0))
    result.rows.append(Row(f"wall time, launch -> {w['steps']} learner updates{note}", ixt["wall_to_last_step_s"],
                           trl["wall_to_last_step_s"], peer, "s", False, "", None))
    d = acc["ixt_minus_trl"]
    result.rows.append(Row(f"held-out accuracy after {w['steps']} updates ({acc['problems']} problems, greedy; "
                           f"ixt-stream under its {acc['ixt_condition']} prefix, diff {d['diff']:+.3f} "
                           f"[{d['lo']:+.3f}, {d['hi']:+.3f}])", acc["ixt"], acc["trl_none"], peer, "accuracy", True,
                           "not worse (CI reaches 0)", d["hi"] >= 0))
    per_min = {k: acc[f"{k}_gain"]["diff"] / (side["wall_to_last_step_s"] / 60)
               for k, side in (("ixt", ixt), ("trl", trl))}
    result.rows.append(Row("held-out accuracy gain over the base model per wall-clock minute (CIs in details)",
                           per_min["ixt"], per_min["trl"], peer, "accuracy/min", True, "", None))
    wasted = ixt["drops"].get("stale", 0)
    result.rows.append(Row("critiques wasted: samples critiqued, then dropped stale by the learner (no faults)",
                           wasted, 0, "goal", "critiques", False, "= 0", wasted == 0))
    result.details.update({
        "workload": {**w, "model_dir": model_dir, "prompts": str(prompts),
                     "ixt": "ixt up, CPU profile (reward, learner, orchestrator, 1 generator) with "
                            "learner.dtype=bf16",
                     "trl": "one process, the fastest of bf16 weights x {1 thread, all cores} and fp32 "
                            "weights under bf16 autocast; transformers generate; gradient checkpointing "
                            "off; beta=0"},
        "ixt": ixt, "trl": trl, "trl_tries": trls, "ratio_steady": ratio, "held_out": acc,
        "accuracy_gain_per_min": per_min, "ixt_samples_per_s": ixt["steady_samples_per_s"],
        "loadavg": load_avg, "workdir": str(work),
    })
    return result
