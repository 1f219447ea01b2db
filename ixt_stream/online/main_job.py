"""`ixt run [overrides]`: the main job. Run the online loop, evaluate, summarise.

    ixt up (reward, learner, orchestrator, generators)  ->  wait for the learner to reach
    max_steps (a live progress line)  ->  ixt down  ->  eval (final weights)  ->  eval (the base
    model under the very same prefixes: the control)  ->  summary: accuracy per condition before
    and after with paired bootstrap 95% CIs over held-out problems, the positive - negative gap
    before and after, samples trained, versions pushed, the ledger's conservation check; a
    learning-curve PNG and `report.md` (`ixt_stream.report`: the same numbers with pictures).

The base model is evaluated after training because its prefixes are the trained model's: the
critiques it most often trained with label good at the best score and bad at the worst
(recorded beside the final weights). Its greedy completions are read back from the eval cache
when an earlier run had the same prefixes (`eval.cache`).

Run with `condition.mode=label` it is also the experiment's post-training scale (SmolLM2, the
label arm): the summary's go/no-go asks the trained positive - negative gap to exceed
`PILOT_GAP` before a longer post-training experiment is worth its compute.

Each evaluation runs `ixt eval` in its own process, so its vLLM engine is gone before the stack
starts (two cores, and in-process vLLM owns torch's thread settings).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ixt_stream import metrics
from ixt_stream.config import IxtConfig
from ixt_stream.ledger import Ledger
from ixt_stream.online import launch, supervisor


def run_eval(overrides: list[str], checkpoint: str, out: Path) -> dict:
    """`ixt eval` of `checkpoint` in a process of its own; its JSON report."""
    argv = [sys.executable, "-m", "ixt_stream.cli", "eval", *overrides,
            f"eval.checkpoint={checkpoint}", f"eval.output={out}"]
    subprocess.run(argv, check=True)
    return json.loads(out.read_text())


def _progress(cfg: IxtConfig) -> str:
    s = metrics.read_status(cfg.run.run_dir, "learner")
    if "done" in s:  # the learner's final summary
        return f"learner finished: {s['steps']} steps, {s['samples_trained']} samples, v{s['versions_pushed']}"
    gens = {n: metrics.read_status(cfg.run.run_dir, f"generator-{n}").get("weights/version")
            for n in range(cfg.generator.num_generators)}
    orch = metrics.read_status(cfg.run.run_dir, "orchestrator")
    return (f"step {int(s.get('train/step', 0))}/{cfg.learner.max_steps} loss {s.get('train/loss', float('nan')):.3f}"
            f" | v{s.get('weights/version', 0)} gens {gens} | critiques {orch.get('orchestrator/conditioned', 0)}"
            f" | busy {100 * s.get('learner/busy_fraction', 0):.0f}%")


def wait_for_learner(cfg: IxtConfig, overrides: list[str], poll_s: float = 10.0) -> dict:
    """Block until the learner exits; fail early if any service dies."""
    summary_path = Path(cfg.run.run_dir) / "learner_summary.json"
    while True:
        rows = {r["name"]: r for r in launch.launched(cfg)}
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


PILOT_GAP = 0.1
"""The post-training pilot's bar (issue 12): a trained positive - negative gap above it is a go."""


def go_no_go(gap_after: dict) -> dict:
    """The post-training pilot's verdict on the trained model's positive - negative gap."""
    return {"threshold": PILOT_GAP, "gap": gap_after["diff"], "go": gap_after["diff"] > PILOT_GAP}


def positive_prefix(report: dict) -> str:
    """The positive feedback as the model reads it: in label mode the quality head alone, whatever
    critique the record names."""
    from ixt_stream.condition.format import feedback_text
    from ixt_stream.types import Label

    return feedback_text(Label.GOOD, report["feedback"].get("positive", ["", ""])[1], report["condition_mode"])


def _ci(c: dict) -> str:
    return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def print_summary(summary: dict) -> None:
    """The main job's verdict: accuracy per condition before/after with paired 95% CIs."""
    before, after, change = summary["accuracy_before"], summary["accuracy_after"], summary["change"]
    print(f"\n== summary {summary['run_dir']}")
    print(f"  held-out: {summary['eval_problems']} distinct problems, none in the training stream; "
          f"exact accuracy, paired bootstrap 95% CIs over problems")
    print("  positive prefix (the feedback most often trained with label good at the best score): "
          f"{summary['positive_prefix']!r}")
    print(f"  {'condition':<10}{'base model':>12}{'trained':>10}   after - before [95% CI]")
    for c in after:  # `unseen` is a probe of the trained model only: the base model has no row to pair
        base = f"{before[c]:>12.3f}" if c in before else f"{'-':>12}"
        ci = _ci(change[c]) if c in change else "(trained model only)"
        print(f"  {c:<10}{base}{after[c]:>10.3f}   {ci}")
    print("  (base model = the control: the base model under the very same prefixes)")
    if "gap" in change:
        print(f"  positive - negative gap: base {_ci(summary['gap_before'])} -> trained {_ci(summary['gap_after'])}; "
              f"change {_ci(change['gap'])}")
    if summary.get("pilot"):
        pilot = summary["pilot"]
        print(f"  post-training pilot: trained gap {pilot['gap']:+.3f} vs the bar {pilot['threshold']:+.3f}: "
              f"{'go' if pilot['go'] else 'no-go'}")
    busy = 100 * summary["learner_busy_fraction"]
    ledger = summary["ledger"]
    print(f"  samples trained {summary['samples_trained']} in {summary['steps']} steps; "
          f"weight versions pushed {summary['versions_pushed']}; learner busy {busy:.0f}%")
    print(f"  ledger: generated {ledger['generated']} = trained {ledger['trained']} + dropped {ledger['dropped']} "
          f"+ in flight {ledger['in_flight']}; trained twice {ledger['trained_twice']}")
    print(f"  skipped, by reason: {summary['skipped']}")
    print(f"  wall {summary['wall_s']:.0f} s; curves {summary['plot']}")


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    from ixt_stream import models
    from ixt_stream.offline.paired import compare
    from ixt_stream.report import LEARNER_CURVES, render

    run_dir = Path(cfg.run.run_dir)
    if (run_dir / "learner_summary.json").exists():
        sys.stderr.write(f"{run_dir} holds a finished run; choose another run.run_dir\n")
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("== starting the online stack", flush=True)
    supervisor.up(run_dir, supervisor.stack(cfg, overrides))
    try:
        learner = wait_for_learner(cfg, overrides)
    finally:
        supervisor.down(run_dir, grace_s=cfg.run.stop_grace_s)
    final = run_dir / "final"
    print("== evaluating the trained model", flush=True)
    after = run_eval(overrides, str(final), run_dir / "eval_after.json")
    print(f"== evaluating the base model ({cfg.model.name}) under the same prefixes (the control)", flush=True)
    conditions = ",".join(c for c in cfg.eval.conditions if c != "unseen")  # the unseen probe: trained only
    control = [a for a in overrides if not a.startswith("eval.conditions=")] + [
        f"eval.condition_from={final}", f"eval.conditions=[{conditions}]", "eval.cache=true"]
    before = run_eval(control, models.resolve(cfg.model), run_dir / "eval_before.json")
    ledger = Ledger(run_dir / "ledger.sqlite").summary()
    plot = metrics.plot_curves([run_dir / "metrics" / "learner.jsonl"], run_dir / "learning_curve.png",
                               keys=LEARNER_CURVES)
    summary = {
        "run_dir": str(run_dir), "eval_problems": int(after["metrics"]["eval/num_prompts"]),
        "positive_prefix": positive_prefix(after),
        "accuracy_before": {c: before["metrics"][f"eval/{c}/accuracy"] for c in before["conditions"]},
        "accuracy_after": {c: after["metrics"][f"eval/{c}/accuracy"] for c in after["conditions"]},
        "change": compare(before, after, cfg.eval.bootstrap),
        "gap_before": before["gap_ci"], "gap_after": after["gap_ci"],
        "pilot": go_no_go(after["gap_ci"]) if after.get("gap_ci") else None,
        "samples_trained": learner["samples_trained"], "versions_pushed": learner["versions_pushed"],
        "steps": learner["steps"], "learner_busy_fraction": learner["busy_fraction"],
        "weight_push_s": learner["push_s"], "staleness": learner["staleness"], "drops": learner["drops"],
        "ledger": ledger, "wall_s": time.time() - t0, "plot": str(plot),
        "skipped": {**ledger["dropped_by_reason"],
                    **{f"rejected_frames/{k}": v for k, v in learner.get("rejected_frames", {}).items()},
                    "prompts_too_long": sum(metrics.read_status(run_dir, f"generator-{i}").get(
                        "generator/prompts_too_long", 0) for i in range(cfg.generator.num_generators))},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"  report {render(run_dir)}")
    return 0 if ledger["conserved"] else 1
