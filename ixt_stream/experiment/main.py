"""`ixt experiment [overrides]`: feedback-conditioned pre-training in miniature, end to end and resumable.

    data    one process: the process-verifier critic behind the real reward service critiques every
            mixture's corpus (data.py)
    sweep   the baseline at each lr in `experiment.lrs`, per size whose lr is 0 (first seed, a
            fraction of the budget): the lr with the lowest final expert loss is fixed for every arm
    pilot   every arm at the pilot size (first seed): the gate asks the best final greedy accuracy
            to reach `pilot_gate`, else the experiment stops (the task is too hard for the budget)
    runs    every (size, arm, seed) on the main mixture, and `compare_arms` at the pilot size on
            `compare_mixtures`
    report  invariants, curves, multipliers with intervals, plots and report.md (report.py)

Every run is a subprocess with one torch thread, `experiment.workers` at a time, in seed-major
order. Workers log to `out_dir/logs/<job>.log`; this process prints a line per finished job and,
every 30 s, the latest progress line of each running one. Rerunning skips finished corpora and runs
whose result carries the current fingerprint, so a killed experiment continues where it stopped.
`experiment=<name>` picks a configs/experiment/*.yaml (default: default; quick: the smoke test).
Left out: running on several machines, and retrying a failed job (rerun the command).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ixt_stream import logs, progress
from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.experiment.data import ARMS, worker_env
from ixt_stream.experiment.train_run import fingerprint

log = logging.getLogger("ixt.experiment")
SMOKE = "smoke test, not evidence"


def check(cfg: IxtConfig) -> None:
    """What the schema cannot say about `experiment.*`; raises ConfigError naming the field."""
    from ixt_stream.experiment.world import MIXTURES

    e = cfg.experiment
    for key, arms in (("arms", e.arms), ("compare_arms", e.compare_arms)):
        bad = [a for a in arms if a not in ARMS]
        if bad or "baseline" not in arms:
            raise ConfigError(f"experiment.{key}: need baseline, and only {', '.join(ARMS)} (got {bad or arms})")
    for m in [e.mixture, *e.compare_mixtures]:
        if m not in MIXTURES:
            raise ConfigError(f"experiment.mixture: {m!r} is not one of {', '.join(MIXTURES)}")
    if not e.sizes:
        raise ConfigError("experiment.sizes: no size configured")
    if e.pilot_size and e.pilot_size not in e.sizes:
        raise ConfigError(f"experiment.pilot_size: {e.pilot_size!r} is not one of {', '.join(e.sizes)}")
    if not e.seeds:
        raise ConfigError("experiment.seeds: need at least one")
    if e.checkpoints < 3:
        raise ConfigError("experiment.checkpoints: need at least 3 (the multiplier interpolates between them)")
    if any(s.lr <= 0 for s in e.sizes.values()) and not e.lrs:
        raise ConfigError("experiment.lrs: a size has lr 0 (sweep) but no learning rates are listed")
    if not 0 < e.sweep_fraction <= 1:
        raise ConfigError("experiment.sweep_fraction: must be in (0, 1]")


def pilot_size(cfg: IxtConfig) -> str:
    names = list(cfg.experiment.sizes)
    return cfg.experiment.pilot_size or names[len(names) // 2]


# -- jobs ------------------------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    cmd: list[str]
    log: Path
    deps: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith(("[train", "corpus"))]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def run_jobs(jobs: list[Job], workers: int) -> list[str]:
    """Run jobs (in list order, once their deps succeeded), `workers` at a time; returns failures."""
    pending, running, ok, failed = list(jobs), [], set(), []
    last_status = time.monotonic()
    with progress.bar(total=len(jobs), desc="experiment", unit="job") as bar:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(d in failed for d in job.deps):
                    pending.remove(job)
                    failed.append(job.name)
                    bar.update()
                    progress.write(f"skip {job.name}: a dependency failed")
                elif all(d in ok or d in failed for d in job.deps):
                    pending.remove(job)
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    job.proc = subprocess.Popen(job.cmd, stdout=job.log.open("w"), stderr=subprocess.STDOUT,
                                                env=worker_env())
                    job.started = time.monotonic()
                    running.append(job)
                    progress.write(f"start {job.name}")
            time.sleep(0.3)
            for job in list(running):
                if job.proc.poll() is None:
                    continue
                running.remove(job)
                bar.update()
                took = time.monotonic() - job.started
                if job.proc.returncode == 0:
                    ok.add(job.name)
                    progress.write(f"done  {job.name} ({took:.0f} s) {_last_line(job.log)}")
                else:
                    failed.append(job.name)
                    progress.write(f"FAIL  {job.name} (exit {job.proc.returncode}, {took:.0f} s): see {job.log}")
            if running and time.monotonic() - last_status > 30:
                last_status = time.monotonic()
                for job in running:
                    progress.write(f"  ... {job.name}: {_last_line(job.log) or 'starting'}")
    return failed


class Planner:
    """Turns runs into jobs, skipping those whose result is current."""

    def __init__(self, cfg: IxtConfig, overrides: list[str]):
        self.cfg, self.overrides = cfg, overrides
        self.out = Path(cfg.experiment.out_dir)

    def corpus(self, mixture: str) -> Path:
        return self.out / "data" / f"{mixture}.jsonl"

    def data_job(self) -> list[Job]:
        e = self.cfg.experiment
        todo = {m: str(self.corpus(m)) for m in dict.fromkeys([e.mixture, *e.compare_mixtures])
                if not Path(f"{self.corpus(m)}.done").exists()}
        if not todo:
            return []
        spec = self._spec("data", {"corpora": todo, "log_dir": str(self.out / "logs")})
        return [Job("data", [sys.executable, "-m", "ixt_stream.experiment.data", spec], self.out / "logs" / "data.log")]

    def result(self, kind: str, size: str, mixture: str, arm: str, seed: int, lr: float) -> Path:
        name = f"{arm}-s{seed}" + (f"-lr{lr:g}" if kind == "sweep" else "")
        return self.out / kind / size / mixture / f"{name}.json"

    def run_job(self, kind: str, size: str, mixture: str, arm: str, seed: int, lr: float,
                deps: list[str]) -> Job | None:
        e = self.cfg.experiment
        fraction = e.sweep_fraction if kind == "sweep" else 1.0
        spec = {"size": size, "arm": arm, "seed": seed, "mixture": mixture, "lr": lr, "fraction": fraction}
        fp = fingerprint(e, spec)
        result = self.result(kind, size, mixture, arm, seed, lr)
        if result.exists() and json.loads(result.read_text()).get("fingerprint") == fp:
            return None
        tag = f"{kind}/{size}/{mixture}/{arm}/s{seed}" + (f"/lr{lr:g}" if kind == "sweep" else "")
        spec.update(fingerprint=fp, tag=tag, result=str(result), corpus=str(self.corpus(mixture)))
        path = self._spec(tag, spec)
        return Job(tag, [sys.executable, "-m", "ixt_stream.experiment.train_run", path],
                   self.out / "logs" / f"{tag.replace('/', '-')}.log", deps=deps)

    def _spec(self, name: str, payload: dict) -> str:
        path = self.out / "specs" / f"{name.replace('/', '-')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"overrides": self.overrides, **payload}, indent=1))
        return str(path)


def pick_lrs(cfg: IxtConfig, planner: Planner) -> dict[str, dict]:
    """size -> {"lr", "swept": {lr: final expert loss}}: the configured lr, or the sweep's best."""
    e, out = cfg.experiment, {}
    for size, s in e.sizes.items():
        if s.lr > 0:
            out[size] = {"lr": s.lr, "swept": {}}
            continue
        losses = {}
        for lr in e.lrs:
            path = planner.result("sweep", size, e.mixture, "baseline", e.seeds[0], lr)
            if path.exists():
                last = json.loads(path.read_text())["points"][-1]
                losses[lr] = sum(last["expert_loss"]) / len(last["expert_loss"])
        if not losses:
            raise RuntimeError(f"size {size}: no learning-rate sweep run finished")
        out[size] = {"lr": min(losses, key=losses.get), "swept": {str(k): v for k, v in losses.items()}}
    return out


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    try:
        check(cfg)
    except ConfigError as err:
        sys.stderr.write(f"config error: {err}\n")
        return 2
    logs.setup(cfg.run.log_level, "experiment")
    e = cfg.experiment
    out = Path(e.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(asdict(e), indent=1))
    t0 = time.monotonic()
    planner, pilot, first = Planner(cfg, overrides), pilot_size(cfg), e.seeds[0]
    if e.smoke:
        print(f"experiment: {SMOKE}", flush=True)
    print(f"experiment: {len(e.sizes)} sizes x {len(e.arms)} arms x {len(e.seeds)} seeds on {e.mixture}, "
          f"{len(e.compare_mixtures)} more mixtures at {pilot}; {e.workers} at a time -> {out}", flush=True)

    # -- data, then the lr sweep (baseline only) ---------------------------------------------------
    jobs = planner.data_job()
    deps = [j.name for j in jobs]
    jobs += [j for size, s in e.sizes.items() if s.lr <= 0 for lr in e.lrs
             if (j := planner.run_job("sweep", size, e.mixture, "baseline", first, lr, deps))]
    failed = run_jobs(jobs, e.workers)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)} (rerun to resume)")
        return 1
    lrs = pick_lrs(cfg, planner)
    (out / "lr.json").write_text(json.dumps(lrs, indent=1))
    print("lr: " + ", ".join(f"{k} {v['lr']:g}" for k, v in lrs.items()), flush=True)

    # -- the pilot gate ----------------------------------------------------------------------------
    jobs = [j for arm in e.arms if (j := planner.run_job("runs", pilot, e.mixture, arm, first, lrs[pilot]["lr"], []))]
    failed = run_jobs(jobs, e.workers)
    gate = {"size": pilot, "threshold": e.pilot_gate, "best": {}}
    for arm in e.arms:
        path = planner.result("runs", pilot, e.mixture, arm, first, lrs[pilot]["lr"])
        if path.exists():
            bits = json.loads(path.read_text())["points"][-1]["greedy"]
            gate["best"][arm] = bits.count("1") / len(bits)
    gate["passed"] = bool(gate["best"]) and max(gate["best"].values()) >= e.pilot_gate
    (out / "gate.json").write_text(json.dumps(gate, indent=1))
    print(f"pilot gate at {pilot}: best final greedy accuracy {max(gate['best'].values(), default=0):.3f} "
          f"(needs {e.pilot_gate}): {'passed' if gate['passed'] else 'FAILED'}", flush=True)

    # -- every run ---------------------------------------------------------------------------------
    if gate["passed"] and not failed:
        jobs = [j for seed in e.seeds for size in e.sizes for arm in e.arms
                if (j := planner.run_job("runs", size, e.mixture, arm, seed, lrs[size]["lr"], []))]
        jobs += [j for seed in e.seeds for mixture in e.compare_mixtures for arm in e.compare_arms
                 if (j := planner.run_job("runs", pilot, mixture, arm, seed, lrs[pilot]["lr"], []))]
        failed += run_jobs(jobs, e.workers)
    else:
        print("the pilot gate failed: the task is too hard for this budget; shrink experiment.world.digits "
              "or raise experiment.tokens (the report says so)", flush=True)

    from ixt_stream.experiment.report import write_report

    report_dir = Path(e.report_dir or out / "report")
    summary, lines = write_report(cfg, report_dir, lrs, gate)
    print(f"report -> {report_dir / 'report.md'} ({time.monotonic() - t0:.0f} s)")
    for line in lines:
        print(line)
    broken = [name for name, ok in summary["invariants"].items() if not ok["ok"]]
    for name, ok in summary["invariants"].items():
        print(f"invariant {name}: {'ok' if ok['ok'] else 'BROKEN'} ({ok['detail']})")
    if e.smoke:
        print(f"experiment: {SMOKE}", flush=True)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)} (rerun to resume)")
    return 1 if failed or broken else 0 if gate["passed"] else 3


if __name__ == "__main__":  # the same as `ixt experiment`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["experiment", *sys.argv[1:]]))
