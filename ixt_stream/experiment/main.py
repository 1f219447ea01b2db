"""`ixt experiment [overrides]`: the paper's claim in miniature, end to end and resumable.

    data    one annotated pool per response source (data.py: real reward service + annotate)
    train   one process per (scale, arm, seed): DeepSpeed learner, state dicts at FLOPs milestones
    eval    one process per scale: one vLLM engine, weights swapped per checkpoint
    report  curves, multipliers with bootstrap CIs, plots and report.md (report.py)

Every step is a subprocess with one torch thread, `experiment.workers` at a time. Runs go in
seed-major order (every scale's first seed, then the next), so an experiment stopped early still
covers every scale; a scale's evaluation is queued right after its last run, so it starts as soon
as that scale is trained. Workers log to
`out_dir/logs/<job>.log`; this process prints a line per finished job and, every 30 s, the latest
progress line of each running one. Rerunning skips finished pools, trained runs and evaluated
runs, so a killed experiment continues where it stopped. `experiment=<name>` picks a
configs/experiment/*.yaml (default: default).
Left out: running scales on several machines, and retrying a failed job (rerun the command).
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
from ixt_stream.experiment.data import ARM_MODES, fingerprint, pool_name, worker_env
from ixt_stream.experiment.eval_runs import result_path

log = logging.getLogger("ixt.experiment")


def check(cfg: IxtConfig) -> None:
    """What the schema cannot say about `experiment.*`; raises ConfigError naming the field."""
    e = cfg.experiment
    bad = [a for a in e.arms if a not in ARM_MODES]
    if bad or "baseline" not in e.arms:
        raise ConfigError(f"experiment.arms: need baseline, and only {', '.join(ARM_MODES)} (got {bad or e.arms})")
    if not e.scales:
        raise ConfigError("experiment.scales: no scale configured")
    if len(e.seeds) < 1:
        raise ConfigError("experiment.seeds: need at least one")
    for name, s in e.scales.items():
        if s.milestones < 1:
            raise ConfigError(f"experiment.scales.{name}.milestones: need at least one")
        if s.responses not in ("synthetic", "policy", "policy+synthetic"):
            raise ConfigError(f"experiment.scales.{name}.responses: synthetic | policy | policy+synthetic, "
                              f"not {s.responses!r}")
        if s.model == "tiny" and s.tiny.hidden_size // s.tiny.num_heads != 64:
            raise ConfigError(f"experiment.scales.{name}.tiny: hidden_size / num_heads must be 64 (vLLM CPU)")
    if e.tokens_per_batch < cfg.condition.max_seq_len:
        raise ConfigError("experiment.tokens_per_batch: must be >= condition.max_seq_len "
                          f"({cfg.condition.max_seq_len})")


@dataclass
class Job:
    name: str
    cmd: list[str]
    log: Path
    deps: list[str] = field(default_factory=list)
    after_failures: bool = False
    """Start once the deps have finished, even if some failed (evaluation: it skips untrained runs)."""
    proc: subprocess.Popen | None = None
    started: float = 0.0


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                 if ln.startswith(("[train", "[eval", "pool "))]
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
                if any(d in failed for d in job.deps) and not job.after_failures:
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
            time.sleep(0.5)
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


def current(path: Path, fp: str) -> bool:
    """`path` (a train.json or a result) exists and was made under this config (files written
    before fingerprints existed count as current)."""
    return path.exists() and json.loads(path.read_text()).get("fingerprint", fp) == fp


def plan(cfg: IxtConfig, overrides: list[str]) -> list[Job]:
    """Every job still to do, in order: pools, then per scale its training runs and evaluation."""
    from ixt_stream import models
    from ixt_stream.config import ModelConfig

    e = cfg.experiment
    out = Path(e.out_dir)
    py = [sys.executable, "-m"]

    def spec(name: str, payload: dict) -> str:
        path = out / "specs" / f"{name.replace('/', '-').replace(' ', '-')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"overrides": overrides, **payload}, indent=1))
        return str(path)

    pools = {name: out / "data" / f"{pool_name(e, s)}.jsonl" for name, s in e.scales.items()}
    jobs, pool_job = [], {}
    for name, path in pools.items():  # one job per distinct pool, each with its own reward service
        if Path(f"{path}.done").exists() or path in pool_job:
            continue
        pool_job[path] = job = f"data {path.stem}"
        payload = {"pools": {name: str(path)}, "log_dir": str(out / "logs")}
        jobs.append(Job(job, py + ["ixt_stream.experiment.data", spec(job, payload)],
                        out / "logs" / f"data-{path.stem}.log"))
    trains: dict[str, list[str]] = {name: [] for name in e.scales}
    runs: dict[str, list[dict]] = {name: [] for name in e.scales}
    model_dirs: dict[str, dict[int, str]] = {}
    for name, scale in e.scales.items():  # built here, once, so parallel runs never race on a cache folder
        model_dirs[name] = {seed: models.resolve(ModelConfig(name=scale.model, cache_dir=cfg.model.cache_dir,
                                                             tiny=scale.tiny, seed=seed))
                            for seed in scale.seeds or e.seeds}
    # Seed-major order: an experiment stopped early has every scale at its first seeds.
    for seed in sorted({s for scale in e.scales.values() for s in scale.seeds or e.seeds}):
        for name, scale in e.scales.items():
            if seed not in (scale.seeds or e.seeds):
                continue
            fp = fingerprint(e, scale)
            for arm in e.arms:
                run_dir = out / "runs" / name / f"{arm}-s{seed}"
                runs[name].append({"arm": arm, "seed": seed, "run_dir": str(run_dir)})
                result, train_json = result_path(out, name, arm, seed), run_dir / "train.json"
                if current(result, fp):
                    continue
                if current(train_json, fp) and json.loads(train_json.read_text()).get("done"):
                    continue
                if any(path.exists() and not current(path, fp) for path in (result, train_json)):
                    print(f"stale {name}/{arm}/s{seed}: made under another config, training it again", flush=True)
                result.unlink(missing_ok=True)  # stale, or a run killed midway: it starts over
                train_json.unlink(missing_ok=True)
                job = f"train {name}/{arm}/s{seed}"
                payload = {"scale": name, "arm": arm, "seed": seed, "run_dir": str(run_dir),
                           "model_dir": model_dirs[name][seed], "data": str(pools[name])}
                jobs.append(Job(job, py + ["ixt_stream.experiment.train_run", spec(job, payload)],
                                out / "logs" / f"train-{name}-{arm}-s{seed}.log",
                                deps=[pool_job[pools[name]]] if pools[name] in pool_job else []))
                trains[name].append(job)
    for name, scale in e.scales.items():
        fp = fingerprint(e, scale)
        if any(not current(result_path(out, name, r["arm"], r["seed"]), fp) for r in runs[name]):
            job = f"eval {name}"
            payload = {"scale": name, "model_dir": next(iter(model_dirs[name].values())), "runs": runs[name]}
            at = max((i + 1 for i, j in enumerate(jobs) if j.name in trains[name]), default=len(jobs))
            jobs.insert(at, Job(job, py + ["ixt_stream.experiment.eval_runs", spec(job, payload)],
                                out / "logs" / f"eval-{name}.log", deps=trains[name], after_failures=True))
    return jobs


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    try:
        check(cfg)
    except ConfigError as e:
        sys.stderr.write(f"config error: {e}\n")
        return 2
    logs.setup(cfg.run.log_level, "experiment")
    e = cfg.experiment
    out = Path(e.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(asdict(e), indent=1))
    t0 = time.monotonic()
    jobs = plan(cfg, overrides)
    print(f"experiment: {len(e.scales)} scales x {len(e.arms)} arms x {len(e.seeds)} seeds; "
          f"{len(jobs)} jobs to run, {e.workers} at a time -> {out}", flush=True)
    failed = run_jobs(jobs, e.workers)

    from ixt_stream.experiment.report import write_report

    report_dir = Path(e.report_dir or out / "report")
    summary = write_report(cfg, report_dir)
    print(f"report -> {report_dir / 'report.md'} ({time.monotonic() - t0:.0f} s)")
    for line in summary:
        print(line)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)} (rerun to resume)")
    return 1 if failed else 0


if __name__ == "__main__":  # the same as `ixt experiment`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["experiment", *sys.argv[1:]]))
