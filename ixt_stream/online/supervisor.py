"""The local launcher behind `ixt up` / `status` / `down` (`online/launch.py`): the online stack
as background processes in a run folder.

Each service is one `ixt serve <role> ...overrides` process, started in its own session so that
its process group holds every child it spawns. Its state lives in `run.run_dir`:
`logs/<name>.log` (stdout+stderr), `pids/<name>.json` (pid, start time, argv) and
`status/<name>.json`, which the role itself rewrites through its metrics sink (`MetricsSink.status`:
learner step, samples/s, weight version, queue depths, critique latency, ...). The recorded start
time means a recycled pid is never signalled. `down` sends SIGTERM to every session, waits
`run.stop_grace_s`, SIGKILLs what is left and removes a pid file only once its whole session is gone.

Services start in `roles.ROLES` order (reward, learner, orchestrator, generators): the ends that bind
ZeroMQ sockets first, though ZeroMQ would also connect in any order. `ixt up` skips services that
are already alive, so re-running it restarts only the dead ones. Each service gets
OMP_NUM_THREADS from its role's `threads` setting (1 elsewhere): on two cores co-located processes
thrash otherwise. On a GPU node `run.gpus` gives each service its CUDA_VISIBLE_DEVICES (generator
i its own `tensor_parallel_size` slice of the generators' list), and a learner with
`learner.num_gpus > 1` starts under torchrun, one rank per GPU (DS_ACCELERATOR=cuda overrides the
Makefile's CPU default for it where `run.gpus` gives a GPU layout; without one, N gloo ranks on the
CPU). `launcher.kind=ray` hands the same services to a Ray cluster instead (`ray_launcher`).
Left out: automatic restarts, remote hosts without Ray (start each node's roles there with
`run.roles`, see README "GPU nodes"), and log rotation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.metrics import read_status
from ixt_stream.roles import ROLES

_RANK_VARS = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})


@dataclass
class Service:
    name: str
    """Unique in the run: the role, or `generator-<i>` for the pool."""
    argv: list[str]
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)
    """Set on top of the inherited environment (CUDA_VISIBLE_DEVICES, DS_ACCELERATOR)."""


def _gpus(cfg: IxtConfig, role: str, start: int = 0, count: int | None = None, needed_by: str = "") -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for GPUs [start, start + count) (all if None) of `run.gpus[role]`; {} if
    the role is not listed."""
    ids = cfg.run.gpus.get(role)
    if ids is None:
        return {}
    end = len(ids) if count is None else start + count
    if not ids or len(ids) < end:
        raise ConfigError(f"run.gpus.{role}: lists {len(ids)} GPUs, {needed_by or role} needs {max(end, 1)}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, ids[start:end]))}


def learner_ranks(ranks: int, master_port: int, nodes: int = 1, node_rank: int = 0,
                  master_addr: str = "127.0.0.1") -> list[str]:
    """torchrun's command line for `ranks` learner ranks over `nodes` nodes (this one `node_rank`),
    up to the module name: one rank per GPU (a gloo process on a CPU), and when one rank dies,
    torchrun stops the others, so the group is restarted whole."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node-rank={node_rank}",
            f"--nproc-per-node={ranks // nodes}", f"--master-addr={master_addr}", f"--master-port={master_port}",
            "--max-restarts=0", "-m"]


def stack(cfg: IxtConfig, overrides: list[str]) -> list[Service]:
    """The services of the online loop for `cfg`, each forwarded the same `overrides`."""
    for name, roles in (("run.roles", cfg.run.roles), ("run.gpus", cfg.run.gpus)):
        if unknown := sorted(set(roles) - set(ROLES)):
            raise ConfigError(f"{name}: unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
    if cfg.learner.num_gpus < 1:
        raise ConfigError("learner.num_gpus: must be >= 1")
    serve = [sys.executable, "-m", "ixt_stream.cli", "serve"]
    gen, lc = cfg.generator, cfg.learner
    out = []
    for role in (r for r in ROLES if r in cfg.run.roles):
        if role == "generator":
            tp = gen.tensor_parallel_size
            need = f"generator.num_generators x tensor_parallel_size = {gen.num_generators} x {tp}"
            for i in range(gen.num_generators):
                argv = [*serve, role, *overrides, f"generator.index={i}"]
                env = _gpus(cfg, role, i * tp, tp, need)
                out.append(Service(f"generator-{i}", argv, gen.threads, env))
        elif role == "learner":
            argv, env = [*serve, role, *overrides], _gpus(cfg, role, 0, lc.num_gpus, f"learner.num_gpus={lc.num_gpus}")
            if lc.num_gpus > 1:
                argv = [*learner_ranks(lc.num_gpus, lc.master_port), "ixt_stream.cli", "serve", role, *overrides]
            if env or (lc.num_gpus > 1 and cfg.run.gpus):  # a GPU layout: ranks on CUDA, not the CPU default
                env["DS_ACCELERATOR"] = "cuda"
            out.append(Service(role, argv, lc.threads, env))
        else:
            out.append(Service(role, [*serve, role, *overrides], 1, _gpus(cfg, role)))
    if cfg.run.metrics_port:
        for i, s in enumerate(out):
            s.argv.append(f"run.metrics_port={cfg.run.metrics_port + i}")
    return out


# -- processes --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))) and f[3] == str(sid) and f[0] != "Z":
            out.append(int(entry.name))
    return out


def _pid_files(run_dir: str | Path) -> dict[str, dict]:
    out = {}
    for path in sorted((Path(run_dir) / "pids").glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return out


def _ours(record: dict) -> list[int]:
    """The live processes of a recorded service (empty if gone, or if its pid was recycled)."""
    pid = record["pid"]
    start = _start_ticks(pid)
    if start is not None and start != record["start"]:
        return []  # the pid now names another process; a sid stays reserved while any member lives
    return _session(pid)


def up(run_dir: str | Path, services: list[Service], settle_s: float = 1.0) -> dict[str, int]:
    """Start every service not already alive; returns name -> pid of those started.

    Raises RuntimeError (with each log's tail) if any service exits within `settle_s`.
    """
    run = Path(run_dir)
    for sub in ("logs", "pids", "status"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    running = _pid_files(run)
    started = {}
    for s in services:
        if s.name in running and _ours(running[s.name]):
            continue
        log_path = run / "logs" / f"{s.name}.log"
        # A caller that ran DeepSpeed in-process holds its rendezvous port: never pass it on.
        inherited = {k: v for k, v in os.environ.items() if k not in _RANK_VARS}
        env = {**inherited, "OMP_NUM_THREADS": str(s.threads), "PYTHONUNBUFFERED": "1", **s.env}
        with log_path.open("ab") as log:
            proc = subprocess.Popen(s.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        record = {"pid": proc.pid, "start": _start_ticks(proc.pid), "argv": s.argv, "log": str(log_path)}
        (run / "pids" / f"{s.name}.json").write_text(json.dumps(record))
        started[s.name] = proc.pid
    time.sleep(settle_s if started else 0)
    dead = [n for n in started if not _ours(_pid_files(run)[n])]
    if dead:
        tails = "\n".join(f"--- {n}: {run / 'logs' / (n + '.log')}\n{_tail(run / 'logs' / (n + '.log'))}"
                          for n in dead)
        raise RuntimeError(f"exited right after start: {', '.join(dead)}\n{tails}")
    return started


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def status(run_dir: str | Path, names: list[str] | None = None) -> list[dict]:
    """One row per recorded service (those in `names` if given): name, pid, alive, and its latest
    status file."""
    return [{"name": name, "pid": rec["pid"], "alive": bool(_ours(rec)), "status": read_status(run_dir, name)}
            for name, rec in _pid_files(run_dir).items() if names is None or name in names]


def down(run_dir: str | Path, grace_s: float = 15.0, names: list[str] | None = None) -> dict[str, str]:
    """Stop every recorded service (those in `names` if given): SIGTERM, wait `grace_s`, SIGKILL.
    Returns name -> outcome."""
    records = {n: r for n, r in _pid_files(run_dir).items() if names is None or n in names}
    outcome = {name: "stopped" if _ours(rec) else "not running" for name, rec in records.items()}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        live = {name: _ours(rec) for name, rec in records.items()}
        for name, pids in reversed(live.items()):  # producers (generators) first
            if pids and sig == signal.SIGKILL:
                outcome[name] = "killed"
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        while any(_ours(rec) for rec in records.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
    for name, rec in records.items():
        if _ours(rec):
            outcome[name] = "still alive"
        else:
            (Path(run_dir) / "pids" / f"{name}.json").unlink(missing_ok=True)
    return outcome
