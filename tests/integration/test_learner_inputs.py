"""The online learner against bad frames and a restart without a checkpoint (issue 13, items 9, 10).

In-process learner (real DeepSpeed, tiny model) fed over the real conditioned link, as in
test_reliability's NaN test: well-formed frames carrying samples no step could train on are
rejected at the boundary, counted, ledgered dropped, and training goes on; a run that trained
without checkpoints is never silently restarted from the base weights.
"""

from __future__ import annotations

import json
import threading

import pytest

from ixt_stream.config import ConfigError, load
from ixt_stream.ledger import Ledger
from ixt_stream.stream import sockets
from ixt_stream.types import Critique, Label, Sample
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from tests.integration.test_online_loop import _overrides

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RUN = "e2e"


def raw_frame(sid: str, ids: list[int], mask: list[int]) -> bytes:
    """A well-formed envelope (right run id, schema, version) around any ids and mask."""
    env = pb.Envelope(schema_version=codec.SCHEMA_VERSION, run_id=RUN)
    env.conditioned.sample.sample_id = sid
    env.conditioned.input_ids = codec.pack_ids(ids)
    env.conditioned.loss_mask = bytes(mask)
    return env.SerializeToString()


BAD = {  # sample id -> (ids, mask, reject reason)
    "empty": ([], [], "invalid"),
    "huge_id": ([1, 2, 10**7, 4], [0, 0, 1, 1], "out_of_range"),
    "negative_id": ([1, 2, -5, 4], [0, 0, 1, 1], "out_of_range"),
    "too_long": ([7] * 3000, [0] * 100 + [1] * 2900, "out_of_range"),  # > tokens_per_batch and max_seq_len
    "mask_short": ([1, 2, 3, 4], [0, 1], "invalid"),
    "mask_not_01": ([1, 2, 3, 4], [0, 2, 1, 1], "invalid"),
    "no_loss": ([1, 2, 3, 4], [0, 0, 0, 0], "invalid"),
}


def feed(cfg, cond, ledger: Ledger, ids: list[str], bad_after: int | None = None) -> sockets.Sender:
    """Ledger and queue good samples `ids` on the conditioned link (BAD frames after the
    `bad_after`-th good one); delivered once the learner binds. A token-budget group closes when
    the next sample arrives, so callers send one group more than they train."""
    samples = [Sample(i, f"What is {n} + 1?", f"<answer>{n + 1}</answer>", generator_id="g")
               for n, i in enumerate(ids)]
    ledger.generated(samples + ([Sample(sid, "p", "r", generator_id="g") for sid in BAD] if bad_after else []))
    ledger.critiqued([s.sample_id for s in samples] + (list(BAD) if bad_after else []))
    out = sockets.sender(cfg.stream, "conditioned", cfg.run.run_id)
    for k, s in enumerate(samples):
        if k == bad_after:
            for sid, (bad_ids, mask, _) in BAD.items():
                out.sock.send(raw_frame(sid, bad_ids, mask))
        assert out.send(cond.condition(s, Critique(s.sample_id, "Correct.", 1.0, Label.GOOD)), timeout_ms=1000)
    return out


def _setup(tmp_path, tiny_model_dir, *extra):
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.models import load_tokenizer

    run_dir = tmp_path / "run"
    cfg = load([*_overrides(run_dir), "learner.max_samples_per_batch=4", "stream.sync_every=1",
                "stream.max_version_lag=100", "run.tensorboard=false", *extra])
    return cfg, Conditioner(load_tokenizer(tiny_model_dir), mode="critique"), Ledger(run_dir / "ledger.sqlite")


def test_bad_frames_are_rejected_counted_and_ledgered_and_training_goes_on(tmp_path, tiny_model_dir):
    from ixt_stream.online import learner as online_learner

    cfg, cond, ledger = _setup(tmp_path, tiny_model_dir, "learner.max_steps=3")
    out = feed(cfg, cond, ledger, [f"g{i}" for i in range(16)], bad_after=2)
    try:
        summary = online_learner.run(cfg, threading.Event())
    finally:
        out.close()
    assert summary["steps"] == 3 and summary["samples_trained"] == 12
    assert summary["rejected_frames"] == {"invalid": 4, "out_of_range": 3}
    s = ledger.summary()
    assert s["dropped_by_reason"] == {"invalid_frame": len(BAD)} and s["trained"] == 12
    assert s["conserved"] and s["in_flight"] == 4  # the group that closes no step
    ledger.close()


def test_a_run_that_trained_without_a_checkpoint_is_never_silently_restarted(tmp_path, tiny_model_dir):
    from ixt_stream.online import learner as online_learner

    # -- first learner: save_every=0 (the default), trains 2 steps, publishes v1 and v2 ---------
    cfg, cond, ledger = _setup(tmp_path, tiny_model_dir, "learner.max_steps=2")
    assert cfg.learner.save_every == 0
    out = feed(cfg, cond, ledger, [f"a{i}" for i in range(12)])
    try:
        assert online_learner.run(cfg, threading.Event())["versions_pushed"] == 2
    finally:
        out.close()
    latest = cfg.run.run_dir + "/weights/LATEST"
    assert json.load(open(latest))["version"] == 2 and ledger.summary()["trained"] == 8

    # -- a restart (e.g. after kill -9) with no checkpoint: refused, nothing changed ------------
    with pytest.raises(ConfigError, match="no checkpoint.*trained to step 2.*fresh_on_corrupt_checkpoint"):
        online_learner.run(cfg, threading.Event())
    assert ledger.summary()["trained"] == 8 and json.load(open(latest))["version"] == 2

    # -- explicitly starting over: earlier samples rolled back, versions continue (v3, v4) -------
    cfg = load([*_overrides_of(cfg), "learner.fresh_on_corrupt_checkpoint=true"])
    out = feed(cfg, cond, ledger, [f"b{i}" for i in range(12)])
    try:
        summary = online_learner.run(cfg, threading.Event())
    finally:
        out.close()
    assert summary["versions_pushed"] == 4 and json.load(open(latest))["version"] == 4
    s = ledger.summary()
    assert s["dropped_by_reason"] == {"rolled_back": 8} and s["trained"] == 8 and s["conserved"]
    ledger.close()


def _overrides_of(cfg) -> list[str]:
    """The overrides that rebuild `cfg` (same run dir and ports)."""
    st = cfg.stream
    return ["profile=smoke", f"run.run_dir={cfg.run.run_dir}", f"run.run_id={cfg.run.run_id}",
            "learner.max_samples_per_batch=4", "stream.sync_every=1", "stream.max_version_lag=100",
            "run.tensorboard=false", "learner.max_steps=2", f"stream.samples_port={st.samples_port}",
            f"stream.conditioned_port={st.conditioned_port}", f"stream.weights_port={st.weights_port}",
            f"stream.acks_port={st.acks_port}"]
