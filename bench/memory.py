"""Memory: peak RSS of each process of the default CPU stack and of the whole stack, and the reward
service's RSS under sustained load.

Stack: `ixt up` with the CPU profile as shipped (SmolLM2-135M, verifier reward, one generator,
learner batch 16), cut short (a few learner steps, a weight push every step or two so publish and
apply are inside the window). RSS is sampled every 0.5 s per service session (a service and every
child it spawned); the whole-stack figure is the largest sum over services at one instant.
Reward service under load: the verifier service critiquing a closed-loop stream (64 in flight) for
a fixed time; RSS sampled every second; flat = the end is within 5% of the level after warm-up.
Left out: the vLLM critic's memory (its KV cache is a fixed `kv_cache_gib`), GPU memory.
"""

from __future__ import annotations

import os
import threading
import time

from bench.common import RewardProcess, RssSampler, port_overrides, run_stack, workdir
from bench.report import Result, Row

GIB = 2**30
MIB = 2**20


def stack_peaks(quick: bool, work) -> dict:
    steps, sync = (2, 1) if quick else (6, 2)
    over = ["profile=cpu", "model=smollm2", f"learner.max_steps={steps}", f"stream.sync_every={sync}",
            *port_overrides(work / "stack", "memory")]
    out = run_stack(over, timeout_s=3600, sampler_every_s=0.5)
    rss = out["rss"]
    return {"overrides": over, "peak_mb": {k: v / MIB for k, v in rss["peak"].items()},
            "total_peak_gib": rss["total_peak"] / GIB, "samples": len(rss["series"]),
            "versions_pushed": out["summary"]["versions_pushed"], "wall_s": out["wall_s"]}


async def _load(address: str, seconds: float, stop: threading.Event) -> int:
    import dataclasses

    from bench.reward import make_samples
    from ixt_stream.critique.client import RewardClient

    samples = make_samples(512)
    done = 0

    async def source():
        i = 0
        while not stop.is_set():
            yield dataclasses.replace(samples[i % len(samples)], sample_id=f"m{i}")
            i += 1

    async with RewardClient(address, max_in_flight=64) as client:
        await client.wait_ready()
        async for _ in client.stream(source()):
            done += 1
    return done


def reward_under_load(seconds: float, work) -> dict:
    import uvloop

    with RewardProcess(["reward.backend=verifier"], work / "reward") as rp:
        sampler = RssSampler(lambda: {"reward": rp.pids}, every_s=1.0)
        sampler.start()
        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        t0 = time.time()
        critiques = uvloop.run(_load(rp.address, seconds, stop))
        wall = time.time() - t0
        sampler.stop()
    series = [(t - sampler.series[0][0], v["reward"] / MIB) for t, v in sampler.series]
    warm = [v for t, v in series if t >= 0.2 * seconds][:3]
    warm_mb = max(warm) if warm else series[0][1]
    end_mb = max(v for _, v in series[-3:])
    return {"seconds": wall, "critiques": critiques, "critiques_per_s": critiques / wall, "warm_mb": warm_mb,
            "end_mb": end_mb, "peak_mb": max(v for _, v in series), "growth_mb": end_mb - warm_mb,
            "series_mb": [round(v, 1) for _, v in series]}


def run(quick: bool = False) -> Result:
    work = workdir("memory")
    load = {"before": os.getloadavg()}
    stack = stack_peaks(quick, work)
    load["after_stack"] = os.getloadavg()
    rm = reward_under_load(30.0 if quick else 120.0, work)
    load["after"] = os.getloadavg()
    total = stack["total_peak_gib"]
    result = Result("memory", quick=quick, details={"stack": stack, "reward_under_load": rm, "loadavg": load,
                                                    "workdir": str(work)})
    result.rows.append(Row("whole CPU stack (SmolLM2), peak RSS", total, 12.0, "goal", "GiB", False, "< 12 GiB",
                           total < 12.0))
    for name, mb in sorted(stack["peak_mb"].items()):
        result.rows.append(Row(f"{name} peak RSS (share of stack peak)", mb / 1024, total, "whole stack", "GiB",
                               False))
    flat = rm["growth_mb"] <= 0.05 * rm["warm_mb"]
    result.rows.append(Row(f"reward service RSS after {rm['seconds']:.0f} s of load ({rm['critiques']} critiques)",
                           rm["end_mb"], rm["warm_mb"], "RSS after warm-up", "MiB", False, "flat (< 5% growth)",
                           flat))
    return result

