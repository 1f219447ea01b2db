"""`ixt experiment` arithmetic: FLOPs counting, curve interpolation, the multiplier and its bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ixt_stream.experiment import analysis
from ixt_stream.experiment.train_run import count_params, milestone_tokens

GRID = np.array([0.0, 1.0, 2.0, 4.0, 8.0])


# -- FLOPs and parameters -------------------------------------------------------------------------


def test_training_flops_is_six_n_d():
    assert analysis.training_flops(1_000, 10) == 60_000
    assert analysis.training_flops(3_400_000, 0) == 0


def test_param_counts_match_a_built_llama():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden=128, layers=2, intermediate=256, heads=2, kv_heads=1)
    config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    built = count_params(model, vocab_size=1000)
    assert built == analysis.param_counts(1000, **shape)
    assert built["embedding"] == 1000 * 128  # tied: counted once
    assert built["total"] == built["embedding"] + built["non_embedding"]


def test_milestones_are_log2_spaced_up_to_the_budget():
    assert milestone_tokens(64_000, 4) == [8_000, 16_000, 32_000, 64_000]
    assert milestone_tokens(1000, 1) == [1000]


# -- interpolation --------------------------------------------------------------------------------


def test_first_reach_interpolates_linearly_between_checkpoints():
    curve = np.array([0.0, 0.2, 0.4, 0.6, 0.8])
    assert analysis.first_reach(GRID, curve, 0.3) == pytest.approx(1.5)
    assert analysis.first_reach(GRID, curve, 0.5) == pytest.approx(3.0)
    assert analysis.first_reach(GRID, curve, 0.8) == pytest.approx(8.0)
    assert analysis.first_reach(GRID, curve, 0.9) is None
    assert analysis.first_reach(GRID, curve, 0.0) == 0.0


def test_first_reach_takes_the_first_crossing_of_a_non_monotone_curve():
    curve = np.array([0.0, 0.5, 0.1, 0.6, 0.6])
    assert analysis.first_reach(GRID, curve, 0.4) == pytest.approx(0.8)


def test_on_grid_reads_a_run_at_nominal_flops():
    got = analysis.on_grid([0, 1.1, 2.05, 4.1, 8.2], [0, 0.1, 0.2, 0.4, 0.8], GRID)
    assert got[0] == 0 and got[-1] == pytest.approx(0.4 + 0.4 * (8 - 4.1) / (8.2 - 4.1))
    assert np.all(np.diff(got) >= 0)


# -- the multiplier -------------------------------------------------------------------------------


def test_multiplier_of_a_curve_shifted_by_half_the_compute_is_two():
    base = np.array([0.0, 0.1, 0.2, 0.4, 0.8])  # best 0.8 at 8 FLOPs
    arm = np.array([0.0, 0.2, 0.4, 0.8, 0.9])  # reaches 0.8 at 4 FLOPs
    m = analysis.multiplier(GRID, base, arm)
    assert m.status == "reached" and m.value == pytest.approx(2.0)
    assert m.target_accuracy == pytest.approx(0.8) and m.baseline_flops == 8.0 and m.arm_flops == 4.0


def test_multiplier_below_one_when_the_arm_is_slower():
    base = np.array([0.0, 0.3, 0.6, 0.6, 0.6])  # best 0.6 first at 2
    arm = np.array([0.0, 0.1, 0.2, 0.3, 0.6])  # reaches 0.6 at 8
    m = analysis.multiplier(GRID, base, arm)
    assert m.status == "reached" and m.value == pytest.approx(0.25)


def test_multiplier_is_an_upper_bound_when_the_arm_never_reaches_the_target():
    base = np.array([0.0, 0.2, 0.5, 0.5, 0.5])
    arm = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    m = analysis.multiplier(GRID, base, arm)
    assert m.status == "censored" and m.value == pytest.approx(2.0 / 8.0) and m.arm_flops is None


def test_multiplier_undefined_when_the_baseline_never_improves():
    m = analysis.multiplier(GRID, np.zeros(5), np.array([0.0, 0.5, 0.5, 0.5, 0.5]))
    assert m.status == "undefined" and m.value is None


def test_multiplier_at_init_is_infinite_and_serialises_as_null():
    base = np.array([0.1, 0.2, 0.3, 0.3, 0.3])
    arm = np.array([0.4, 0.4, 0.4, 0.4, 0.4])
    m = analysis.multiplier(GRID, base, arm)
    assert m.status == "at_init" and math.isinf(m.value)
    assert json.loads(json.dumps(analysis.finite({"v": m.value}), allow_nan=False)) == {"v": None}


def test_bootstrap_multiplier_interval_contains_the_point_and_is_exact_for_identical_seeds():
    base = np.tile([0.0, 0.1, 0.2, 0.4, 0.8], (3, 1))
    arm = np.tile([0.0, 0.2, 0.4, 0.8, 0.9], (3, 1))
    out = analysis.bootstrap_multiplier(GRID, base, arm, resamples=50)
    assert out["value"] == pytest.approx(2.0) and out["ci"] == pytest.approx([2.0, 2.0])
    rng = np.random.default_rng(1)
    noisy = np.clip(arm + rng.normal(0, 0.05, arm.shape), 0, 1)
    out = analysis.bootstrap_multiplier(GRID, base, noisy, resamples=200)
    assert out["ci"][0] <= out["value"] <= out["ci"][1]
    assert out["defined_fraction"] == 1.0


def test_bootstrap_difference_and_mean():
    d = analysis.bootstrap_difference(np.array([0.5, 0.5]), np.array([0.2, 0.2]), resamples=20)
    assert d["mean"] == pytest.approx(0.3) and d["ci"] == pytest.approx([0.3, 0.3])
    m = analysis.bootstrap_mean(np.array([0.0, 1.0]), resamples=200)
    assert m["mean"] == 0.5 and 0.0 <= m["ci"][0] <= m["ci"][1] <= 1.0


# -- one scale's summary --------------------------------------------------------------------------


def _result(arm: str, seed: int, accs: list[float], mode: str = "none") -> dict:
    points = [{"flops": f, "accuracy": a, "answered": 1.0, "conditions": {"positive": {"accuracy": a}}}
              for f, a in zip(GRID, accs, strict=True)]
    points[-1]["conditions"] = {"positive": {"accuracy": accs[-1]}, "negative": {"accuracy": 0.0},
                                "none": {"accuracy": accs[-1] / 2}}
    return {"arm": arm, "seed": seed, "mode": mode, "points": points, "samples_seen": 10, "epochs": 1,
            "train_seconds": 1.0}


def test_summarize_scale_gives_multipliers_gaps_and_conditioning():
    results = [_result("baseline", s, [0, 0.1, 0.2, 0.4, 0.8]) for s in range(3)]
    results += [_result("ixt", s, [0, 0.2, 0.4, 0.8, 0.9], mode="critique") for s in range(3)]
    s = analysis.summarize_scale(results, ["baseline", "ixt", "label"], GRID, resamples=50)
    assert set(s["arms"]) == {"baseline", "ixt"}  # no label runs: left out, not invented
    assert s["multiplier"]["ixt"]["value"] == pytest.approx(2.0)
    assert s["final_gap"]["ixt"]["mean"] == pytest.approx(0.1)
    cg = s["conditioning_gap"]["ixt"]
    assert cg["positive_minus_negative"]["mean"] == pytest.approx(0.9)
    assert cg["positive_minus_none"]["mean"] == pytest.approx(0.45)
    assert "baseline" not in s["conditioning_gap"]
    json.dumps(analysis.finite(s), allow_nan=False)


def test_bootstrap_interval_is_unbounded_not_nan_when_resamples_start_at_the_target():
    """Seeds where the arm starts at or above the baseline's best give inf resamples: the interval's
    upper end must then be inf (unbounded), never nan."""
    grid = np.array([0.0, 1.0, 2.0])
    base = np.array([[0.2, 0.3, 0.4], [0.2, 0.25, 0.26]])
    arm = np.array([[0.1, 0.2, 0.45], [0.3, 0.3, 0.3]])
    out = analysis.bootstrap_multiplier(grid, base, arm, resamples=400)
    assert out["ci"] is not None and not any(math.isnan(x) for x in out["ci"])
    assert math.isinf(out["ci"][1]) and out["ci"][0] <= out["ci"][1]
