"""`metrics.wandb=true`: a W&B run (offline, no network) beside the JSONL, same scalars + the run config."""

from __future__ import annotations

import json
import struct
import time

import pytest

from ixt_stream.config import load
from ixt_stream.metrics import MetricsSink, read_jsonl


def wandb_records(path) -> list:
    """The protobuf records of a `.wandb` file (a LevelDB-style log: 32 KiB blocks of records with a
    7-byte header each; a long record is split into FIRST/MIDDLE/LAST pieces)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    out, pos, piece = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece, pos = piece + data[pos + 7:pos + 7 + size], pos + 7 + size
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(piece)
            out.append(record)
            piece = b""
        elif kind == 0:
            break
    return out


def finished_records(path, timeout_s: float = 60.0) -> list:
    """The records once the run's `exit` record is in: W&B's own process writes the file, and
    `finish()` can return before it has."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} holds no exit record"
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_an_offline_wandb_run_gets_the_same_scalars_and_the_config(tmp_path):
    cfg = load(["metrics.wandb=true", "metrics.wandb_mode=offline", f"run.run_dir={tmp_path / 'run7'}",
                "learner.lr=0.25", "run.tensorboard=false"])
    sink = MetricsSink.from_config(cfg, "train")
    for step in (1, 2, 3):
        sink.log({"train/loss": 1.0 / step, "weights/version": step // 2, "note": "JSONL only"}, step)
    sink.close()

    (run_file,) = (tmp_path / "run7" / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, run.run_group, run.job_type) == ("ixt-stream", "run7-train", "run7", "train")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["learner"]["lr"] == 0.25 and config["metrics"]["wandb"] is True and "model" in config
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    jsonl = read_jsonl(tmp_path / "run7" / "metrics" / "train.jsonl")
    assert [h["_step"] for h in history] == [row["step"] for row in jsonl] == [1, 2, 3]
    for h, row in zip(history, jsonl, strict=True):
        assert h["train/loss"] == row["train/loss"] and h["weights/version"] == row["weights/version"]
        assert "note" not in h


def test_wandb_is_off_by_default_and_its_mode_is_checked(tmp_path):
    sink = MetricsSink.from_config(load([f"run.run_dir={tmp_path}", "run.tensorboard=false"]), "train")
    sink.log({"train/loss": 1.0}, 1)
    sink.close()
    assert not (tmp_path / "wandb").exists()
    from ixt_stream.config import ConfigError

    with pytest.raises(ConfigError, match="metrics.wandb_mode"):
        load(["metrics.wandb_mode=cloudy"])
