"""Crashes of the online loop's stateful services, with real processes and sockets: the reward
service and the learner are killed with -9 mid-run and restarted (one stack, both faults, to keep
CI time down), then the ledger's conservation check. In-process, with real DeepSpeed checkpoints
of the tiny model: a corrupted, truncated or unfinished checkpoint is refused by name and the
previous intact one is loaded, and a NaN step in the online learner is skipped, counted, ledgered
and never published. (Corrupted weight payloads: tests/unit/test_weights.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from ixt_stream import metrics
from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import read_jsonl
from ixt_stream.online import supervisor
from ixt_stream.online.main_job import wait_for_learner
from ixt_stream.update import checkpoint_integrity as integrity
from tests.conftest import free_port
from tests.integration.test_online_faults import _learner_step, _wait
from tests.integration.test_online_loop import _overrides

EXPECTED_DROPS = {"stale", "stale_before_critique", "shutdown", "too_long", "rolled_back"}


def _kill9(run_dir, name: str) -> None:
    pid = json.loads((run_dir / "pids" / f"{name}.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    _wait(lambda: not any(r["alive"] for r in supervisor.status(run_dir) if r["name"] == name), 10, f"{name} lives")


def _newest_intact_step(ckpt_dir) -> int:
    for tag in integrity.tags(ckpt_dir):
        try:
            integrity.verify(tag)
        except integrity.CorruptCheckpoint:
            continue
        return int(tag.name.split("-")[1])
    return 0


# -- kill -9 the reward service, then the learner; restart each -----------------------------------


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


def _kill9_rank(run_dir, rank: int) -> None:
    """kill -9 one learner rank: the torchrun worker under the learner service with that RANK
    (torchrun starts each in a session of its own). torchrun then stops the other ranks and exits,
    so the learner service is down whole."""
    torchrun = json.loads((run_dir / "pids" / "learner.json").read_text())["pid"]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
            if f"RANK={rank}" in env and int(proc.name) != torchrun and _descends(int(proc.name), torchrun):
                os.kill(int(proc.name), signal.SIGKILL)
                break
        except (OSError, ValueError, IndexError):
            continue
    else:
        raise AssertionError(f"no learner rank {rank} under torchrun {torchrun}")
    _wait(lambda: not any(r["alive"] for r in supervisor.status(run_dir) if r["name"] == "learner"), 120,
          "torchrun outlived its killed rank")


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_reward_service_and_learner_killed_and_restarted(tmp_path, tiny_model_dir, ranks):
    """With 2 ranks the killed one is rank 1 (not the rank that owns the stream and the ledger)."""
    run_dir = tmp_path / "run"
    overrides = [*_overrides(run_dir), "generator.num_generators=1", "learner.max_steps=12",
                 "learner.save_every=3", "stream.sync_every=1", f"learner.num_gpus={ranks}",
                 f"learner.master_port={free_port()}"]
    cfg = load(overrides)
    db = run_dir / "ledger.sqlite"
    supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))
    try:
        _wait(lambda: _learner_step(run_dir) >= 2, 240, "learner never reached step 2")

        # -- the reward service: down longer than the client's whole retry budget (~6 s) ---------
        _kill9(run_dir, "reward")
        time.sleep(10)
        assert [r["alive"] for r in supervisor.status(run_dir) if r["name"] == "orchestrator"] == [True]
        assert list(supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))) == ["reward"]
        step_at_reward_restart = _learner_step(run_dir)
        _wait(lambda: _learner_step(run_dir) >= step_at_reward_restart + 2, 180, "no progress after reward restart")
        assert [r["alive"] for r in supervisor.status(run_dir) if r["name"] == "orchestrator"] == [True]

        # -- the learner: killed at least one step past its newest checkpoint -------------------
        _wait(lambda: _learner_step(run_dir) > 3 and _learner_step(run_dir) % 3 != 0, 120, "no step past a save")
        _kill9(run_dir, "learner") if ranks == 1 else _kill9_rank(run_dir, 1)
        ckpt_step = _newest_intact_step(run_dir / "checkpoints")
        with sqlite3.connect(db) as con:
            last_trained_step = con.execute("SELECT MAX(step) FROM trainings").fetchone()[0]
            lost = {r[0] for r in con.execute("SELECT sample_id FROM trainings WHERE step > ?", (ckpt_step,))}
        version_at_kill = json.loads((run_dir / "weights" / "LATEST").read_text())["version"]
        assert 3 <= ckpt_step < last_trained_step, (ckpt_step, last_trained_step)
        assert list(supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))) == ["learner"]
        summary = wait_for_learner(cfg, overrides, poll_s=1.0)
        time.sleep(2)  # let the generator apply the last push
    finally:
        supervisor.down(cfg.run.run_dir, grace_s=20)

    # -- the orchestrator waited the outage out and resent what was in flight; nothing dropped ----
    orch_log = (run_dir / "logs" / "orchestrator.log").read_text()
    assert "reward stream failed for good" in orch_log, orch_log[-3000:]
    assert metrics.read_status(run_dir, "orchestrator")["orchestrator/stream_restarts"] >= 1

    # -- the learner resumed from its checkpoint: step, ledger position, versions ----------------
    learner_log = (run_dir / "logs" / "learner.log").read_text()
    resumed = re.search(r"resumed at step (\d+), weights v(\d+) \((\d+) later", learner_log)
    assert resumed, learner_log[-3000:]
    assert (int(resumed[1]), int(resumed[2]), int(resumed[3])) == (ckpt_step, version_at_kill, len(lost))
    steps = [int(r["train/step"]) for r in read_jsonl(run_dir / "metrics" / "learner.jsonl")]
    restart_at = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert steps[restart_at] == ckpt_step + 1 and steps[-1] == 12 and summary["steps"] == 12 and summary["done"]
    with sqlite3.connect(db) as con:
        states = dict(con.execute(
            f"SELECT sample_id, state || ':' || COALESCE(reason, '') FROM samples WHERE sample_id IN "
            f"({','.join('?' * len(lost))})", sorted(lost)).fetchall())
        retrained = con.execute(f"SELECT COUNT(*) FROM trainings WHERE sample_id IN ({','.join('?' * len(lost))})",
                                sorted(lost)).fetchone()[0]
    assert set(states.values()) == {"dropped:rolled_back"} and retrained == 0  # out of the model, for good

    # generators kept their weights across the learner's absence: their version never went back
    gen_versions = [r["weights/version"] for r in read_jsonl(run_dir / "metrics" / "generator-0.jsonl")]
    assert gen_versions == sorted(gen_versions) and gen_versions[-1] > version_at_kill, gen_versions
    assert summary["versions_pushed"] == version_at_kill + (12 - ckpt_step)

    # -- conservation: every sample accounted for, none trained twice, none without a critique ---
    ledger = Ledger(db).summary()
    print("ledger after reward + learner kill -9:", json.dumps(ledger))
    assert ledger["conserved"], ledger
    assert ledger["trained_twice"] == 0 and ledger["trained_without_critique"] == 0
    assert set(ledger["dropped_by_reason"]) <= EXPECTED_DROPS, ledger["dropped_by_reason"]
    assert ledger["dropped_by_reason"].get("rolled_back", 0) == len(lost) > 0


# -- checkpoints: refused by name when damaged, the previous intact one loaded -------------------


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    from ixt_stream.batch.collate import collate
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.models import load_tokenizer
    from ixt_stream.types import Critique, Label, Sample

    tok = load_tokenizer(tiny_model_dir)
    cond = Conditioner(tok, mode="critique")
    rows = [(Sample(str(i), f"What is {i} + {i}?", f"{i} + {i} = {2 * i}. <answer>{2 * i}</answer>"),
             Critique(str(i), "Correct.", 1.0, Label.GOOD)) for i in range(6)]
    return collate([cond.condition(s, c) for s, c in rows], pad_id=tok.pad_token_id)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_damaged_checkpoint_is_refused_by_name_and_the_previous_one_loaded(tiny_model_dir, batch, tmp_path, caplog):
    from ixt_stream.update.learner import Learner

    kw = dict(zero_stage=0, dtype="bf16", lr=3e-3, warmup_steps=3)
    a = Learner(tiny_model_dir, **kw)
    a.train_step(batch), a.train_step(batch)
    a.save_checkpoint(tmp_path)
    at_2, draw_after_2 = a.full_state_dict(), torch.rand(8)  # the RNG draw right after the save
    after_2 = a.train_step(batch)
    a.train_step(batch)
    step_4 = a.save_checkpoint(tmp_path)
    at_4, draw_after_4 = a.full_state_dict(), torch.rand(8)
    files = sorted((p for p in step_4.iterdir() if p.suffix == ".pt"), key=lambda p: p.stat().st_size)

    b = Learner(tiny_model_dir, **kw)
    torch.manual_seed(1234)  # a fresh process's RNG
    assert b.load_checkpoint(tmp_path) == 4
    assert _same(b.full_state_dict(), at_4) and torch.equal(torch.rand(8), draw_after_4)  # RNG restored

    damage = {
        "flipped byte": lambda p: _flip_byte(p, p.stat().st_size // 2),  # torch.load would not notice
        "truncated": lambda p: os.truncate(p, p.stat().st_size // 3),
        "missing": lambda p: p.unlink(),
    }
    originals = {p: p.read_bytes() for p in files}
    for what, hurt in damage.items():
        for victim in files:
            hurt(victim)
            caplog.clear()
            with caplog.at_level("ERROR", logger="ixt_stream.update.learner"):
                assert b.load_checkpoint(tmp_path) == 2, (what, victim)
            assert str(victim) in caplog.text, (what, caplog.text)
            assert _same(b.full_state_dict(), at_2) and torch.equal(torch.rand(8), draw_after_2)
            m = b.train_step(batch)  # the optimizer state and LR position came back with it
            assert (m["train/lr"], m["train/loss"]) == (after_2["train/lr"], after_2["train/loss"])
            victim.write_bytes(originals[victim])
    # an unfinished save (killed before its manifest was written) is never loaded
    (step_4 / integrity.MANIFEST).rename(tmp_path / "manifest.bak")
    assert b.load_checkpoint(tmp_path) == 2 and "no manifest" in caplog.text
    (tmp_path / "manifest.bak").rename(step_4 / integrity.MANIFEST)
    assert b.load_checkpoint(tmp_path) == 4

    # nothing intact: a clear error naming every refused file, never a silent fresh start
    os.truncate(files[-1], 100)
    older = tmp_path / "step-2" / files[-1].name
    _flip_byte(older, older.stat().st_size // 2)
    with pytest.raises(integrity.CorruptCheckpoint) as e:
        b.load_checkpoint(tmp_path)
    assert str(files[-1]) in str(e.value) and str(older) in str(e.value) and "truncated" in str(e.value)


# -- NaN in the online learner: skipped, counted, ledgered, never published -----------------------


@pytest.mark.slow
def test_online_learner_skips_a_nan_step_and_never_publishes_it(tmp_path, tiny_model_dir, monkeypatch):
    from safetensors.torch import load_file

    from ixt_stream.condition.format import Conditioner
    from ixt_stream.models import load_tokenizer
    from ixt_stream.online import learner as online_learner
    from ixt_stream.stream import sockets
    from ixt_stream.types import Critique, Label, Sample
    from ixt_stream.update.learner import Learner

    run_dir = tmp_path / "run"
    cfg = load([*_overrides(run_dir), "learner.max_steps=4", "learner.max_samples_per_batch=4",
                "stream.sync_every=1", "stream.max_version_lag=100", "stream.filesystem.keep_versions=10",
                "run.tensorboard=false"])
    # -- the orchestrator's side: 24 critiqued samples on the real conditioned link -------------
    cond = Conditioner(load_tokenizer(tiny_model_dir), mode="critique")
    samples = [Sample(f"s{i}", f"What is {i} + 1?", f"<answer>{i + 1}</answer>", generator_id="g")
               for i in range(24)]
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.generated(samples)
    ledger.critiqued([s.sample_id for s in samples])
    out = sockets.sender(cfg.stream, "conditioned", cfg.run.run_id)
    for s in samples:  # queued until the learner binds
        assert out.send(cond.condition(s, Critique(s.sample_id, "Correct.", 1.0, Label.GOOD)), timeout_ms=1000)

    # -- the fault: the 3rd batch's forward pass gives NaN, in the real engine -------------------
    real_step, calls, after_nan = Learner.train_step, [], {}

    def train_step(self, batch):
        calls.append(batch.input_ids.shape[0])
        if len(calls) != 3:
            return real_step(self, batch)
        hook = self.engine.module.model.embed_tokens.register_forward_hook(lambda m, a, o: o * float("nan"))
        try:
            return real_step(self, batch)
        finally:
            hook.remove()
            after_nan.update(self.full_state_dict())

    monkeypatch.setattr(Learner, "train_step", train_step)
    try:
        summary = online_learner.run(cfg, threading.Event())
    finally:
        out.close()

    # -- skipped and counted ----------------------------------------------------------------------
    assert (summary["steps"], summary["skipped_steps"], len(calls)) == (4, 1, 5)
    assert summary["drops"] == {"nonfinite_step": calls[2]}
    rows = read_jsonl(run_dir / "metrics" / "learner.jsonl")
    assert [r["train/applied"] for r in rows] == [1, 1, 0, 1, 1]
    assert rows[2]["train/skipped_steps"] == 1 and rows[2]["weights/version"] == rows[1]["weights/version"] == 2

    # -- never published: one version per applied step, the NaN step's state is v2's -------------
    latest = json.loads((run_dir / "weights" / "LATEST").read_text())
    assert (latest["version"], latest["step"]) == (4, 4)
    versions = {int(p.name[1:]): load_file(p / "model.safetensors") for p in (run_dir / "weights").glob("v*")}
    assert sorted(versions) == [1, 2, 3, 4]
    assert all(torch.isfinite(t.float()).all() for v in versions.values() for t in v.values())
    v2 = versions[2]
    assert _same({k: after_nan[k].to(t.dtype) for k, t in v2.items()}, v2)  # unchanged by the NaN step
    assert not _same(versions[3], v2)

    # -- ledgered: the NaN batch dropped by reason, the rest trained once --------------------------
    summary_ledger = ledger.summary()
    assert summary_ledger["dropped_by_reason"] == {"nonfinite_step": calls[2]}
    assert summary_ledger["trained"] == sum(calls) - calls[2] and summary_ledger["conserved"]
    ledger.close()
