"""FLOPs, monotone curves, the compute multiplier and the hierarchical paired bootstrap: numpy only.

FLOPs are defined here once, for training (forward + backward = 3 x forward):

    flops = 6 N_non_embedding x tokens            every token through every block (prefix included)
          + 12 L d x pairs                         attention: QK^T and AV, 4 d per (query, key) pair
                                                   per layer forward; pairs = sum T(T+1)/2 (causal)
          + 6 d V x loss_tokens                    the LM head, computed on loss tokens only

The embedding lookup is free; padding is not counted. The critic's compute is excluded.

The multiplier at a target (an accuracy to reach, or a loss to get below) is C_baseline / C_arm,
where C is where a curve first reaches the target after it is made monotone (isotonic regression in
checkpoint order) and interpolated linearly in log-compute. Checkpoints are sqrt(2) apart, so a curve
shifted by exactly 2x in compute comes out 2.0x (the known-answer test). A curve that never gets
there gives a bound: an arm that never reaches it, an upper bound (C_base / C_arm_last); a baseline
that never reaches it, a lower bound; one that is there by its first checkpoint (log-interpolation
from 0 FLOPs is undefined), the matching bound; neither, "undefined".

Intervals come from a hierarchical paired bootstrap: resample seeds (the same seeds for both arms:
a seed fixes init and data order in every arm), then held-out problems (the same problems for both).
The minimum detectable effect (80% power, 5% two-sided) is 2.8 bootstrap standard deviations, in
log space for multipliers. Left out: extrapolating curves past the budget, and multiple-comparison
corrections (the report lists every comparison it makes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z_MDE = 2.8  # 1.96 + 0.84


@dataclass(frozen=True)
class Shape:
    non_embedding: int
    embedding: int
    layers: int
    hidden: int
    vocab: int


def flops(shape: Shape, tokens: int, pairs: int, loss_tokens: int) -> float:
    """Training FLOPs of `tokens` tokens in sequences with `pairs` causal attention pairs."""
    return (6.0 * shape.non_embedding * tokens + 12.0 * shape.layers * shape.hidden * pairs
            + 6.0 * shape.hidden * shape.vocab * loss_tokens)


def sequence_counts(length: int, loss_tokens: int) -> tuple[int, int, int]:
    """(tokens, pairs, loss_tokens) of one sequence."""
    return length, length * (length + 1) // 2, loss_tokens


def checkpoint_flops(budget: float, n: int) -> list[float]:
    """n checkpoints at sqrt(2) spacing ending at the budget (ascending)."""
    return [budget * 2.0 ** (-(n - 1 - k) / 2) for k in range(n)]


def monotone(y, increasing: bool = True) -> np.ndarray:
    """Isotonic (pool-adjacent-violators) fit of y in index order."""
    y = np.asarray(y, float) if increasing else -np.asarray(y, float)
    blocks: list[list[float]] = []  # [mean, weight]
    for v in y:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out = np.concatenate([np.full(int(w), m) for m, w in blocks])
    return out if increasing else -out


@dataclass(frozen=True)
class Reach:
    status: str  # "reached" | "early" (by the first checkpoint) | "never"
    compute: float  # reached: where; early: the first checkpoint; never: the last checkpoint


def reach(compute, curve, target: float, increasing: bool = True) -> Reach:
    """Where a curve (index 0 = the initial model at 0 FLOPs) first reaches `target`, smoothed and log-interpolated."""
    c, s = np.asarray(compute, float), monotone(curve, increasing)
    hit = s >= target if increasing else s <= target
    if not hit.any():
        return Reach("never", float(c[-1]))
    i = int(np.argmax(hit))
    if i <= 1:
        return Reach("early", float(c[1]))
    t = (target - s[i - 1]) / (s[i] - s[i - 1])
    return Reach("reached", float(math.exp(math.log(c[i - 1]) + t * (math.log(c[i]) - math.log(c[i - 1])))))


@dataclass(frozen=True)
class Multiplier:
    value: float | None
    kind: str  # "exact" | "upper" (true value <= value) | "lower" (>= value) | "undefined"


def multiplier(base: Reach, arm: Reach) -> Multiplier:
    if base.status == "reached" and arm.status == "reached":
        return Multiplier(base.compute / arm.compute, "exact")
    if base.status in ("reached", "early") and arm.status == "never":
        return Multiplier(base.compute / arm.compute, "upper")
    if base.status == "never" and arm.status in ("reached", "early"):
        return Multiplier(base.compute / arm.compute, "lower")
    if base.status == "reached" and arm.status == "early":
        return Multiplier(base.compute / arm.compute, "lower")
    if base.status == "early" and arm.status == "reached":
        return Multiplier(base.compute / arm.compute, "upper")
    return Multiplier(None, "undefined")


def curve_multiplier(compute_base, base, compute_arm, arm, target: float, increasing: bool = True) -> Multiplier:
    return multiplier(reach(compute_base, base, target, increasing), reach(compute_arm, arm, target, increasing))


# -- the hierarchical paired bootstrap ------------------------------------------------------------


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(float)


def resample_weights(rng: np.random.Generator, seeds: int, problems: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed weights, then problem weights (counts of each in one resample)."""
    return _weights(rng, seeds), _weights(rng, problems)


def mean_curve(x: np.ndarray, ws: np.ndarray | None = None, wp: np.ndarray | None = None) -> np.ndarray:
    """[S, K, P] per-problem values -> [K] weighted mean (no weights: the plain mean)."""
    s, _, p = x.shape
    ws = np.ones(s) if ws is None else ws
    wp = np.ones(p) if wp is None else wp
    return np.einsum("s,skp,p->k", ws, x, wp) / (ws.sum() * wp.sum())


def summarize(values: list[float], point: float, log: bool = False) -> dict:
    """A point, its 95% percentile interval and the minimum detectable effect from resampled values."""
    v = np.log(values) if log else np.asarray(values, float)
    if len(v) < 2:
        return {"point": point, "ci": None, "mde": None, "resamples": len(v)}
    lo, hi = np.percentile(v, [2.5, 97.5])
    sd = float(np.std(v, ddof=1))
    if log:
        return {"point": point, "ci": [float(np.exp(lo)), float(np.exp(hi))], "mde": float(np.exp(Z_MDE * sd)),
                "resamples": len(v)}
    return {"point": point, "ci": [float(lo), float(hi)], "mde": Z_MDE * sd, "resamples": len(v)}


def bootstrap_multiplier(compute_base, base: np.ndarray, compute_arm, arm: np.ndarray, target: float,
                         increasing: bool, resamples: int, seed: int = 0) -> dict:
    """The multiplier on mean curves, with a paired interval over (seeds, problems) resamples.

    Args:
        base, arm: [S, K, P] per-problem values (seed s of both arms shares init and data order).
    Returns:
        point (asdict(Multiplier)), ci/mde over the resamples where it is exact, and the share of
        resamples of each kind.
    """
    point = curve_multiplier(compute_base, mean_curve(base), compute_arm, mean_curve(arm), target, increasing)
    rng = np.random.default_rng(seed)
    values, kinds = [], {"exact": 0, "upper": 0, "lower": 0, "undefined": 0}
    for _ in range(resamples):
        ws, wp = resample_weights(rng, base.shape[0], base.shape[2])
        m = curve_multiplier(compute_base, mean_curve(base, ws, wp), compute_arm, mean_curve(arm, ws, wp),
                             target, increasing)
        kinds[m.kind] += 1
        if m.kind == "exact":
            values.append(m.value)
    stats = summarize(values, point.value, log=True) if point.kind == "exact" else {
        "point": point.value, "ci": None, "mde": None, "resamples": len(values)}
    return {**asdict(point), **stats, "kinds": {k: n / max(resamples, 1) for k, n in kinds.items()}}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """mean(a) - mean(b) of paired [S, P] values (same seeds, same problems), with CI and MDE."""
    a3, b3 = a[:, None, :], b[:, None, :]
    point = float(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        ws, wp = resample_weights(rng, a.shape[0], a.shape[1])
        diffs.append(float(mean_curve(a3, ws, wp)[0] - mean_curve(b3, ws, wp)[0]))
    return summarize(diffs, point)


def is_null(stat: dict, null: float) -> bool:
    """The interval contains the null (or there is none)."""
    return not stat.get("ci") or stat["ci"][0] <= null <= stat["ci"][1]


def finite(obj):
    """A JSON-safe copy: inf / nan become None."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
