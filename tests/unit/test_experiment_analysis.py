"""The experiment's analysis: the FLOPs formula, monotone curves, bounds, and the known-answer test
(curves shifted by exactly 2x in compute come out 2.0x, with and without sampling noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ixt_stream.experiment import analysis
from ixt_stream.experiment.analysis import Reach, Shape

SHAPE = Shape(non_embedding=1000, embedding=50, layers=2, hidden=8, vocab=25)


def test_flops_charge_blocks_attention_pairs_and_the_head_on_loss_tokens_only():
    tokens, pairs, loss = analysis.sequence_counts(10, 4)
    assert (tokens, pairs, loss) == (10, 55, 4)
    assert analysis.flops(SHAPE, tokens, pairs, loss) == 6 * 1000 * 10 + 12 * 2 * 8 * 55 + 6 * 8 * 25 * 4
    # a prefix token costs the blocks and attention, never the head
    longer = analysis.flops(SHAPE, *analysis.sequence_counts(11, 4))
    assert longer - analysis.flops(SHAPE, tokens, pairs, loss) == 6 * 1000 + 12 * 2 * 8 * 11


def test_checkpoints_are_sqrt2_apart_and_end_at_the_budget():
    marks = analysis.checkpoint_flops(1e12, 11)
    assert marks[-1] == pytest.approx(1e12) and len(marks) == 11
    assert np.allclose(np.diff(np.log(marks)), math.log(2) / 2)
    assert marks[-1] / marks[0] >= 10 ** 1.5 - 1e-6  # 1.5 decades


def test_monotone_is_isotonic_in_both_directions():
    assert analysis.monotone([0.0, 0.3, 0.2, 0.5]).tolist() == pytest.approx([0.0, 0.25, 0.25, 0.5])
    assert analysis.monotone([3.0, 2.0, 2.5, 1.0], increasing=False).tolist() == pytest.approx([3.0, 2.25, 2.25, 1.0])


def logistic(c):
    return 1 / (1 + np.exp(-(np.log(c) - math.log(2e10)) * 1.5))


def grid(n=12):
    return np.array([0.0, *analysis.checkpoint_flops(1e11, n - 1)])


def test_known_answer_a_curve_shifted_by_2x_in_compute_comes_out_2x():
    c = grid()
    base = np.concatenate([[0.0], logistic(c[1:])])
    arm = np.concatenate([[0.0], logistic(2 * c[1:])])  # the arm gets at 2C what the baseline gets at C
    for target in (0.3, 0.5, 0.8):
        m = analysis.curve_multiplier(c, base, c, arm, target)
        assert m.kind == "exact" and m.value == pytest.approx(2.0, rel=1e-9)
    loss_base, loss_arm = 3 - 2 * base, 3 - 2 * arm
    m = analysis.curve_multiplier(c, loss_base, c, loss_arm, 3 - 2 * 0.6, increasing=False)
    assert m.kind == "exact" and m.value == pytest.approx(2.0, rel=1e-9)


def test_known_answer_survives_sampling_noise_in_the_bootstrap():
    """Per-problem right/wrong drawn at the curve's probability: the interval holds 2.0 and excludes 1."""
    rng = np.random.default_rng(0)
    c = grid()
    p_base = np.concatenate([[0.0], logistic(c[1:])])
    p_arm = np.concatenate([[0.0], logistic(2 * c[1:])])
    draws = rng.random((3, len(c), 2000))
    base, arm = (draws < p_base[None, :, None]).astype(float), (draws < p_arm[None, :, None]).astype(float)
    m = analysis.bootstrap_multiplier(c, base, c, arm, 0.5, True, resamples=200)
    assert m["kind"] == "exact" and m["point"] == pytest.approx(2.0, rel=0.1)
    assert m["ci"][0] <= 2.0 <= m["ci"][1] and m["ci"][0] > 1.0 and m["mde"] > 1.0


def test_bounds_when_a_curve_never_gets_there_or_is_there_at_once():
    c = grid()
    rising = np.concatenate([[0.0], logistic(c[1:])])
    flat = np.zeros_like(rising)
    up = analysis.curve_multiplier(c, rising, c, flat, 0.5)
    assert up.kind == "upper" and up.value == pytest.approx(analysis.reach(c, rising, 0.5).compute / c[-1])
    assert analysis.curve_multiplier(c, flat, c, rising, 0.5).kind == "lower"
    assert analysis.curve_multiplier(c, flat, c, flat, 0.5) == analysis.Multiplier(None, "undefined")
    at_once = np.concatenate([[0.0], np.ones(len(c) - 1)])
    assert analysis.reach(c, at_once, 0.5) == Reach("early", c[1])
    assert analysis.curve_multiplier(c, rising, c, at_once, 0.5).kind == "lower"


def test_a_dip_does_not_count_as_reaching_the_target_twice():
    c = grid(6)
    noisy = np.array([0.0, 0.2, 0.6, 0.4, 0.7, 0.9])  # smoothed: 0, .2, .5, .5, .7, .9
    r = analysis.reach(c, noisy, 0.6)
    assert r.status == "reached" and c[3] < r.compute < c[4]


def test_paired_difference_and_its_mde():
    rng = np.random.default_rng(1)
    a = (rng.random((3, 1000)) < 0.6).astype(float)
    b = (rng.random((3, 1000)) < 0.5).astype(float)
    d = analysis.bootstrap_difference(a, b, resamples=300)
    assert d["point"] == pytest.approx(a.mean() - b.mean())
    assert d["ci"][0] < d["point"] < d["ci"][1] and not analysis.is_null(d, 0.0)
    same = analysis.bootstrap_difference(a, a, resamples=50)
    assert same["point"] == 0 and same["ci"] == [0.0, 0.0] and analysis.is_null(same, 0.0)


def test_finite_turns_inf_and_nan_into_none():
    assert analysis.finite({"a": [float("inf"), 1.0, np.float64("nan")], "b": np.int64(3)}) == {"a": [None, 1.0, None],
                                                                                                  "b": 3}
