"""Soak: the whole online loop for a long time, every process's RSS sampled over time.

Stack: `ixt up` with the smoke profile (tiny random model, verifier reward, one generator, one
thread per process), no step limit, a weight push every 2 steps and a DeepSpeed checkpoint every
25, so publish / apply / checkpoint paths all run many times. Full: 30 minutes; `--quick`: 5.
The run ends with `ixt down` (SIGTERM), as an operator would end it.

Figures, per service (its whole session: a vLLM generator's engine process counts): growth of its
anonymous resident memory (RssAnon: heap and arenas; file-backed pages come and go with the
machine's memory pressure, so VmRSS is recorded but not fitted) in MB/hour after warm-up (from the
later of a quarter of the run and one minute after the learner's first step: start-up allocation
is not growth). The fit is the least-squares slope of the per-30-s minimum (the floor a leak
raises; a learner's batch-sized swings do not), next to a budget, judged on the full run only:
five minutes cannot resolve 25 MB/h. Then the ledger's conservation check after the stop
(generated = trained + dropped + in flight, none trained twice, none trained without a critique).
Left out: GPU memory, file descriptors, disk growth (checkpoints are never pruned; see
`details.disk_mb`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.common import log_tails, port_overrides, read_jsonl, session_pids, workdir
from bench.report import Result, Row

BUDGET_MB_PER_H = 25.0


def slope_mb_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB/hour."""
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / var if var else float("nan")


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RssAnon, VmRSS) summed over `pids`, in MB."""
    anon = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            continue
    return anon / 1024, rss / 1024


class Sampler(threading.Thread):
    """`series[name]` = [(time, RssAnon MB, VmRSS MB)] for each service, every `every_s` seconds."""

    def __init__(self, groups, every_s: float):
        super().__init__(daemon=True)
        self.groups, self.every_s = groups, every_s
        self.series: dict[str, list[tuple[float, float, float]]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            now = time.time()
            for name, pids in self.groups().items():
                if pids:
                    self.series.setdefault(name, []).append((now, *memory_mb(pids)))


def floors(points: list[tuple[float, float]], bucket_s: float = 30.0) -> list[tuple[float, float]]:
    """The minimum of each `bucket_s` window, at the window's middle."""
    out: dict[int, float] = {}
    for t, v in points:
        k = int(t // bucket_s)
        out[k] = min(out.get(k, v), v)
    return [((k + 0.5) * bucket_s, v) for k, v in sorted(out.items())]


def soak(minutes: float, work: Path) -> dict:
    from ixt_stream import metrics
    from ixt_stream.config import load
    from ixt_stream.ledger import Ledger
    from ixt_stream.online import supervisor

    run_dir = work / "run"
    overrides = ["profile=smoke", "generator.num_generators=1", "learner.max_steps=1000000",
                 "learner.save_every=25", "stream.sync_every=2", *port_overrides(run_dir, "soak")]
    cfg = load(overrides)
    started = time.time()
    supervisor.up(run_dir, supervisor.stack(cfg, overrides))

    def groups() -> dict[str, list[int]]:
        return {r["name"]: session_pids(r["pid"]) for r in supervisor.status(run_dir)}

    sampler = Sampler(groups, every_s=2.0 if minutes <= 10 else 5.0)
    sampler.start()
    try:
        while time.time() - started < minutes * 60:
            dead = [r["name"] for r in supervisor.status(run_dir) if not r["alive"]]
            if dead:
                raise RuntimeError(f"services died: {dead}\n{log_tails(run_dir, dead)}")
            time.sleep(2.0)
    finally:
        sampler.halt.set()
        sampler.join()
        stopped = supervisor.down(run_dir, grace_s=30)
    wall = time.time() - started

    steps = [r for r in read_jsonl(run_dir / "metrics" / "learner.jsonl") if r.get("train/applied")]
    first_step = steps[0]["time"] if steps else started
    warm = max(started + 0.25 * minutes * 60, first_step + 60)
    per_service = {}
    for name, series in sorted(sampler.series.items()):
        window = [(t - started, anon) for t, anon, _ in series if t >= warm]
        per_service[name] = {
            "anon_growth_mb_per_h": slope_mb_per_h(floors(window)),
            "anon_after_warmup_mb": window[0][1] if window else None, "anon_end_mb": series[-1][1],
            "rss_peak_mb": max(rss for *_, rss in series), "rss_end_mb": series[-1][2],
            "window_s": window[-1][0] - window[0][0] if len(window) > 1 else 0.0,
            "series_t_anon_rss_mb": [(round(t - started), round(a, 1), round(r, 1))
                                     for t, a, r in series[:: max(len(series) // 200, 1)]],
        }
    summary = metrics.read_status(run_dir, "learner")
    disk = sum(p.stat().st_size for p in (run_dir / "checkpoints").rglob("*") if p.is_file()) / 2**20
    return {"overrides": overrides, "minutes": minutes, "wall_s": wall, "workdir": str(work),
            "warmup_s": warm - started, "services": per_service,
            "ledger": Ledger(run_dir / "ledger.sqlite").summary(), "stopped": stopped,
            **{k: summary.get(k) for k in ("steps", "samples_trained", "versions_pushed", "skipped_steps")},
            "disk_mb": {"checkpoints": disk}}


def run(quick: bool = False) -> Result:
    out = soak(5.0 if quick else 30.0, workdir("soak"))
    result = Result("soak", quick=quick)
    for name, s in out["services"].items():
        growth = s["anon_growth_mb_per_h"]
        result.rows.append(Row(f"anonymous RSS growth after warm-up: {name} ({out['minutes']:.0f} min, tiny model)",
                               growth, BUDGET_MB_PER_H, "budget", "MB/h", False, f"< {BUDGET_MB_PER_H:g} MB/h",
                               None if quick else growth < BUDGET_MB_PER_H))
    led = out["ledger"]
    unaccounted = led["generated"] - led["trained"] - led["dropped"] - led["in_flight"]
    result.rows.append(Row("ledger after the stop: samples unaccounted + trained twice + trained uncritiqued",
                           float(unaccounted + led["trained_twice"] + led["trained_without_critique"]), 0.0,
                           "conservation", "samples", False, "= 0", led["conserved"]))
    result.details.update(out)
    return result


if __name__ == "__main__":  # until it is listed in bench/__main__.py: python -m bench.soak [--quick]
    import sys

    from bench import report

    path = report.write(run(quick="--quick" in sys.argv[1:]))
    print(report.summary([path]))
