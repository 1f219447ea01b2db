"""The online loop under stress, with real processes: a paused learner (back-pressure), an
aggressive staleness bound, and a generator killed with -9 and restarted mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

from ixt_stream import metrics
from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.online import supervisor
from ixt_stream.online.main_job import wait_for_learner
from tests.integration.test_online_loop import _overrides

pytestmark = pytest.mark.slow


def _generated(db_path) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]


def _learner_step(run_dir) -> int:
    return int(metrics.read_status(run_dir, "learner").get("train/step", 0))


def _nonces(db_path) -> dict[str, list[int]]:
    """generator-1's samples by process (the id nonce) -> the weight versions they came from."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT sample_id, weight_version FROM samples WHERE generator_id = 'generator-1'")
        out: dict[str, list[int]] = {}
        for sid, version in rows.fetchall():
            out.setdefault(sid.split("-")[2], []).append(version)
    return out


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not pred():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_backpressure_staleness_and_generator_restart(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    overrides = [*_overrides(run_dir), "learner.max_steps=12", "stream.sync_every=1", "stream.max_version_lag=0",
                 "stream.high_water_mark=8", "client.max_in_flight=8"]
    # (_overrides sets sync_every=2 / lag 3 first; the later values win)
    cfg = load(overrides)
    db = run_dir / "ledger.sqlite"
    pids = supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))
    try:
        _wait(lambda: _learner_step(run_dir) >= 2, 180, "learner never reached step 2")

        # -- back-pressure: pause the learner; generation must stall, not buffer without bound ----
        os.killpg(pids["learner"], signal.SIGSTOP)
        try:
            bound = 2 * cfg.generator.samples_per_prompt * cfg.generator.prompts_per_request
            samples = [_generated(db)]
            for _ in range(60):  # up to 120 s (a loaded machine fills the buffers slowly), then
                time.sleep(2)    # generation must stall: at most `bound` new samples in 10 s
                samples.append(_generated(db))
                if len(samples) > 5 and samples[-1] - samples[-6] <= bound:
                    break
            grown = samples[-1] - samples[-6]
        finally:
            os.killpg(pids["learner"], signal.SIGCONT)
        assert grown <= bound, samples
        in_flight = Ledger(db).summary()["in_flight"]
        # bounded: HWMs, the prefetch queue and the critique window, plus loopback TCP buffers
        # (which hold most of it: ~1k frames of ~1-2 KB); a few MB, not a growing backlog
        assert in_flight < 2000, in_flight

        # -- kill -9 a generator, restart it: it catches up to the newest version first ----------
        # generator-0 is paused meanwhile, so the learner cannot finish on its samples alone before
        # the restarted process (a new id nonce) has produced any
        os.killpg(pids["generator-0"], signal.SIGSTOP)
        try:
            os.killpg(pids["generator-1"], signal.SIGKILL)
            _wait(lambda: not any(r["alive"] for r in supervisor.status(run_dir) if r["name"] == "generator-1"),
                  10, "generator-1 did not die")
            version_at_restart = _learner_step(run_dir)  # sync_every=1: version == learner step
            restarted = supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))
            assert list(restarted) == ["generator-1"]  # only the dead one is started again
            _wait(lambda: len(_nonces(db)) == 2, 240, "the restarted generator-1 produced nothing")
        finally:
            os.killpg(pids["generator-0"], signal.SIGCONT)
        summary = wait_for_learner(cfg, overrides, poll_s=2.0)
    finally:
        supervisor.down(cfg.run.run_dir, grace_s=20)

    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT sample_id, generator_id, weight_version, state, step FROM samples").fetchall()
    # the restarted process (a new id nonce) produced samples, all from a version at least as new
    # as the one published when it started: it applied LATEST before its first engine call
    nonces = _nonces(db)
    assert len(nonces) == 2, nonces.keys()
    first_run, second_run = sorted(nonces.values(), key=min)
    assert min(second_run) >= version_at_restart >= 1

    # staleness: lag 0 means every trained sample came from the version current at its step
    # (the learner trains step s with version s - 1 published), and stale samples were dropped
    for _, _, version, state, step in rows:
        if state == "trained":
            assert version >= step - 1, (version, step)
    ledger = Ledger(db).summary()
    drops = ledger["dropped_by_reason"]  # stale at the orchestrator (no critique paid) or at the learner
    assert drops.get("stale", 0) + drops.get("stale_before_critique", 0) > 0
    assert ledger["conserved"] and ledger["trained_twice"] == 0
    assert summary["steps"] == 12
