"""Helpers shared by the benchmarks: free ports, the online stack under `ixt up`, a reward-service
process, and an RSS sampler over process sessions.

Nothing here measures anything by itself; each benchmark module decides what to time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ixt_stream.net import free_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
       "TOKENIZERS_PARALLELISM": "false"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


def workdir(name: str) -> Path:
    """A fresh scratch folder for one benchmark run (under /tmp, never inside the repo)."""
    return Path(tempfile.mkdtemp(prefix=f"ixt-bench-{name}-"))


def port_overrides(run_dir: Path, run_id: str = "bench") -> list[str]:
    """Overrides giving a stack its own run folder and free ports (runs never collide)."""
    p = [free_port() for _ in range(6)]
    return [f"run.run_dir={run_dir}", f"run.run_id={run_id}", "run.tensorboard=false",
            f"reward.port={p[0]}", f"client.address=127.0.0.1:{p[0]}", f"stream.samples_port={p[1]}",
            f"stream.conditioned_port={p[2]}", f"stream.weights_port={p[3]}", f"stream.acks_port={p[4]}",
            f"stream.collective.port={p[5]}"]


# -- RSS ------------------------------------------------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (a service and every child it spawned)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[3] == str(sid) and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples the RSS of named groups of processes every `every_s` seconds.

    `groups()` returns name -> list of pids (re-evaluated each tick, so late children count).
    Records per-group peaks, the peak of the sum over groups at one instant, and a time series.
    """

    def __init__(self, groups, every_s: float = 0.5):
        super().__init__(daemon=True, name="rss-sampler")
        self.groups, self.every_s = groups, every_s
        self.peak: dict[str, int] = {}
        self.total_peak = 0
        self.series: list[tuple[float, dict[str, int]]] = []
        self._halt = threading.Event()

    def sample(self) -> dict[str, int]:
        now = {name: sum(rss_bytes(p) for p in pids) for name, pids in self.groups().items()}
        for name, v in now.items():
            self.peak[name] = max(self.peak.get(name, 0), v)
        self.total_peak = max(self.total_peak, sum(now.values()))
        self.series.append((time.time(), now))
        return now

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# -- the online stack ---------------------------------------------------------------------------


def run_stack(overrides: list[str], timeout_s: float = 1800, sampler_every_s: float = 0.0) -> dict:
    """`ixt up` with `overrides`, wait for the learner to finish, `ixt down`.

    Returns {"summary": learner_summary.json, "wall_s": launch -> learner exit, "run_dir": ...,
    "rss": {...} if sampled}. Raises with log tails if a service dies or the run times out.
    """
    from ixt_stream.config import load
    from ixt_stream.online import supervisor

    cfg = load(overrides)
    run_dir = Path(cfg.run.run_dir)
    t0 = time.time()
    supervisor.up(run_dir, supervisor.stack(cfg, overrides))
    sampler = None
    if sampler_every_s:
        def groups():
            return {name: session_pids(rec["pid"]) for name, rec in supervisor._pid_files(run_dir).items()}
        sampler = RssSampler(groups, sampler_every_s)
        sampler.start()
    try:
        while True:
            rows = {r["name"]: r for r in supervisor.status(run_dir)}
            if not rows["learner"]["alive"]:
                break
            dead = [n for n, r in rows.items() if not r["alive"]]
            if dead:
                raise RuntimeError(f"services died: {dead}\n{log_tails(run_dir, dead)}")
            if time.time() - t0 > timeout_s:
                raise TimeoutError(f"stack did not finish in {timeout_s} s\n{log_tails(run_dir, ['learner'])}")
            time.sleep(0.5)
        wall = time.time() - t0
    finally:
        if sampler is not None:
            sampler.stop()
        supervisor.down(run_dir, grace_s=20)
    path = run_dir / "learner_summary.json"
    if not path.exists():
        raise RuntimeError(f"no learner summary\n{log_tails(run_dir, ['learner'])}")
    out = {"summary": json.loads(path.read_text()), "wall_s": wall, "run_dir": str(run_dir), "started": t0}
    if sampler is not None:
        out["rss"] = {"peak": sampler.peak, "total_peak": sampler.total_peak, "series": sampler.series}
    return out


def log_tails(run_dir: Path, names, lines: int = 25) -> str:
    out = []
    for n in names:
        p = Path(run_dir) / "logs" / f"{n}.log"
        try:
            out.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        except OSError:
            pass
    return "\n".join(out)


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def steady_rate(times: list[float], per_step: list[float]) -> float:
    """Items per second between the first and the last step end (the first step's own time and the
    start-up before it are excluded): sum(items of steps 2..N) / (t_N - t_1)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return sum(per_step[1:]) / (times[-1] - times[0])


# -- a reward service process -------------------------------------------------------------------


class RewardProcess:
    """`ixt serve reward` in its own session, SERVING on a free port; stop() ends it."""

    def __init__(self, overrides: list[str], run_dir: Path, ready_timeout_s: float = 300.0):
        self.port = free_port()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.run_dir / f"reward-{self.port}.log"
        argv = [sys.executable, "-m", "ixt_stream.cli", "serve", "reward", f"reward.port={self.port}",
                f"run.run_dir={self.run_dir}", "run.tensorboard=false", *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"
        asyncio.run(self._wait(ready_timeout_s))

    async def _wait(self, timeout_s: float) -> None:
        from ixt_stream.critique.client import RewardClient

        deadline = time.time() + timeout_s
        async with RewardClient(self.address) as c:
            while True:
                try:
                    await c.wait_ready(2.0)
                    return
                except TimeoutError:
                    if self.proc.poll() is None and time.time() < deadline:
                        continue
                    self.stop()
                    raise RuntimeError(f"reward service did not start:\n{self.log.read_text()[-3000:]}") from None

    @property
    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RewardProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def prompts_jsonl(path: Path, n: int, task=None) -> Path:
    """The first `n` training prompts of `task` (a TaskConfig; default: its dataclass default) as
    JSONL ({"id","prompt","answer","task","metadata"}): the one prompt set both sides of a
    comparison read, none of them among the task's held-out problems."""
    from ixt_stream import tasks
    from ixt_stream.config import TaskConfig

    with open(path, "w") as f:
        for i, p in enumerate(tasks.train_prompts(task or TaskConfig())):
            if i >= n:
                break
            f.write(json.dumps({"id": p.prompt_id, "prompt": p.prompt, "answer": p.answer, "task": p.task,
                                "metadata": json.loads(p.metadata_json)}) + "\n")
    return path
