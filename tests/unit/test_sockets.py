"""ZeroMQ links: bad frames are counted and skipped, senders block at the HWM and never drop."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import zmq
from prometheus_client import REGISTRY

from ixt_stream.config import StreamConfig
from ixt_stream.stream import sockets
from ixt_stream.types import Sample, WeightVersion
from ixt_stream.wire.codec import encode_frame
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from tests.conftest import free_port

RUN = "run-a"


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def cfg() -> StreamConfig:
    return StreamConfig(samples_port=free_port(), high_water_mark=4, linger_ms=0)


def sample(i: int, response: str = "4") -> Sample:
    return Sample(sample_id=f"s{i}", prompt="2+2?", response=response, task="basic_arithmetic")


def bad_frames() -> dict[str, bytes]:
    good = encode_frame(sample(0), RUN)
    old = pb.Envelope(schema_version=pb.SCHEMA_VERSION_UNSPECIFIED, run_id=RUN)
    old.sample.sample_id = "old"
    return {
        "malformed": b"\xff\xff\xff garbage \x00",
        "truncated": good[: len(good) // 2],
        "unknown_run": encode_frame(sample(0), "run-b"),
        "schema_version": old.SerializeToString(),
        "unexpected_type": encode_frame(WeightVersion(version=1, step=1), RUN),
        "nothing": b"",
    }


def rejected(reason: str) -> float:
    labels = {"link": "samples", "reason": reason}
    return REGISTRY.get_sample_value("ixt_frames_rejected_total", labels) or 0.0


def test_bad_frames_are_counted_and_the_receiver_keeps_going(cfg, ctx):
    rx = sockets.receiver(cfg, "samples", RUN, ctx)
    raw = sockets.open_socket(cfg, "samples", "send", ctx)
    before = rejected("malformed")
    for frame in bad_frames().values():
        raw.send(frame)
    raw.send(encode_frame(sample(1), RUN))

    got = rx.recv(timeout_ms=5000)
    assert isinstance(got, Sample) and got.sample_id == "s1"
    # an empty frame parses as an envelope of schema version 0
    assert rx.rejects == {"malformed": 2, "unknown_run": 1, "schema_version": 2, "unexpected_type": 1}
    assert rejected("malformed") >= before + 1
    assert rx.recv(timeout_ms=50) is None and rx.received == 1


def test_async_receiver_skips_garbage_on_uvloop(cfg, ctx):
    import uvloop

    rx = sockets.receiver(cfg, "samples", RUN, ctx)
    tx = sockets.sender(cfg, "samples", RUN, ctx)

    async def main():
        tx.sock.send(b"garbage")
        await tx.asend(sample(7))
        return await rx.arecv()

    got = uvloop.run(main())
    assert got.sample_id == "s7" and rx.rejects["malformed"] == 1


def test_push_blocks_at_the_high_water_mark_and_delivers_everything(cfg, ctx):
    """A slow consumer: the sender is held back (bounded queue), and nothing is lost."""
    rx = sockets.receiver(cfg, "samples", RUN, ctx)
    tx = sockets.sender(cfg, "samples", RUN, ctx)
    big = "x" * 256 * 1024  # large frames, so the kernel's socket buffers hold only a few
    total = 400

    queued = 0
    while queued < total and tx.send(sample(queued, big), timeout_ms=300):
        queued += 1
    assert 2 * cfg.high_water_mark <= queued < total / 2, f"{queued} frames queued without a reader"

    def rest():
        for i in range(queued, total):
            while not tx.send(sample(i, big), timeout_ms=100):
                pass

    t = threading.Thread(target=rest)
    t.start()
    ids = []
    while len(ids) < total:
        got = rx.recv(timeout_ms=10_000)
        assert got is not None, f"stalled after {len(ids)} frames"
        ids.append(got.sample_id)
        time.sleep(0.001)
    t.join(timeout=10)
    assert ids == [f"s{i}" for i in range(total)]


def test_non_loopback_needs_curve(ctx):
    with pytest.raises(ValueError, match="curve_keys_dir"):
        sockets.open_socket(StreamConfig(host="0.0.0.0", samples_port=free_port()), "samples", "recv", ctx)


def test_curve_link_round_trip_and_refuses_plain_peers(tmp_path, ctx):
    keys = tmp_path / "keys"
    sockets.create_curve_keys(str(keys))
    client_keys = tmp_path / "client-host"  # what a connecting host holds: no server secret
    client_keys.mkdir()
    for name in ("server.key", "client.key", "client.key_secret"):
        (client_keys / name).write_bytes((keys / name).read_bytes())
    secure = StreamConfig(samples_port=free_port(), curve_keys_dir=str(keys), linger_ms=0)
    rx = sockets.receiver(secure, "samples", RUN, ctx)
    tx = sockets.sender(dataclasses.replace(secure, curve_keys_dir=str(client_keys)), "samples", RUN, ctx)
    assert tx.send(sample(1), timeout_ms=2000)
    assert rx.recv(timeout_ms=5000).sample_id == "s1"

    plain = ctx.socket(zmq.PUSH)
    plain.linger = 0
    plain.connect(f"tcp://127.0.0.1:{secure.samples_port}")
    plain.send(encode_frame(sample(2), RUN))  # queued locally; the CURVE handshake never completes
    assert rx.recv(timeout_ms=500) is None
    plain.close()
