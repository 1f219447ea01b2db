"""Reward service: critiques/s and latency through unary and streaming RPCs, against its peers.

Each service is a real `ixt serve reward` process; the client (`RewardClient`, uvloop) runs here
with the same concurrency everywhere (`CONCURRENCY` requests outstanding, closed loop):
- verifier backend, unary, streaming one sample a message (`CritiqueStream`) and batched streaming
  (`CritiqueBatchStream`, the client's default `batch_size`, with a sweep of batch sizes): the figure;
- null backend, same RPCs: pure transport + service overhead (no judging);
- the same verifier behind a plain HTTP/JSON server (aiohttp + a thread pool running the verifier:
  the OpenRLHF / slime remote-RM pattern), `python -m bench.reward --http PORT`, aiohttp client;
- the verifier in-process, no transport at all: its own cost per critique; and judged on the
  service's event loop (`reward.judge_workers=0`), without the judge worker (one pipe round trip
  per batch of queued samples, `critique/isolate.py`);
- the LLM critic on in-process vLLM (hybrid backend: the verifier's verdict, the tiny model's words): dynamic
  batching (`max_batch_size=32`) vs `max_batch_size=1`.
Transport share of a verifier critique at saturation = (1 / null critiques/s) / (1 / verifier
critiques/s) on the stream; the client and the server share the same 2 cores, as in the stack.
Left out: TLS / auth overhead, several clients, the openai backend.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, RewardProcess, free_port, rss_bytes, session_pids, workdir
from bench.report import Result, Row
from ixt_stream.config import RewardClientConfig

CONCURRENCY = 64
ROUNDS = 3
BATCHED = RewardClientConfig.batch_size
"""The client's default batch size: what the batched rows measure."""
BATCH_SWEEP = (4, 16, 64)


def make_samples(n: int) -> list:
    """Arithmetic samples with right, wrong and untagged answers (the verifier's three paths)."""
    import itertools

    from ixt_stream import tasks
    from ixt_stream.config import TaskConfig
    from ixt_stream.types import Sample

    out = []
    for i, p in enumerate(itertools.islice(tasks.train_prompts(TaskConfig()), n)):
        reasoning = f"I work out {p.prompt.splitlines()[0].removeprefix('Calculate ').rstrip('.')} step by step."
        answer = [p.answer, str(int(p.answer) + 1), None][i % 3]
        if answer is None:
            response = f"{reasoning} The result is {p.answer}."
        else:
            response = f"{reasoning}\n<answer>{answer}</answer>"
        out.append(Sample(sample_id=f"s{i}", prompt=p.prompt, response=response, task=p.task,
                          reference_answer=p.answer, prompt_id=p.prompt_id, metadata={"entry": p.metadata_json}))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def summarise(latencies: list[float], wall: float) -> dict:
    return {"n": len(latencies), "per_s": len(latencies) / wall, "p50_ms": 1e3 * pct(latencies, 0.5),
            "p99_ms": 1e3 * pct(latencies, 0.99), "wall_s": wall}


# -- gRPC clients ------------------------------------------------------------------------------


async def grpc_unary(address: str, samples: list, n: int, concurrency: int = CONCURRENCY) -> dict:
    from ixt_stream.critique.client import RewardClient

    lat: list[float] = []
    async with RewardClient(address, max_in_flight=concurrency) as client:
        await client.wait_ready()
        for s in samples[:concurrency]:  # warm the channel
            await client.critique(s)
        it = iter(range(n))

        async def worker():
            for i in it:
                t0 = time.perf_counter()
                await client.critique(samples[i % len(samples)])
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summarise(lat, time.perf_counter() - t0)


async def grpc_stream(address: str, samples: list, n: int, concurrency: int = CONCURRENCY,
                      batch_size: int = BATCHED, allow_errors: bool = False) -> dict:
    """`batch_size` samples at most per stream message; 1 = CritiqueStream, one per message.
    `allow_errors`: a critique that fails for good is counted (`failed`) instead of ending the run
    (a random tiny model's greedy reply can be empty for a sample, every retry alike)."""
    from ixt_stream.critique.client import RewardClient

    lat: list[float] = []
    sent: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)  # at most `concurrency` outstanding, timed from hand-over

    async def source(count: int, tag: str):
        import dataclasses

        for i in range(count):
            await gate.acquire()
            s = dataclasses.replace(samples[i % len(samples)], sample_id=f"{tag}{i}")
            sent[s.sample_id] = time.perf_counter()
            yield s

    async with RewardClient(address, max_in_flight=2 * concurrency, batch_size=batch_size) as client:
        await client.wait_ready()
        async for _ in client.stream(source(concurrency, "w")):  # warm-up
            gate.release()
        failed = 0
        t0 = time.perf_counter()
        async for r in client.stream(source(n, "m")):
            lat.append(time.perf_counter() - sent.pop(r.sample.sample_id))
            gate.release()
            if r.error is not None:
                if not allow_errors:
                    raise RuntimeError(f"critique failed: {r.error}")
                failed += 1
        return {**summarise(lat, time.perf_counter() - t0), "failed": failed}


# -- the HTTP/JSON peer ------------------------------------------------------------------------


def http_server(port: int) -> None:
    """aiohttp + a thread pool running the verifier (the remote-RM pattern of OpenRLHF / slime)."""
    from concurrent.futures import ThreadPoolExecutor

    import uvloop
    from aiohttp import web

    from ixt_stream.critique.verifier import VerifierBackend
    from ixt_stream.types import Sample

    backend = VerifierBackend(warm_tasks=["basic_arithmetic"])
    pool = ThreadPoolExecutor(8)

    async def critique(request: web.Request) -> web.Response:
        body = await request.json()
        sample = Sample(**body)
        v = await asyncio.get_running_loop().run_in_executor(pool, backend.verdict, sample)
        return web.json_response({"sample_id": sample.sample_id, "critique": v.critique, "score": v.score,
                                  "label": v.label.word, "thinking": v.thinking})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/critique", critique), web.get("/health", health)])
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def http_client(port: int, samples: list, n: int, concurrency: int = CONCURRENCY) -> dict:
    import dataclasses

    import aiohttp

    url = f"http://127.0.0.1:{port}/critique"
    bodies = [{k: v for k, v in dataclasses.asdict(s).items()
               if k in ("sample_id", "prompt", "response", "task", "reference_answer", "prompt_id", "metadata")}
              for s in samples]
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for _ in range(600):
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        for b in bodies[:concurrency]:
            async with session.post(url, json=b) as r:
                await r.json()
        it = iter(range(n))

        async def worker():
            for i in it:
                t0 = time.perf_counter()
                async with session.post(url, json=bodies[i % len(bodies)]) as r:
                    r.raise_for_status()
                    await r.json()
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summarise(lat, time.perf_counter() - t0)


def in_process(samples: list, n: int) -> dict:
    from ixt_stream.critique.verifier import VerifierBackend

    backend = VerifierBackend(warm_tasks=["basic_arithmetic"])

    async def go():
        for s in samples[:100]:
            await backend.critique(s)
        t0 = time.perf_counter()
        for i in range(n):
            await backend.critique(samples[i % len(samples)])
        return time.perf_counter() - t0

    wall = asyncio.run(go())
    return {"n": n, "per_s": n / wall, "us_per_critique": 1e6 * wall / n}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_split(make, pids: list[int]) -> dict:
    """One more run of `make()`, recording client and server CPU microseconds per critique."""
    import uvloop

    s0, c0 = cpu_seconds(pids), time.process_time()
    r = uvloop.run(make())
    s1, c1 = cpu_seconds(pids), time.process_time()
    return {"per_s": r["per_s"], "server_cpu_us_per_critique": 1e6 * (s1 - s0) / r["n"],
            "client_cpu_us_per_critique": 1e6 * (c1 - c0) / r["n"]}


def client_run(make, rounds: int = 1) -> dict:
    """Run `make()` (a coroutine factory) `rounds` times under uvloop; the round with the median
    rate, with every round's rate (the machine is shared: one round can hit a neighbour's burst)."""
    import uvloop

    runs = sorted((uvloop.run(make()) for _ in range(rounds)), key=lambda r: r["per_s"])
    return {**runs[len(runs) // 2], "rounds_per_s": [r["per_s"] for r in runs]}


# -- the run -----------------------------------------------------------------------------------


def loop_verifier(work: Path, samples: list, n: int) -> dict:
    """The verifier judged on the service's event loop (`reward.judge_workers=0`, no worker process):
    what the transport gives a cheap critic without the judge worker's pipe round trip per batch."""
    with RewardProcess(["reward=verifier", "reward.judge_workers=0"], work / "verifier-loop") as rp:
        return {"verifier_loop_stream": client_run(lambda: grpc_stream(rp.address, samples, n, batch_size=1), ROUNDS),
                "verifier_loop_batched": client_run(lambda: grpc_stream(rp.address, samples, n), ROUNDS)}


def http_peer(work: Path, samples: list, n: int) -> dict:
    """The HTTP/JSON peer's run (its server in a subprocess of its own)."""
    port = free_port()
    log = open(work / "http.log", "wb")
    http = subprocess.Popen([sys.executable, "-m", "bench.reward", "--http", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        return client_run(lambda: http_client(port, samples, n), ROUNDS)
    finally:
        http.terminate()
        http.wait(30)


def run(quick: bool = False) -> Result:
    n = 10_000 if quick else 30_000
    n_vllm = 128 if quick else 256
    work = workdir("reward")
    samples = make_samples(512)
    d: dict = {"concurrency": CONCURRENCY, "n": n, "loadavg": {"before": os.getloadavg()}}

    d["in_process_verifier"] = in_process(samples, n)
    for backend, option in (("verifier", "reward=verifier"), ("null", "reward=null_critic")):
        with RewardProcess([option], work / backend) as rp:
            d[f"{backend}_unary"] = client_run(lambda: grpc_unary(rp.address, samples, n), ROUNDS)
            d[f"{backend}_stream"] = client_run(lambda: grpc_stream(rp.address, samples, n, batch_size=1), ROUNDS)
            d[f"{backend}_stream_cpu"] = cpu_split(lambda: grpc_stream(rp.address, samples, n, batch_size=1),
                                                   rp.pids)
            d[f"{backend}_batched"] = client_run(lambda: grpc_stream(rp.address, samples, n), ROUNDS)
            d[f"{backend}_batched_cpu"] = cpu_split(lambda: grpc_stream(rp.address, samples, n), rp.pids)
            if backend == "verifier":
                d["verifier_batch_sweep"] = {
                    str(bs): client_run(lambda bs=bs: grpc_stream(rp.address, samples, n, batch_size=bs))
                    for bs in BATCH_SWEEP}
            d[f"{backend}_server_rss_mb"] = sum(rss_bytes(p) for p in session_pids(rp.proc.pid)) / 2**20
    d |= loop_verifier(work, samples, n)
    d["http_verifier"] = http_peer(work, samples, n)
    d["loadavg"]["after_transport"] = os.getloadavg()

    vllm = {}
    for mbs in (32, 1):
        # hybrid: the verifier gives the verdict, so a random tiny model's unusable words cannot fail the
        # critique and send it through retries (with backend=vllm every item did: a retry benchmark)
        over = ["reward.backend=hybrid", "reward.llm.model=tiny", f"reward.llm.max_batch_size={mbs}",
                "reward.llm.sampling.max_new_tokens=48", "reward.llm.max_model_len=1024", "model=tiny"]
        with RewardProcess(over, work / f"vllm-{mbs}", ready_timeout_s=600) as rp:
            vllm[mbs] = client_run(lambda: grpc_stream(rp.address, samples, n_vllm, concurrency=32, allow_errors=True))
    d["vllm_tiny"] = {str(k): v for k, v in vllm.items()}
    d["loadavg"]["after"] = os.getloadavg()

    v_s, nul_s, http_s = d["verifier_stream"], d["null_stream"], d["http_verifier"]
    v_b, nul_b = d["verifier_batched"], d["null_batched"]
    v_u = d["verifier_unary"]
    share = v_s["per_s"] / nul_s["per_s"]
    d["transport_share_stream"] = share
    d["transport_share_batched"] = share_b = v_b["per_s"] / nul_b["per_s"]
    d["transport_share_vs_in_process"] = 1 - v_s["per_s"] / d["in_process_verifier"]["per_s"]
    r = Result("reward", quick=quick, details=d)
    r.rows += [
        Row("verifier, streaming RPC: critiques/s", v_s["per_s"], http_s["per_s"], "HTTP/JSON + thread pool",
            "critiques/s"),
        Row(f"verifier, batched streaming RPC ({BATCHED}/msg): critiques/s", v_b["per_s"], http_s["per_s"],
            "HTTP/JSON + thread pool", "critiques/s", True, ">= 1x", v_b["per_s"] >= http_s["per_s"]),
        Row(f"verifier judged on the event loop, batched streaming RPC ({BATCHED}/msg): critiques/s",
            d["verifier_loop_batched"]["per_s"], http_s["per_s"], "HTTP/JSON + thread pool", "critiques/s"),
        Row("verifier judged on the event loop, streaming RPC (1/msg): critiques/s",
            d["verifier_loop_stream"]["per_s"], http_s["per_s"], "HTTP/JSON + thread pool", "critiques/s"),
        Row(f"verifier, batched streaming RPC ({BATCHED}/msg) vs one sample a message: critiques/s", v_b["per_s"],
            v_s["per_s"], "CritiqueStream, 1/msg", "critiques/s"),
        Row(f"verifier, batched streaming RPC ({BATCHED}/msg): p99 latency", v_b["p99_ms"], http_s["p99_ms"],
            "HTTP/JSON + thread pool", "ms", False),
        Row("verifier, unary RPC: critiques/s", v_u["per_s"], http_s["per_s"], "HTTP/JSON + thread pool",
            "critiques/s"),
        Row("verifier, streaming RPC: p50 latency", v_s["p50_ms"], http_s["p50_ms"], "HTTP/JSON + thread pool", "ms",
            False),
        Row("verifier, streaming RPC: p99 latency", v_s["p99_ms"], http_s["p99_ms"], "HTTP/JSON + thread pool", "ms",
            False),
        Row("verifier, unary RPC: p99 latency", v_u["p99_ms"], http_s["p99_ms"], "HTTP/JSON + thread pool", "ms",
            False),
        Row("transport per critique (null) vs verifier critique, stream, saturated", 1e3 / nul_s["per_s"],
            1e3 / v_s["per_s"], "verifier critique served", "ms", False, "<= 5%", share <= 0.05),
        Row("transport per critique (null) vs verifier critique, batched stream, saturated", 1e3 / nul_b["per_s"],
            1e3 / v_b["per_s"], "verifier critique served", "ms", False, "<= 5%", share_b <= 0.05),
        Row("null backend, streaming RPC: critiques/s", nul_s["per_s"], 5000.0, "goal", "critiques/s", True,
            ">= 5k/s", nul_s["per_s"] >= 5000),
        Row(f"null backend, batched streaming RPC ({BATCHED}/msg): critiques/s", nul_b["per_s"], nul_s["per_s"],
            "CritiqueStream, 1/msg", "critiques/s"),
        Row(f"LLM critic on vLLM (tiny, hybrid; failed {vllm[32]['failed']} + {vllm[1]['failed']} of "
            f"{2 * n_vllm}): dynamic batching vs max_batch_size=1", vllm[32]["per_s"], vllm[1]["per_s"],
            "max_batch_size=1", "critiques/s", True, ">= 4x", vllm[32]["per_s"] >= 4 * vllm[1]["per_s"]),
    ]
    return r


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        http_server(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.reward --http PORT (internal)")
