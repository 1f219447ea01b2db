"""Weight push: a learner optimizer step -> every generator serving the new version, phase by phase,
per transport (filesystem, shm, collective), against the floor an engine cannot go below.

Learner side (this process): the DeepSpeed `Learner` (ZeRO-0, bf16, as the CPU profile) takes one
optimizer step, then the path `online/learner.py` runs: `full_state_dict(dtype, copy=False)`
(gather), the transport's `WeightWriter.write` (cast, write, digest) and the rest of
`WeightPublisher.publish` (LATEST + the PUB announcement). The three writers share one PUB socket;
each announcement names its transport.
Generator side: real processes (`python -m bench.weights --gen ...`), each an in-process vLLM
`Engine` with the real readers on the real SUB socket, doing what `WeightApplier.apply` does
between engine calls, timed apart: hear the announcement, read + verify (the transport's reader),
`Engine.reload_weights` (`Engine.last_reload`: load = the copy into the parameters, repack = every
CPU linear handle, for a payload that maps 1:1; otherwise vLLM's reload, then the handles it left
stale), then a `WeightAck`.
End to end = gather start -> the last generator's ack received.

Floor, same payload bytes: one memcpy (what an engine must at least copy into its parameters)
plus a repack of every CPU linear handle (measured in the generator at start), so an engine that
serves the new weights cannot do better. Also reported: a raw ZeroMQ PUSH/PULL transfer in 4 MiB
chunks to each generator (the wire alone, which no engine reaches). Sizes: tiny and SmolLM2-135M;
1 and 2 generators.
Left out: generators busy generating (a push then also waits for the engine call in flight, up to
one call's time).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, free_port, read_jsonl, workdir
from bench.report import Result, Row

CHUNK = 4 << 20
RUN_ID = "bench-weights"


TRANSPORTS = ("collective", "filesystem", "shm")
"""In this order: a generator started later catches up from LATEST, which a collective version is not."""
WARMUP = 2
"""Untimed rounds per transport: steady state (the group formed, shm's two segments to recycle)."""


def stream_overrides(run_dir: Path, model: str, ports: list[int]) -> list[str]:
    return [f"model={model}", f"run.run_dir={run_dir}", f"run.run_id={RUN_ID}", "stream.weight_transport=filesystem",
            "stream.weight_dtype=bfloat16", f"stream.weights_port={ports[0]}", f"stream.acks_port={ports[1]}",
            f"stream.collective.port={ports[2]}", "stream.collective.backend=gloo", "stream.collective.timeout_s=60",
            "condition.max_seq_len=512", "stream.filesystem.keep_versions=3"]


class ByTransport:
    """A `WeightReader` that hands each announcement to the reader of the transport it names."""

    def __init__(self, readers: dict):
        self.readers = readers

    def read(self, wv):
        return self.readers[wv.transport].read(wv)

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


# -- generator process -------------------------------------------------------------------------


def generator_worker(argv: list[str], name: str) -> None:
    from ixt_stream import models
    from ixt_stream.config import load
    from ixt_stream.sample.engine import Engine, _repack_all
    from ixt_stream.stream import sockets
    from ixt_stream.types import WeightAck
    from ixt_stream.weights import apply, base, collective, filesystem, shm

    cfg = load(argv)
    engine = Engine(models.resolve(cfg.model), dtype="bfloat16", max_model_len=cfg.condition.max_seq_len,
                    kv_cache_gib=1, threads=1)
    root = Path(cfg.run.run_dir) / "weights"
    reader = ByTransport({
        "filesystem": filesystem.FilesystemReader(root),
        "shm": shm.ShmReader(shm.run_tag(RUN_ID, root)),
        "collective": collective.CollectiveReader(cfg.stream.host, cfg.stream.collective.port, name,
                                                  cfg.stream.collective.timeout_s, "gloo"),
    })
    applier = apply.WeightApplier(reader, sockets.receiver(cfg.stream, "weights", RUN_ID), root, name)
    acks = sockets.sender(cfg.stream, "acks", RUN_ID)
    log = open(Path(cfg.run.run_dir) / f"bench-{name}.jsonl", "a")
    # the repack half of the floor: every handle, on the weights the engine serves (times are medians)
    repack = sorted(engine.llm.collective_rpc(_repack_all)[0]["repack_s"] for _ in range(3))[1]
    log.write(json.dumps({"version": 0, "full_repack_s": repack}) + "\n")
    log.flush()
    first = True
    while True:
        wv = applier.poll()
        if wv is None:
            if first:  # nothing published yet: say we are up (version 0)
                acks.send(WeightAck(generator_id=name, version=0, applied_at=time.time(), apply_seconds=0.0))
                first = False
            time.sleep(0.001)
            continue
        first = False
        heard = time.time()
        t0 = time.perf_counter()
        try:
            state_dict = reader.read(wv)  # what WeightApplier.apply does, timed apart
        except base.WeightRefused as e:
            print(f"{name}: refused v{wv.version}: {e}", file=sys.stderr, flush=True)
            continue
        t1 = time.perf_counter()
        engine.reload_weights(state_dict=state_dict)
        t2 = time.perf_counter()
        applier.version = wv.version
        del state_dict
        split = engine.last_reload
        log.write(json.dumps({"version": wv.version, "transport": wv.transport, "heard": heard,
                              "read_verify_s": t1 - t0, "load_s": split["load_s"], "repack_s": split["repack_s"],
                              "repacked": split["repacked"], "reload_s": t2 - t1}) + "\n")
        log.flush()
        acks.send(WeightAck(generator_id=name, version=wv.version, applied_at=time.time(), apply_seconds=t2 - t0))


def start_generator(argv: list[str], name: str, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(run_dir / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "bench.weights", "--gen", json.dumps(argv), name], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


# -- floors ------------------------------------------------------------------------------------


def _pull(port: int, nbytes: int, done_port: int) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    done = ctx.socket(zmq.PUSH)
    done.connect(f"tcp://127.0.0.1:{done_port}")
    done.send(b"ready")
    while True:
        got = 0
        while got < nbytes:
            got += len(pull.recv(copy=False))
        done.send(b"done")


def zmq_floor(nbytes: int, receivers: int, repeat: int = 3) -> float:
    """Median seconds to push `nbytes` in 4 MiB chunks to each of `receivers` processes (loopback TCP)."""
    import zmq

    ctx = zmq.Context()
    done = ctx.socket(zmq.PULL)
    done_port = done.bind_to_random_port("tcp://127.0.0.1")
    ports = [free_port() for _ in range(receivers)]
    procs = [mp.get_context("spawn").Process(target=_pull, args=(p, nbytes, done_port), daemon=True) for p in ports]
    for p in procs:
        p.start()
    for _ in procs:
        done.recv()
    socks = []
    for p in ports:
        s = ctx.socket(zmq.PUSH)
        s.connect(f"tcp://127.0.0.1:{p}")
        socks.append(s)
    payload = bytearray(os.urandom(1 << 20)) * (CHUNK >> 20)
    chunks = [memoryview(payload)[: min(CHUNK, nbytes - off)] for off in range(0, nbytes, CHUNK)]
    times = []
    for _ in range(repeat + 1):  # first round warms the connections
        t0 = time.perf_counter()
        for c in chunks:
            for s in socks:
                s.send(c, copy=False)
        for _ in procs:
            done.recv()
        times.append(time.perf_counter() - t0)
    for p in procs:
        p.terminate()
    for s in socks:
        s.close(linger=0)
    done.close(linger=0)
    ctx.term()
    return statistics.median(times[1:])


def memcpy_floor(nbytes: int, repeat: int = 5) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


# -- one model size ----------------------------------------------------------------------------


def measure_size(model: str, repeats: int, work: Path, learner_dtype: str = "bf16", counts=(1, 2)) -> dict:
    """One model size; `learner_dtype` fp32 only where bf16 steps are too slow to bench (no AVX-512 BF16)."""
    import hashlib

    import blake3
    import torch

    from bench.transport import realistic_conditioned
    from ixt_stream import models
    from ixt_stream.batch.collate import collate
    from ixt_stream.config import load
    from ixt_stream.stream import sockets
    from ixt_stream.update.learner import Learner
    from ixt_stream.weights import collective, filesystem, publish, shm

    run_dir = work / model
    run_dir.mkdir(parents=True)
    argv = stream_overrides(run_dir, model, [free_port(), free_port(), free_port()])
    cfg = load(argv)
    model_dir = models.resolve(cfg.model)
    torch.set_num_threads(1)
    learner = Learner(model_dir, zero_stage=0, dtype=learner_dtype, lr=1e-6, threads=1)
    # A short sample: the step only has to change every weight; its size is not what is measured.
    full = realistic_conditioned(0)
    short = dataclasses.replace(full, input_ids=full.input_ids[:32], loss_mask=[0] * 16 + [1] * 16)
    batch = collate([short], models.load_tokenizer(model_dir).pad_token_id)
    root, dtype = run_dir / "weights", torch.bfloat16
    announce = sockets.sender(cfg.stream, "weights", RUN_ID)
    writers = {
        "filesystem": filesystem.FilesystemWriter(root, keep=3, dtype=dtype),
        "shm": shm.ShmWriter(shm.run_tag(RUN_ID, root), dtype),
        "collective": collective.CollectiveWriter(cfg.stream.host, cfg.stream.collective.port, 60.0, "gloo", dtype),
    }
    publishers = {t: publish.WeightPublisher(w, announce, root, dtype) for t, w in writers.items()}
    acks = sockets.receiver(cfg.stream, "acks", RUN_ID)
    timed: dict[str, float] = {}
    for w in writers.values():
        def timed_write(sd, v, _write=w.write):
            t0 = time.perf_counter()
            r = _write(sd, v)
            timed["write_s"] = time.perf_counter() - t0
            return r

        w.write = timed_write
    procs, results, version, up = [], {}, 0, set()
    try:
        for n in counts:
            procs.append(start_generator(argv, f"gen{n - 1}", run_dir))
            deadline = time.time() + 600
            while len(up) < n:  # a new generator acks version 0, or applies LATEST and acks it
                ack = acks.recv(timeout_ms=1000)
                if ack is not None and ack.version == version:
                    up.add(ack.generator_id)
                if time.time() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"generators did not come up: {up}\n"
                                       + (run_dir / f"gen{n - 1}.log").read_text()[-3000:])
            results[n] = {}
            for transport in TRANSPORTS:
                rounds = []
                for _ in range(WARMUP + repeats):
                    learner.train_step(batch)  # the optimizer step whose result is pushed
                    version += 1
                    t0 = time.perf_counter()
                    sd = learner.full_state_dict(dtype, copy=False)
                    t1 = time.perf_counter()
                    wv = publishers[transport].publish(sd, version, learner.step)
                    t2 = time.perf_counter()
                    announced_at = time.time()
                    del sd
                    got = {}
                    while len(got) < n:
                        ack = acks.recv(timeout_ms=120_000)
                        if ack is None:
                            raise RuntimeError(f"no ack within 120 s ({transport} v{version})")
                        if ack.version == version:
                            got[ack.generator_id] = time.perf_counter()
                    t3 = max(got.values())
                    lines = [r for name in got for r in read_jsonl(run_dir / f"bench-{name}.jsonl")
                             if r["version"] == version]
                    rounds.append({
                        "gather_s": t1 - t0, "write_s": timed["write_s"],
                        "announce_s": (t2 - t1) - timed["write_s"],
                        "heard_after_s": max(r["heard"] for r in lines) - announced_at,
                        **{k: max(r[k] for r in lines) for k in ("read_verify_s", "load_s", "repack_s", "repacked")},
                        "end_to_end_s": t3 - t0, "num_bytes": wv.num_bytes,
                    })
                rounds = rounds[WARMUP:]
                med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                results[n][transport] = {"median": med, "rounds": rounds}
        nbytes = int(results[1]["shm"]["median"]["num_bytes"])
        full_repack = statistics.median(r["full_repack_s"] for name in (f"gen{i}" for i in range(max(counts)))
                                        for r in read_jsonl(run_dir / f"bench-{name}.jsonl") if "full_repack_s" in r)
        sd = learner.full_state_dict(dtype, copy=False)
        payload = b"".join(bytes(t.contiguous().view(torch.uint8).numpy()) for t in sd.values())
        del sd
        hashes = {}  # the digest the push uses (BLAKE3) and SHA-256, on the same bytes
        for name, fn in (("blake3_s", lambda b: blake3.blake3(b).hexdigest()),
                         ("sha256_s", lambda b: hashlib.sha256(b).hexdigest())):
            t0 = time.perf_counter()
            fn(payload)
            hashes[name] = time.perf_counter() - t0
        del payload
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        acks.close()
        for p in publishers.values():
            p.writer.close()
        announce.close()
        del learner
    memcpy = memcpy_floor(nbytes)
    floors = {"memcpy_s": memcpy, "full_repack_s": full_repack, "engine_floor_s": memcpy + full_repack,
              "zmq_1_s": zmq_floor(nbytes, 1), "zmq_2_s": zmq_floor(nbytes, 2)}
    return {"model": model, "num_bytes": nbytes, "generators": results, "floors": floors, "digest_once": hashes}


def run(quick: bool = False) -> Result:
    import gc

    repeats = 3 if quick else 5
    work = workdir("weights")
    result = Result("weights", quick=quick)
    for model in ("tiny", "smollm2"):
        m = measure_size(model, repeats, work)
        gc.collect()
        label = "tiny" if model == "tiny" else "SmolLM2-135M"
        floor = m["floors"]["engine_floor_s"]
        for n in (1, 2):
            for transport in TRANSPORTS:
                e2e = m["generators"][n][transport]["median"]["end_to_end_s"]
                result.rows.append(Row(
                    f"{label} ({m['num_bytes'] / 1e6:.0f} MB bf16), {n} generator{'s' * (n > 1)}, {transport}: "
                    "step -> serving", e2e, floor, "memcpy + full CPU repack", "s", False, "<= 1.5x floor",
                    e2e <= 1.5 * floor))
        result.details[model] = m
    result.details["workdir"] = str(work)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--gen":
        generator_worker(json.loads(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python -m bench.weights --gen OVERRIDES_JSON NAME (internal)")
