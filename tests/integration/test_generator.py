"""A real generator process (tiny model, real vLLM) against this test acting as orchestrator + learner.

Proves, over real sockets: samples arrive well-formed; a weight version published mid-run is
applied, acknowledged, and stamped on every later sample; SIGTERM stops the process cleanly; and
a generator started after the publish serves that version from its first sample (LATEST).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ixt_stream.config import StreamConfig
from ixt_stream.metrics import read_jsonl, read_status
from ixt_stream.stream import sockets
from ixt_stream.types import Sample, WeightAck
from ixt_stream.weights import publish, shm
from tests.conftest import free_port, reap

pytestmark = pytest.mark.slow
RUN = "itest"


def start_generator(overrides: list[str], log_path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "ixt_stream.cli", "serve", "generator", *overrides],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def recv(rx: sockets.Receiver, proc: subprocess.Popen, log_path, timeout_s: float = 180):
    """The next frame, failing fast (with the log) if the generator died or went quiet."""
    deadline = time.monotonic() + timeout_s
    while (got := rx.recv(timeout_ms=500)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no frame (rc={proc.poll()}):\n{log_path.read_text()[-3000:]}")
    return got


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


@pytest.mark.parametrize("transport", ["filesystem", "shm"])
def test_generator_streams_samples_and_applies_a_weight_version_mid_run(tmp_path, tiny_model_dir, transport,
                                                                          teardown):
    from safetensors.torch import load_file

    stream = StreamConfig(samples_port=free_port(), acks_port=free_port(), weights_port=free_port(),
                          high_water_mark=8, linger_ms=0, weight_transport=transport)
    overrides = [f"stream.weight_transport={transport}",
        "profile=smoke", f"run.run_dir={tmp_path}", f"run.run_id={RUN}",
        f"stream.samples_port={stream.samples_port}", f"stream.acks_port={stream.acks_port}",
        f"stream.weights_port={stream.weights_port}", f"stream.high_water_mark={stream.high_water_mark}",
        "generator.prompts_per_request=2", "generator.sampling.max_new_tokens=16",
    ]
    samples = sockets.receiver(stream, "samples", RUN)
    acks = sockets.receiver(stream, "acks", RUN)
    pub = publish.publisher(stream, str(tmp_path), RUN)
    for end in (samples, acks, pub):
        teardown.callback(end.close)
    log_path = tmp_path / "generator.log"
    proc = start_generator(overrides, log_path)
    teardown.callback(reap, proc)
    # -- initial weights: well-formed samples at version 0 ---------------------------------
    first = [recv(samples, proc, log_path) for _ in range(4)]
    s = first[0]
    assert isinstance(s, Sample) and s.weight_version == 0 and s.generator_id == "generator-0"
    assert s.task == "basic_arithmetic" and s.reference_answer and s.num_response_tokens > 0
    assert s.prompt_id.startswith("train-basic_arithmetic") and s.metadata["entry"].startswith("{")
    assert len({x.sample_id for x in first}) == 4
    assert first[0].prompt_id == first[1].prompt_id  # k=2 samples per prompt (smoke profile)

    # -- publish version 1 mid-run: applied, acked, stamped on later samples ---------------
    sd = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    t0 = time.perf_counter()
    wv = pub.publish(sd, version=1, step=2)
    publish_s = time.perf_counter() - t0
    versions = []
    ack = None
    while ack is None:
        versions.append(recv(samples, proc, log_path).weight_version)  # keep the generator unblocked
        got = acks.recv(timeout_ms=0)
        ack = got if isinstance(got, WeightAck) else None
    assert ack.version == 1 and ack.generator_id == "generator-0" and ack.apply_seconds > 0
    while 1 not in versions:
        versions.append(recv(samples, proc, log_path).weight_version)
    assert versions == sorted(versions)  # never back to an older version
    print(f"\ntiny model: publish {publish_s:.3f}s ({wv.num_bytes / 1e6:.1f} MB), "
          f"apply {ack.apply_seconds:.3f}s")

    assert stop(proc) == 0, log_path.read_text()[-3000:]
    rows = read_jsonl(tmp_path / "metrics" / "generator-0.jsonl")
    assert rows[-1]["weights/version"] == 1
    assert read_status(tmp_path, "generator-0")["weights/version"] == 1
    print(f"tiny model: {max(r['generator/tokens_per_s'] for r in rows):.0f} tok/s (best engine call), "
          f"{rows[-1]['generator/samples_per_s']:.1f} samples/s overall")

    # -- a generator started after the publish serves v1 from its first sample -------------
    samples.drain()
    proc = start_generator(overrides, log_path)
    teardown.callback(reap, proc)
    assert recv(samples, proc, log_path).weight_version == 1
    assert acks.recv(timeout_ms=5000).version == 1
    assert stop(proc) == 0
    teardown.close()  # the publisher's close removes its segments
    assert shm.segments(shm.run_tag(RUN, tmp_path / "weights")) == []  # shm: none left by either side


@pytest.mark.slow
def test_reloaded_engine_generates_like_a_fresh_engine():
    """A generator must sample from the swapped-in weights, not only their embeddings: an engine
    built on init A and reloaded with init B answers token for token like an engine built on B,
    and reloaded with A again like it did at first. Both apply paths: the direct copy into the
    parameters + a repack of every handle (a payload that maps 1:1, as the transports send), and
    vLLM's `reload_weights` (any other payload, here fp32 tensors for a bf16 engine), which
    rebuilds every packed linear handle but the tied LM head's; `Engine` repacks exactly that
    one, and a reload that skipped it would answer from the old head."""
    script = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from ixt_stream import models
from ixt_stream.config import TinyModelConfig
from ixt_stream.sample.engine import Engine
shape = TinyModelConfig(hidden_size=64, num_layers=4, num_heads=1, num_kv_heads=1, intermediate_size=256)
cache = Path(sys.argv[1])
a, b = (models.tiny_dir(cache, shape, seed) for seed in (0, 1))
prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [100, 200, 300, 400]]
def tokens(engine):
    return [c[0].token_ids for c in engine.generate(prompts, max_new_tokens=6, temperature=0.0)]
def weights(folder):
    return {k: v.to(torch.bfloat16) for k, v in load_file(str(folder / "model.safetensors")).items()}
fresh_b = tokens(Engine(str(b), max_model_len=128, seed=0))
engine = Engine(str(a), max_model_len=128, seed=0)
before = tokens(engine)
engine.reload_weights(state_dict=weights(b))
direct = tokens(engine), engine.last_reload["repacked"]
engine.reload_weights(state_dict=load_file(str(a / "model.safetensors")))  # fp32: vLLM casts it
print("RESULT", before != fresh_b, direct[0] == fresh_b, direct[1] > 1, tokens(engine) == before,
      engine.last_reload["repacked"])
"""
    from ixt_stream.config import ModelConfig

    cache = os.path.expanduser(ModelConfig().cache_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, cache], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # direct: every handle repacked; reload_weights: only the tied LM head
    assert "RESULT True True True True 1" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.timeout(240)
def test_a_prompt_too_long_is_skipped_and_counted_and_the_generator_goes_on(tmp_path):
    """Issue 13, item 2: one ~1,000-token prompt under condition.max_seq_len=512 used to kill the
    generator with vLLM's context-length error; the prompts after it were never sampled."""
    import json

    rows = [{"id": f"p{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "basic_arithmetic"}
            for i in range(5)]
    rows.insert(1, {"id": "long", "prompt": "Add all of these: " + "1 + " * 500 + "1.", "answer": "501"})
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stream = StreamConfig(samples_port=free_port(), acks_port=free_port(), weights_port=free_port())
    overrides = ["profile=smoke", f"run.run_dir={tmp_path}", f"run.run_id={RUN}", "condition.max_seq_len=512",
                 f"task.prompts_file={tmp_path / 'prompts.jsonl'}", f"stream.samples_port={stream.samples_port}",
                 f"stream.acks_port={stream.acks_port}", f"stream.weights_port={stream.weights_port}",
                 "generator.prompts_per_request=2", "generator.sampling.max_new_tokens=8", "generator.dtype=float32"]
    samples = sockets.receiver(stream, "samples", RUN)
    log_path = tmp_path / "generator.log"
    proc = start_generator(overrides, log_path)
    try:
        got = [recv(samples, proc, log_path) for _ in range(10)]  # 5 prompts x 2 samples: all but the long one
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]  # its shard ran out: a normal exit
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        samples.close()
    assert sorted({s.prompt_id for s in got}) == ["p0", "p1", "p2", "p3", "p4"]
    status = read_status(tmp_path, "generator-0")
    assert status["generator/prompts_too_long"] == 1 and status["done"] is True and status["generator/samples"] == 10
    assert "prompt long has" in log_path.read_text()
