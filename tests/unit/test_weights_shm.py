"""The shared-memory weight transport: round trip, digest and refusals, segment lifetime, and no
segment left behind after kill -9 of the writer or of a reader (real /dev/shm, real processes).

The real engine path is the one every transport shares (`apply.WeightApplier` ->
`Engine.reload_weights`), covered by tests/integration/test_generator.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import xxhash

from ixt_stream.config import StreamConfig
from ixt_stream.types import WeightVersion
from ixt_stream.weights import apply, base, publish, shm
from tests.conftest import free_port
from tests.unit.test_weights import FakeEngine, state_dict, wait_poll

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tag():
    t = f"test-{uuid.uuid4().hex[:10]}"
    yield t
    for p in shm.segments(t):  # never leave a test's segments behind, even when it fails
        p.unlink(missing_ok=True)


def test_round_trip_casts_on_the_way_in_and_maps_without_copying(tag):
    sd = state_dict()
    writer, reader = shm.ShmWriter(tag, torch.bfloat16), shm.ShmReader(tag)
    uri, digest, size = writer.write(sd, version=1)
    path = Path(uri)
    assert path.parent == shm.SHM_DIR and path.stat().st_size == size
    assert digest == xxhash.xxh3_128(path.read_bytes()).hexdigest()  # the digest made while writing
    wv = WeightVersion(version=1, step=1, uri=uri, digest=digest, num_bytes=size, published_at=0.0,
                               transport="shm")
    got = reader.read(wv)
    assert set(got) == {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"}  # tie dropped
    for name, t in got.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, sd[name].to(torch.bfloat16))
    # views of one mapping: consecutive, aligned, no private copy per tensor
    a, b = got.values()
    assert b.data_ptr() - a.data_ptr() == shm.aligned(a.numel() * 2)
    writer.close()
    assert shm.segments(tag) == []


def test_only_two_segments_stay_and_a_reader_keeps_an_unlinked_one(tag):
    writer, reader = shm.ShmWriter(tag), shm.ShmReader(tag)
    announced = []
    for v in range(1, 5):
        uri, digest, size = writer.write(state_dict(seed=v), v)
        announced.append(WeightVersion(v, v, uri, digest, size, 0.0, "shm"))
        if v == 1:
            held = reader.read(announced[0])
    assert [p.name.rsplit("-v", 1)[1] for p in shm.segments(tag)] == ["3", "4"]
    for name, t in held.items():  # v1 was unlinked while mapped: its pages stay with the reader
        assert torch.equal(t, state_dict(seed=1)[name])
    with pytest.raises(base.WeightRefused, match="missing"):
        reader.read(announced[1])  # unlinked before anyone opened it: refused, the next one supersedes
    writer.close()
    assert shm.segments(tag) == []


def test_the_writer_recycles_a_segment_only_when_no_reader_maps_it(tag):
    writer, reader = shm.ShmWriter(tag), shm.ShmReader(tag)

    def write(v):
        uri, digest, size = writer.write(state_dict(seed=v), v)
        return WeightVersion(v, v, uri, digest, size, 0.0, "shm"), os.stat(uri).st_ino

    (wv1, ino1), (_, ino2) = write(1), write(2)
    held = reader.read(wv1)  # v1 mapped (and share-locked) by a generator
    _, ino3 = write(3)
    assert ino3 != ino1  # not overwritten under the reader: a fresh segment instead
    for name, t in held.items():
        assert torch.equal(t, state_dict(seed=1)[name])
    del held, t  # the mapping, and its lock, go with the views
    (wv4, ino4) = write(4)
    assert ino4 == ino2  # v2 was mapped by no one: its pages were reused
    assert all(torch.equal(t, state_dict(seed=4)[k]) for k, t in reader.read(wv4).items())
    writer.close()


def test_bad_segments_are_refused(tag):
    writer, reader = shm.ShmWriter(tag), shm.ShmReader(tag)
    uri, digest, size = writer.write(state_dict(), 1)
    wv = WeightVersion(1, 1, uri, digest, size, 0.0, "shm")
    with pytest.raises(base.WeightRefused, match="truncated"):
        reader.read(WeightVersion(1, 1, uri, digest, size + 1, 0.0, "shm"))
    with pytest.raises(base.WeightRefused, match="outside_root"):
        reader.read(WeightVersion(1, 1, "/dev/shm/ixt-other-run-1-v1", digest, size, 0.0, "shm"))
    with open(uri, "r+b") as f:  # one flipped byte in the payload
        f.seek(size - 200)
        byte = f.read(1)
        f.seek(size - 200)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(base.WeightRefused, match="digest_mismatch"):
        reader.read(wv)
    writer.close()


def test_publisher_and_applier_with_shm(tmp_path):
    cfg = StreamConfig(weights_port=free_port(), linger_ms=0, weight_transport="shm", weight_dtype="bfloat16")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    pub = publish.publisher(cfg, str(tmp_path), run_id)
    app = apply.applier(cfg, str(tmp_path), run_id, "generator-0")
    tag = shm.run_tag(run_id, tmp_path / "weights")
    try:
        assert app.poll() is None
        time.sleep(0.3)  # slow joiner
        sd = state_dict()
        wv = pub.publish(sd, version=1, step=4)
        assert wv.transport == "shm" and wv.uri.startswith(f"/dev/shm/ixt-{tag}-")
        got = wait_poll(app)
        assert got == wv
        engine = FakeEngine()
        ack = app.apply(got, engine)
        assert ack is not None and ack.version == 1
        (loaded,) = engine.loaded
        for name, t in loaded.items():
            assert torch.equal(t, sd[name].to(torch.bfloat16))
    finally:
        app.close()
        pub.close()
    assert shm.segments(tag) == []


# -- kill -9 ------------------------------------------------------------------------------------

WRITER = """
import sys, time, torch
from ixt_stream.weights import shm
tag = sys.argv[1]
w = shm.ShmWriter(tag)
sd = {"a": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(64, 64)}
w.write(sd, 1)
w.write(sd, 2)
fill = w._fill
def stuck(mm, *a):  # die mid-write of v3: its temporary is on /dev/shm
    fill(mm, *a)
    print("writing", flush=True)
    time.sleep(600)
w._fill = stuck
w.write(sd, 3)
"""

READER = """
import json, sys, time
from ixt_stream.types import WeightVersion
from ixt_stream.weights import shm
held = shm.ShmReader(sys.argv[1]).read(WeightVersion(**json.loads(sys.argv[2])))
print("mapped", float(held["a"].sum()), flush=True)
time.sleep(600)
"""


def spawn(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_kill9_writer_leaves_nothing_once_a_reader_or_the_next_writer_cleans_up(tag):
    for cleaner in ("reader", "writer"):
        proc = spawn(WRITER, tag)
        try:
            assert proc.stdout.readline().strip() == "writing"
        finally:
            kill9(proc)
        left = [p.name for p in shm.segments(tag)]
        assert len(left) == 2 and sum(n.endswith(".tmp") for n in left) == 1  # v2, and v1 recycled into v3's temporary
        if cleaner == "reader":
            shm.ShmReader(tag).close()  # a surviving generator shutting down
            assert shm.segments(tag) == []
        else:
            w = shm.ShmWriter(tag)  # a restarted learner sweeps the dead one's segments first
            assert [p.name for p in shm.segments(tag)] == []
            w.write(state_dict(), 3)
            w.close()
            assert shm.segments(tag) == []


@pytest.mark.timeout(60)
def test_kill9_reader_holding_a_mapping_blocks_nothing_and_leaks_nothing(tag):
    writer = shm.ShmWriter(tag)
    sd = {"a": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(64, 64)}
    uri, digest, size = writer.write(sd, 1)
    wv = WeightVersion(1, 1, uri, digest, size, 0.0, "shm")
    proc = spawn(READER, tag, json.dumps(asdict(wv)))
    try:
        assert proc.stdout.readline().split() == ["mapped", str(float(sd["a"].sum()))]
    finally:
        kill9(proc)
    for v in (2, 3, 4):  # the writer goes on; v1 is unlinked on schedule
        writer.write(sd, v)
    assert [p.name.rsplit("-v", 1)[1] for p in shm.segments(tag)] == ["3", "4"]
    writer.close()
    assert shm.segments(tag) == []
