"""Overlap: the same components run in sequence (generate -> critique -> train, one loop) vs the
async pipeline (`ixt up`).

Synchronous peer, in one process (`python -m bench.overlap --sync ARGS`, a child of the runner):
the real `Engine` (in-process vLLM), a `RewardClient` against a real `ixt serve reward` process
(verifier backend) and the DeepSpeed `Learner`. Each round generates one learner batch, critiques
it (all samples concurrently over unary RPCs), conditions, trains one step; every `sync_every`
steps the new weights go into the engine from memory (cheaper than the async path's filesystem
hand-over). It runs one stage at a time, so it gets every core (torch/OMP threads = cores; on a
machine with busy neighbours that can thrash: FEASIBILITY.md measured 10x swings).

Async: the online stack under `ixt up` with the same overrides and the CPU profile (shallow
queues, a 2-thread learner beside a 1-thread generator), and once more with the deep queues and
1-thread learner the profile had before (`DEEP`), to show what the shallow queues buy.
Measured over the same steady-state window on both sides (first to last optimizer step, start-up
excluded): wall time per step (ratio), learner busy fraction and wait time (from the learner's
metrics), and generator back-pressure (`generator/send_blocked_s`, summed over engine calls).
The regime: SmolLM2 and one generator, where generation capacity exceeds what one learner thread
consumes (the sync loop's own phase times show by how much).
Left out: several learners; a GPU regime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, RewardProcess, port_overrides, read_jsonl, run_stack, workdir
from bench.report import Result, Row


def sizes(quick: bool) -> dict:
    if quick:
        return {"model": "smollm2", "k": 4, "batch": 8, "max_new_tokens": 48, "steps": 5, "sync_every": 2,
                "generators": 1}
    return {"model": "smollm2", "k": 4, "batch": 16, "max_new_tokens": 96, "steps": 8, "sync_every": 4,
            "generators": 1}


def overrides(w: dict) -> list[str]:
    return [f"model={w['model']}", f"generator.samples_per_prompt={w['k']}",
            f"generator.prompts_per_request={max(w['batch'] // w['k'], 1)}",
            f"generator.sampling.max_new_tokens={w['max_new_tokens']}", f"generator.num_generators={w['generators']}",
            f"learner.max_steps={w['steps']}", f"learner.max_samples_per_batch={w['batch']}",
            f"learner.tokens_per_batch={w['batch'] * 512}", "condition.max_seq_len=512",
            f"stream.sync_every={w['sync_every']}", "reward.backend=verifier"]


# -- how much parallel CPU there is -------------------------------------------------------------


def _matmul_worker(seconds: float, out) -> None:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        n += 1
    out.put(2 * 512**3 * n / (time.perf_counter() - t0))


def parallel_capacity(seconds: float = 5.0) -> dict:
    """fp32 matmul FLOP/s of one single-thread process alone, then of two at once: the speed-up two
    busy processes (a generator and a learner) can get over one on this machine right now."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rates = {}
    for n in (1, 2):
        q = ctx.Queue()
        procs = [ctx.Process(target=_matmul_worker, args=(seconds, q)) for _ in range(n)]
        for p in procs:
            p.start()
        rates[n] = [q.get() for _ in procs]
        for p in procs:
            p.join()
    return {"one_process_flops": rates[1][0], "two_processes_flops": rates[2],
            "two_vs_one": sum(rates[2]) / rates[1][0]}


# -- the synchronous loop (runs in a child process) ----------------------------------------------


def sync_loop(argv: list[str], steps: int, out: str) -> None:
    import asyncio
    import itertools

    from ixt_stream import models, tasks
    from ixt_stream.config import load

    cfg = load(argv)
    gen, lc = cfg.generator, cfg.learner
    model_dir = models.resolve(cfg.model)
    t_start = time.perf_counter()
    from ixt_stream.batch.collate import collate
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.critique.client import RewardClient
    from ixt_stream.sample.engine import Engine
    from ixt_stream.types import Sample
    from ixt_stream.update.learner import Learner

    threads = int(os.environ["OMP_NUM_THREADS"])
    engine = Engine(model_dir, dtype=gen.dtype, max_model_len=cfg.condition.max_seq_len,
                    kv_cache_gib=gen.kv_cache_gib, threads=threads, seed=cfg.run.seed)
    tok = models.load_tokenizer(model_dir)
    conditioner = Conditioner.from_config(tok, cfg.condition, cfg.run.seed)
    learner = Learner(model_dir, zero_stage=lc.zero_stage, dtype=lc.dtype, lr=lc.lr, threads=threads)
    prompts = tasks.train_prompts(cfg.task)
    loop = asyncio.new_event_loop()

    async def make_client() -> RewardClient:
        c = RewardClient(cfg.client.address, max_in_flight=cfg.client.max_in_flight)
        await c.wait_ready()
        return c

    client = loop.run_until_complete(make_client())

    async def critique_all(samples):
        return await asyncio.gather(*(client.critique(s) for s in samples))

    setup_s = time.perf_counter() - t_start
    rounds, version = [], 0
    while learner.step < steps:
        t0 = time.perf_counter()
        batch = list(itertools.islice(prompts, max(lc.max_samples_per_batch // gen.samples_per_prompt, 1)))
        outs = engine.generate([conditioner.inference_ids(p.prompt, conditioner.sampling_condition) for p in batch],
                               n=gen.samples_per_prompt, max_new_tokens=gen.sampling.max_new_tokens,
                               temperature=gen.sampling.temperature, top_p=gen.sampling.top_p)
        samples = [Sample(sample_id=f"sync-{learner.step}-{j}", prompt=p.prompt, response=c.text, task=p.task,
                          reference_answer=p.answer, prompt_id=p.prompt_id, weight_version=version,
                          generator_id="sync", created_at=time.time(), num_response_tokens=len(c.token_ids),
                          metadata={"entry": p.metadata_json})
                   for j, (p, c) in enumerate((p, c) for p, cs in zip(batch, outs, strict=True) for c in cs)]
        t1 = time.perf_counter()
        critiques = loop.run_until_complete(critique_all(samples))
        t2 = time.perf_counter()
        group = [conditioner.condition(s, c) for s, c in zip(samples, critiques, strict=True)]
        metrics = learner.train_step(collate(group, tok.pad_token_id))
        t3 = time.perf_counter()
        push_s = 0.0
        if metrics["train/applied"] and learner.step % cfg.stream.sync_every == 0:
            import torch

            version += 1
            engine.reload_weights(state_dict=learner.full_state_dict(dtype=torch.bfloat16))
            push_s = time.perf_counter() - t3
        rounds.append({"generate_s": t1 - t0, "critique_s": t2 - t1, "train_s": t3 - t2, "push_s": push_s,
                       "end": time.time(), "samples": len(group), "tokens": metrics["train/tokens"],
                       "generated_tokens": sum(s.num_response_tokens for s in samples)})
        print(f"sync step {learner.step}: {rounds[-1]}", flush=True)
    loop.run_until_complete(client.close())
    Path(out).write_text(json.dumps({"setup_s": setup_s, "threads": threads, "rounds": rounds}))


def run_sync(w: dict, reward_address: str, work: Path) -> dict:
    out = work / "sync.json"
    threads = os.cpu_count() or 1
    argv = [*overrides(w), f"client.address={reward_address}", f"run.run_dir={work / 'sync-run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log = work / "sync.log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "bench.overlap", "--sync", json.dumps(argv), str(w["steps"]),
                               str(out)], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"sync loop failed:\n{log.read_text()[-3000:]}")
    r = json.loads(out.read_text())
    rounds = r["rounds"]
    window = rounds[1:]  # steady state: as on the async side, the first step is excluded
    wall = rounds[-1]["end"] - rounds[0]["end"]
    phases = {k: sum(x[k] for x in window) for k in ("generate_s", "critique_s", "train_s", "push_s")}
    return {"threads": r["threads"], "setup_s": r["setup_s"], "steps": len(rounds),
            "window_steps": len(window), "window_s": wall, "s_per_step": wall / max(len(window), 1),
            "learner_busy_fraction": phases["train_s"] / wall if wall else 0.0, "phases_s": phases,
            "learner_step_s": phases["train_s"] / max(len(window), 1),
            "samples_per_s": sum(x["samples"] for x in window) / wall if wall else 0.0,
            "generate_samples_per_s": sum(x["samples"] for x in window) / phases["generate_s"],
            "train_samples_per_s": sum(x["samples"] for x in window) / phases["train_s"]}


DEEP = ["stream.high_water_mark=64", "stream.tcp_buffer_bytes=65536", "client.max_in_flight=64", "learner.threads=1"]
"""The schema's deep queues (the generator feels back-pressure only ~300 samples ahead) and a
1-thread learner: what the CPU profile replaced with shallow queues and a 2-thread learner."""


def run_async(w: dict, work: Path, extra: list[str] | None = None, name: str = "async") -> dict:
    run_dir = work / name
    out = run_stack([*overrides(w), *(extra or []), *port_overrides(run_dir, "overlap")], timeout_s=3600)
    rows = [r for r in read_jsonl(run_dir / "metrics" / "learner.jsonl") if r.get("train/applied")]
    window = rows[1:]
    wall = rows[-1]["time"] - rows[0]["time"]
    busy = sum(r["train/step_s"] for r in window)
    wait = rows[-1]["learner/wait_s"] - rows[0]["learner/wait_s"]
    blocked, engine_s, calls = 0.0, 0.0, 0
    for g in range(w["generators"]):
        for r in read_jsonl(run_dir / "metrics" / f"generator-{g}.jsonl"):
            if rows[0]["time"] <= r["time"] <= rows[-1]["time"]:
                blocked += r["generator/send_blocked_s"]
                engine_s += r["generator/engine_s"]
                calls += 1
    s = out["summary"]
    generated = sum(len(read_jsonl(run_dir / "metrics" / f"generator-{g}.jsonl")) and
                    read_jsonl(run_dir / "metrics" / f"generator-{g}.jsonl")[-1]["generator/samples"]
                    for g in range(w["generators"]))
    return {"overrides": extra or [], "steps": s["steps"], "window_steps": len(window), "window_s": wall,
            "samples_generated": generated, "samples_trained": s["samples_trained"],
            "s_per_step": wall / max(len(window), 1), "learner_busy_fraction": busy / wall if wall else 0.0,
            "learner_step_s": busy / max(len(window), 1), "learner_wait_s": wait, "generator_send_blocked_s": blocked,
            "generator_blocked_fraction": blocked / (wall * w["generators"]) if wall else 0.0,
            "generator_engine_s": engine_s, "generator_calls": calls,
            "samples_per_s": sum(r["train/samples"] for r in window) / wall if wall else 0.0,
            "whole_run": {"busy_fraction": s["busy_fraction"], "wait_s": s["wait_s"], "wall_s": s["wall_s"],
                          "launch_to_exit_s": out["wall_s"]},
            "drops": s["drops"], "staleness": s["staleness"]}


def run(quick: bool = False) -> Result:
    w = sizes(quick)
    work = workdir("overlap")
    load = {"before": os.getloadavg()}
    capacity = parallel_capacity()
    with RewardProcess(["reward.backend=verifier"], work / "reward") as reward:
        sync = run_sync(w, reward.address, work)
    load["after_sync"] = os.getloadavg()
    asyn = run_async(w, work)
    load["after_async"] = os.getloadavg()
    deep = run_async(w, work, DEEP, "async-deep")
    load["after_async_deep"] = os.getloadavg()

    result = Result("overlap", quick=quick)
    result.rows.append(Row("wall time per learner step (steady state)", asyn["s_per_step"], sync["s_per_step"],
                           "same components in sequence", "s", False, "< 1x", asyn["s_per_step"] < sync["s_per_step"]))
    result.rows.append(Row("learner busy fraction (steady state)", asyn["learner_busy_fraction"],
                           sync["learner_busy_fraction"], "same components in sequence", "fraction", True,
                           ">= 0.90", asyn["learner_busy_fraction"] >= 0.90))
    result.rows.append(Row("wall time per learner step, deep queues + 1-thread learner", deep["s_per_step"],
                           asyn["s_per_step"], "the CPU profile (shallow queues)", "s", False))
    result.rows.append(Row("samples generated per sample trained, deep queues", deep["samples_generated"] /
                           max(deep["samples_trained"], 1), asyn["samples_generated"] / max(asyn["samples_trained"], 1),
                           "the CPU profile (shallow queues)", "x", False))
    result.rows.append(Row("CPU speed-up of 2 busy processes over 1 (matmul, this run)", capacity["two_vs_one"], 2.0,
                           "2 idle cores", "x"))
    result.details.update({"workload": w, "sync": sync, "async": asyn, "async_deep": deep, "loadavg": load,
                           "parallel_capacity": capacity,
                           "workdir": str(work),
                           "learner_wait_s": asyn["learner_wait_s"],
                           "generator_send_blocked_s": asyn["generator_send_blocked_s"],
                           "regime": ("generation capacity exceeds consumption"
                                      if sync["generate_samples_per_s"] > sync["train_samples_per_s"]
                                      else "learner faster than generation: the learner must wait")})
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--sync":
        sync_loop(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: python -m bench.overlap --sync OVERRIDES_JSON STEPS OUT_JSON (internal)")
