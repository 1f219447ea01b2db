"""The multi-rank online learner (issue 16): two gloo ranks under torchrun train exactly as one.

The same conditioned samples, in the same order, go over the real conditioned link to a 1-rank
learner and to a 2-rank one (`learner.num_gpus=2`, started the way `ixt up` starts it). Their
per-step losses and token counts match to fp32 rounding, and so do their final weights; only rank
0 opened a ZeroMQ socket or the ledger (each process records what it opened: `rank_probe`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import read_jsonl
from ixt_stream.online import supervisor
from ixt_stream.stream import sockets
from ixt_stream.types import Critique, Label, Sample
from tests.conftest import free_port, reap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
STEPS, PER_STEP = 4, 5
REPO = Path(__file__).resolve().parents[2]


def _samples(cond) -> list:
    """Groups of PER_STEP samples of unequal lengths (so a token-balanced split is not a halving),
    one group more than the learner trains: a group closes when the next sample arrives."""
    out = []
    for n in range((STEPS + 1) * PER_STEP):
        s = Sample(f"s{n}", f"What is {n} + {n % 7}?",
                   f"{n} plus {n % 7} is {2 * n % 97}. " * (1 + n % 5) + f"<answer>{n + n % 7}</answer>",
                   generator_id="g")
        out.append(cond.condition(s, Critique(s.sample_id, "Correct." if n % 3 else "Wrong.", float(n % 3 > 0),
                                              Label.GOOD if n % 3 else Label.BAD)))
    return out


def _train(tmp_path: Path, ranks: int, conditioned: list) -> tuple[list[dict], Path]:
    """Run the learner role with `ranks` ranks until it stops; returns its metrics rows and probe dir."""
    run_dir, probes = tmp_path / f"run{ranks}", tmp_path / f"probe{ranks}"
    probes.mkdir()
    overrides = [
        "profile=smoke", f"run.run_dir={run_dir}", "run.run_id=ranks", "run.tensorboard=false",
        f"learner.max_steps={STEPS}", f"learner.max_samples_per_batch={PER_STEP}", "learner.dtype=fp32",
        "learner.zero_stage=0", f"learner.num_gpus={ranks}", f"learner.master_port={free_port()}",
        "stream.sync_every=2", "stream.max_version_lag=100", f"stream.conditioned_port={free_port()}",
        f"stream.weights_port={free_port()}", f"stream.acks_port={free_port()}",
    ]
    cfg = load(overrides)
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.generated([c.sample for c in conditioned])
    ledger.critiqued([c.sample.sample_id for c in conditioned])
    ledger.close()
    [learner] = [s for s in supervisor.stack(cfg, overrides) if s.name == "learner"]
    argv = [a if a != "ixt_stream.cli" else "tests.integration.rank_probe" for a in learner.argv]
    if ranks == 1:
        argv = [sys.executable, "-m", "tests.integration.rank_probe", *argv[3:]]
    env = {**os.environ, **learner.env, "OMP_NUM_THREADS": "1", "IXT_PROBE_DIR": str(probes),
           "PYTHONPATH": str(REPO)}
    log = (tmp_path / f"learner{ranks}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = sockets.sender(cfg.stream, "conditioned", cfg.run.run_id)
    try:
        for c in conditioned:
            assert out.send(c, timeout_ms=1000)
        assert proc.wait(timeout=300) == 0, (tmp_path / f"learner{ranks}.log").read_text()[-4000:]
    finally:
        out.close()
        reap(proc)
        log.close()
    return read_jsonl(run_dir / "metrics" / "learner.jsonl"), probes


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    folder = run_dir / "final" if (run_dir / "final").exists() else run_dir
    return load_file(str(folder / "model.safetensors"))


def test_two_gloo_ranks_train_as_one_and_only_rank_0_touches_the_stream(tmp_path, tiny_model_dir):
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.models import load_tokenizer

    conditioned = _samples(Conditioner(load_tokenizer(tiny_model_dir), mode="critique"))
    t0 = time.perf_counter()
    one, _ = _train(tmp_path, 1, conditioned)
    t1 = time.perf_counter()
    two, probes = _train(tmp_path, 2, conditioned)
    t2 = time.perf_counter()

    # -- the same steps: same samples, tokens and loss (fp32 rounding apart) -----------------------
    assert [r["train/step"] for r in one] == [r["train/step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert (a["train/samples"], a["train/tokens"], a["train/loss_tokens"]) == \
               (b["train/samples"], b["train/tokens"], b["train/loss_tokens"])
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5, abs=1e-6)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
    assert one[-1]["train/loss"] < one[0]["train/loss"]  # it trained: a loss that moves, not a constant
    w0, w1, w2 = _weights(Path(tiny_model_dir)), _weights(tmp_path / "run1"), _weights(tmp_path / "run2")
    assert w1.keys() == w2.keys()
    # Adam divides by sqrt(v): a gradient near zero turns fp32 rounding in the rank split into an update
    # difference of a few 1e-6, so the bound is relative to how far training moved the weights.
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w1)
    drift = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert moved > 1e-3 and drift < 0.01 * moved, (moved, drift)
    assert all(r["weights/version"] == r["train/step"] // 2 for r in two)

    # -- only rank 0 opened sockets or the ledger; both ranks ran ---------------------------------
    seen = {p.name: json.loads(p.read_text()) for p in probes.glob("rank-*.json")}
    assert set(seen) == {"rank-0.json", "rank-1.json"}
    assert seen["rank-1.json"] == {"zmq_sockets": [], "sqlite": []}
    assert len(seen["rank-0.json"]["zmq_sockets"]) >= 3  # PULL conditioned, PULL acks, PUB weights
    assert any(p.endswith("ledger.sqlite") for p in seen["rank-0.json"]["sqlite"])
    summary = Ledger(tmp_path / "run2" / "ledger.sqlite").summary()
    assert summary["trained"] == STEPS * PER_STEP and summary["trained_twice"] == 0
    print(json.dumps({"1-rank": {"wall_s": round(t1 - t0, 1), "step_s": [round(r["train/step_s"], 3) for r in one],
                                 "loss": [round(r["train/loss"], 5) for r in one]},
                      "2-rank": {"wall_s": round(t2 - t1, 1), "step_s": [round(r["train/step_s"], 3) for r in two],
                                 "loss": [round(r["train/loss"], 5) for r in two]}}))


def test_ixt_train_on_two_ranks_makes_the_one_rank_model(tmp_path):
    """`ixt train learner.num_gpus=2` starts its own two ranks and ends with the 1-rank model."""
    from tests.integration.test_train_eval import _ixt, _rows, _write

    data = _write(tmp_path / "annotated.jsonl", _rows(8))
    summaries = {}
    for ranks in (1, 2):
        r = _ixt("train", "profile=smoke", f"run.run_dir={tmp_path / f'run{ranks}'}", "run.tensorboard=false",
                 "learner.dtype=fp32", "learner.max_samples_per_batch=5", "learner.max_steps=3",
                 f"learner.num_gpus={ranks}", f"learner.master_port={free_port()}", f"train.data={data}",
                 f"train.output_dir={tmp_path / f'model{ranks}'}")
        assert r.returncode == 0, r.stderr[-4000:]
        [line] = [x for x in r.stdout.splitlines() if x.startswith("{")]  # rank 0 alone prints it
        summaries[ranks] = json.loads(line)
    assert summaries[1]["train/steps"] == summaries[2]["train/steps"] == 3
    assert summaries[2]["train/tokens_total"] == summaries[1]["train/tokens_total"]
    assert summaries[2]["train/last_loss"] == pytest.approx(summaries[1]["train/last_loss"], rel=1e-5)
    w1, w2 = _weights(tmp_path / "model1"), _weights(tmp_path / "model2")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
