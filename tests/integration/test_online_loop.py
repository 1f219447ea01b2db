"""The online loop end to end: real reward service, vLLM generators, orchestrator and DeepSpeed
learner as separate processes over real gRPC and ZeroMQ sockets, on a tiny random model."""

from __future__ import annotations

import json
import math
import sqlite3
import time

import pytest

from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import read_jsonl
from ixt_stream.online import supervisor
from ixt_stream.online.main_job import wait_for_learner
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _overrides(run_dir) -> list[str]:
    ports = [free_port() for _ in range(5)]
    return [
        "profile=smoke", f"run.run_dir={run_dir}", "run.run_id=e2e", "generator.num_generators=2",
        "learner.max_steps=8", "stream.sync_every=2", "stream.max_version_lag=3",
        f"reward.port={ports[0]}", f"client.address=127.0.0.1:{ports[0]}", f"stream.samples_port={ports[1]}",
        f"stream.conditioned_port={ports[2]}", f"stream.weights_port={ports[3]}", f"stream.acks_port={ports[4]}",
    ]


def _live_processes_mentioning(text: str) -> list[int]:
    """Pids of running (not zombie) processes whose command line contains `text`."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_online_loop_pushes_versions_and_accounts_for_every_sample(tmp_path, tiny_model_dir):
    overrides = _overrides(tmp_path / "run")
    cfg = load(overrides)
    services = supervisor.stack(cfg, overrides)
    pids = supervisor.up(cfg.run.run_dir, services)
    try:
        summary = wait_for_learner(cfg, overrides, poll_s=2.0)
        time.sleep(3)  # let generators apply the last push and ack it
    finally:
        outcome = supervisor.down(cfg.run.run_dir, grace_s=20)
    # -- make down leaves no process behind -------------------------------------------------------
    assert len(pids) == 5
    assert _live_processes_mentioning(f"run.run_dir={cfg.run.run_dir}") == [], outcome
    assert supervisor.status(cfg.run.run_dir) == []

    # -- weights: >= 3 versions pushed, and every generator produced samples with version >= 3 ----
    assert summary["steps"] == 8 and summary["versions_pushed"] == 4
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    newest = dict(db.execute("SELECT generator_id, MAX(weight_version) FROM samples GROUP BY generator_id"))
    assert set(newest) == {"generator-0", "generator-1"}
    assert all(v >= 3 for v in newest.values()), newest

    # -- conservation: generated = trained + dropped + in flight, nothing trained twice ------------
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite").summary()
    assert ledger["conserved"], ledger
    assert ledger["trained_twice"] == 0
    assert ledger["trained"] == summary["samples_trained"] > 0
    assert set(ledger["dropped_by_reason"]) <= {"stale", "stale_before_critique", "shutdown", "too_long",
                                                "critique_failed"}

    # -- the loss stays finite and every step was applied -----------------------------------------
    rows = read_jsonl(tmp_path / "run" / "metrics" / "learner.jsonl")
    assert len(rows) == 8 and all(math.isfinite(r["train/loss"]) for r in rows)
    assert summary["skipped_steps"] == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "final" / "ixt_condition.json").read_text())["mode"] == "critique"

    # -- no critique gave an answer away, and the leak check ran on every one ----------------------
    orch = read_jsonl(tmp_path / "run" / "metrics" / "orchestrator.jsonl")
    assert orch and all(r["critique/leak_fraction"] == 0.0 for r in orch)
    assert json.loads((tmp_path / "run" / "learner_summary.json").read_text())["done"]
