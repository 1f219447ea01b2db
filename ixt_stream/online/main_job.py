"""`ixt run [overrides]`: the main job. Evaluate, run the online loop, evaluate again, summarise.

    eval (base model)  ->  ixt up (reward, learner, orchestrator, generators)  ->  wait for the
    learner to reach max_steps (a live progress line)  ->  ixt down  ->  eval (final weights)
    ->  summary: accuracy before/after per condition, samples trained, versions pushed, the
        ledger's conservation check, throughput; a learning-curve PNG.

Each evaluation runs `ixt eval` in its own process, so its vLLM engine is gone before the stack
starts (two cores, and in-process vLLM owns torch's thread settings).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ixt_stream.config import IxtConfig
from ixt_stream.ledger import Ledger
from ixt_stream.online import supervisor


def _eval(overrides: list[str], checkpoint: str, out: Path) -> dict:
    argv = [sys.executable, "-m", "ixt_stream.cli", "eval", *overrides,
            f"eval.checkpoint={checkpoint}", f"eval.output={out}"]
    subprocess.run(argv, check=True)
    return json.loads(out.read_text())


def _progress(cfg: IxtConfig) -> str:
    s = supervisor.read_status(cfg.run.run_dir, "learner")
    if "done" in s:  # the learner's final summary
        return f"learner finished: {s['steps']} steps, {s['samples_trained']} samples, v{s['versions_pushed']}"
    gens = {n: supervisor.read_status(cfg.run.run_dir, f"generator-{n}").get("weights/version")
            for n in range(cfg.generator.num_generators)}
    orch = supervisor.read_status(cfg.run.run_dir, "orchestrator")
    return (f"step {int(s.get('train/step', 0))}/{cfg.learner.max_steps} loss {s.get('train/loss', float('nan')):.3f}"
            f" | v{s.get('weights/version', 0)} gens {gens} | critiques {orch.get('orchestrator/conditioned', 0)}"
            f" | busy {100 * s.get('learner/busy_fraction', 0):.0f}%")


def wait_for_learner(cfg: IxtConfig, overrides: list[str], poll_s: float = 10.0) -> dict:
    """Block until the learner exits; fail early if any service dies."""
    summary_path = Path(cfg.run.run_dir) / "learner_summary.json"
    while True:
        rows = {r["name"]: r for r in supervisor.status(cfg.run.run_dir)}
        if not rows["learner"]["alive"]:
            break
        dead = [n for n, r in rows.items() if not r["alive"]]
        if dead:
            raise RuntimeError(f"services died: {dead}; see {cfg.run.run_dir}/logs/")
        print(f"[{time.strftime('%H:%M:%S')}] {_progress(cfg)}", flush=True)
        time.sleep(poll_s)
    if not summary_path.exists():
        raise RuntimeError(f"the learner exited without a summary; see {cfg.run.run_dir}/logs/learner.log")
    return json.loads(summary_path.read_text())


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    from ixt_stream import models
    from ixt_stream.metrics import plot_curves

    run_dir = Path(cfg.run.run_dir)
    if (run_dir / "learner_summary.json").exists():
        sys.stderr.write(f"{run_dir} holds a finished run; choose another run.run_dir\n")
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"== evaluating the base model ({cfg.model.name})", flush=True)
    before = _eval(overrides, models.resolve(cfg.model), run_dir / "eval_before.json")
    print("== starting the online stack", flush=True)
    supervisor.up(run_dir, supervisor.stack(cfg, overrides))
    try:
        learner = wait_for_learner(cfg, overrides)
    finally:
        supervisor.down(run_dir, grace_s=cfg.run.stop_grace_s)
    print("== evaluating the trained model", flush=True)
    after = _eval(overrides, str(run_dir / "final"), run_dir / "eval_after.json")
    ledger = Ledger(run_dir / "ledger.sqlite").summary()
    plot = plot_curves([run_dir / "metrics" / "learner.jsonl"], run_dir / "learning_curve.png",
                       keys=["train/loss", "critique/score_mean", "learner/samples_per_s", "weights/version"])
    summary = {
        "accuracy_before": {c: before["metrics"][f"eval/{c}/accuracy"] for c in before["conditions"]},
        "accuracy_after": {c: after["metrics"][f"eval/{c}/accuracy"] for c in after["conditions"]},
        "samples_trained": learner["samples_trained"], "versions_pushed": learner["versions_pushed"],
        "steps": learner["steps"], "learner_busy_fraction": learner["busy_fraction"],
        "weight_push_s": learner["push_s"], "staleness": learner["staleness"], "drops": learner["drops"],
        "ledger": ledger, "wall_s": time.time() - t0, "plot": str(plot),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== summary", run_dir)
    for c in summary["accuracy_before"]:
        print(f"  accuracy under {c:<8} conditioning: {summary['accuracy_before'][c]:.3f} -> "
              f"{summary['accuracy_after'].get(c, float('nan')):.3f}")
    busy = 100 * summary["learner_busy_fraction"]
    print(f"  samples trained {summary['samples_trained']} in {summary['steps']} steps; "
          f"weight versions pushed {summary['versions_pushed']}; learner busy {busy:.0f}%")
    print(f"  ledger: generated {ledger['generated']} = trained {ledger['trained']} + dropped {ledger['dropped']} "
          f"+ in flight {ledger['in_flight']}; trained twice {ledger['trained_twice']}")
    print(f"  wall {summary['wall_s']:.0f} s; curves {plot}")
    return 0 if ledger["conserved"] else 1
