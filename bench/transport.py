"""ZeroMQ sample path: protobuf encode + send + receive + decode, against raw bytes on the same sockets.

The floor is the same number of frames of the same byte size pushed through the same PUSH/PULL
pair with no encoding. The loop-time fraction uses the online loop's measured sample rate when
`bench/results/e2e.json` exists (else a pessimistic 50 samples/s, above what the CPU loop reaches).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import zmq

from bench.report import RESULTS, Result, Row
from ixt_stream.types import ConditionedSample, Critique, Label, Sample
from ixt_stream.wire import codec

RUN = "bench"


def realistic_sample(i: int) -> Sample:
    return Sample(
        sample_id=f"gen0-{i}", prompt_id=f"p{i // 4}", task="basic_arithmetic",
        prompt="Calculate 7 + 5.\nThink step by step in a few short sentences, then give only the final "
               "answer inside <answer></answer> tags.",
        response="First, I add 7 and 5. Seven plus five is twelve, so the sum is 12. " * 5
                 + "<answer>12</answer>",
        reference_answer="12", weight_version=3, generator_id="gen0", created_at=time.time(),
        num_response_tokens=128, metadata={"entry": json.dumps({"expression": "7 + 5", "num_terms": 2,
                                                                  "difficulty": {"num_terms": [2, 2]}})},
    )


def realistic_conditioned(i: int) -> ConditionedSample:
    crit = Critique(f"gen0-{i}", "The value is correct and the final answer is tagged as required.",
                    1.0, Label.GOOD, thinking="extracted 12; reference 12; score 1.0", model_id="verifier")
    ids = list(range(1000, 1350))
    return ConditionedSample(realistic_sample(i), crit, ids, [0] * 100 + [1] * 250, 40)


def _sender(addr: str, frames: list[bytes] | None, body_kind: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.set_hwm(1000)
    sock.connect(addr)
    make = realistic_sample if body_kind == "sample" else realistic_conditioned
    bodies = [make(i) for i in range(256)]
    for i in range(n):
        sock.send(frames[i % len(frames)] if frames else codec.encode_frame(bodies[i % 256], RUN), copy=False)
    sock.close(linger=-1)
    ctx.term()


def _measure(body_kind: str, n: int, raw: bool) -> float:
    """Frames per second through a PUSH (other process) -> PULL (here) pair on loopback TCP."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.set_hwm(1000)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    make = realistic_sample if body_kind == "sample" else realistic_conditioned
    size = len(codec.encode_frame(make(0), RUN))
    frames = [b"x" * size] if raw else None
    proc = mp.get_context("spawn").Process(target=_sender, args=(f"tcp://127.0.0.1:{port}", frames, body_kind, n))
    proc.start()
    pull.recv(copy=False)  # the clock starts at the first frame: process start-up is not transport
    t0 = time.perf_counter()
    for _ in range(n - 1):
        data = pull.recv(copy=False)
        if not raw:
            out = codec.decode_frame(data.bytes, RUN)
            assert not isinstance(out, codec.Reject), out
    dt = time.perf_counter() - t0
    proc.join()
    pull.close(linger=0)
    ctx.term()
    return (n - 1) / dt


def loop_rate() -> tuple[float, str]:
    path = RESULTS / "e2e.json"
    if path.exists():
        doc = json.loads(path.read_text())
        rate = doc.get("details", {}).get("ixt_samples_per_s")
        if rate:
            return float(rate), "measured (e2e.json)"
    return 50.0, "assumed upper bound"


def run(quick: bool = False) -> Result:
    n = 20_000 if quick else 100_000
    result = Result("transport", quick=quick)
    rate, source = loop_rate()
    for kind in ("sample", "conditioned"):
        size = len(codec.encode_frame((realistic_sample if kind == "sample" else realistic_conditioned)(0), RUN))
        ixt = _measure(kind, n, raw=False)
        floor = _measure(kind, n, raw=True)
        fraction = rate / ixt
        result.rows.append(Row(f"{kind} frames ({size} B): protobuf+zmq", ixt, floor, "raw zmq bytes",
                               "msg/s", goal="<1% of loop time", met=fraction < 0.01))
        result.details[f"{kind}_loop_time_fraction"] = fraction
        result.details[f"{kind}_frame_bytes"] = size
    result.details["loop_samples_per_s"] = rate
    result.details["loop_rate_source"] = source
    return result
