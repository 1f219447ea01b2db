"""Curves, the compute-efficiency multiplier and bootstrap intervals: pure numpy, no torch.

FLOPs are counted as 6 x parameters x training tokens (forward + backward, Kaplan et al.), with
*all* parameters (the 49k-token embedding dominates a tiny model and its matmul with the output
head is real work) and *all* tokens of a sequence (feedback prefix and prompt too: they are
forwarded and back-propagated through even though they carry no loss).

The multiplier of an arm over the baseline, on seed-mean curves:

    target   = the baseline's best mean accuracy
    F_base   = the FLOPs at which the baseline first reaches it
    F_arm    = the FLOPs at which the arm first reaches it (linear interpolation between checkpoints)
    multiplier = F_base / F_arm

An arm that never reaches the target is *censored*: it needs more than its last checkpoint's FLOPs,
so F_base / F_last is an upper bound and is reported as such. A baseline that never beats its own
initial accuracy gives no target (status "undefined"). Confidence intervals resample seeds with
replacement, independently per arm (percentile bootstrap); with three seeds they are coarse.

Left out: interpolation in log-FLOPs (checkpoints are log-spaced, but a straight line between two
neighbours is the simpler, documented assumption) and extrapolating a curve past its last point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def training_flops(params: int, tokens: float) -> float:
    """6 x parameters x tokens: one forward (2 N per token) and one backward (4 N per token)."""
    return 6.0 * float(params) * float(tokens)


def param_counts(vocab_size: int, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int,
                 tied: bool = True) -> dict[str, int]:
    """Parameters of a Llama (no biases, RMSNorm weights): {"total", "embedding", "non_embedding"}.

    `embedding` is the input embedding plus, if untied, the output head. Used to size configs
    before a model exists; the experiment itself counts the built model's tensors.
    """
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden  # + gate/up/down + 2 norms
    embedding = vocab_size * hidden * (1 if tied else 2)
    non_embedding = layers * per_layer + hidden  # + final norm
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def on_grid(flops: list[float], accuracy: list[float], grid: np.ndarray) -> np.ndarray:
    """One run's curve read at `grid` FLOPs (linear between its checkpoints, flat past its ends)."""
    order = np.argsort(flops)
    return np.interp(grid, np.asarray(flops, float)[order], np.asarray(accuracy, float)[order])


def first_reach(grid: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    """The FLOPs where `curve` first reaches `target`, linearly interpolated; None if it never does."""
    hits = np.nonzero(curve >= target)[0]
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(grid[0])
    x0, x1, y0, y1 = grid[i - 1], grid[i], curve[i - 1], curve[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


@dataclass
class Multiplier:
    """F_base / F_arm at the baseline's best accuracy. `value` is None when undefined; when
    `status` is "censored" it is an upper bound (the arm never reached the target)."""

    value: float | None
    status: str  # "reached" | "censored" (upper bound) | "at_init" (value inf) | "undefined"
    target_accuracy: float
    baseline_flops: float | None
    arm_flops: float | None


def multiplier(grid: np.ndarray, baseline: np.ndarray, arm: np.ndarray) -> Multiplier:
    """Compute-efficiency multiplier of `arm` over `baseline`, both mean accuracy on `grid`.

    `grid[0]` is the initial model (0 FLOPs); a target no higher than the baseline's initial
    accuracy measures nothing, so the result is "undefined". An arm already at the target at
    0 FLOPs gets value inf, status "at_init" (JSON writers turn inf into null).
    """
    grid, baseline, arm = (np.asarray(a, float) for a in (grid, baseline, arm))
    target = float(baseline.max())
    if target <= baseline[0] or target <= 0:
        return Multiplier(None, "undefined", target, None, None)
    f_base = first_reach(grid, baseline, target)
    f_arm = first_reach(grid, arm, target)
    if f_arm is None:
        return Multiplier(f_base / float(grid[-1]), "censored", target, f_base, None)
    if f_arm <= 0:  # the arm is at the target before training (e.g. a prefix helps a pretrained model)
        return Multiplier(float("inf"), "at_init", target, f_base, 0.0)
    return Multiplier(f_base / f_arm, "reached", target, f_base, f_arm)


def bootstrap_multiplier(grid: np.ndarray, baseline_runs: np.ndarray, arm_runs: np.ndarray,
                         resamples: int, seed: int = 0) -> dict:
    """The multiplier on seed means, with a 95% percentile interval over seed resamples.

    Args:
        baseline_runs, arm_runs: [seeds, len(grid)] accuracy of each run on the grid.
    Returns:
        asdict(Multiplier) + ci (low, high) over the resamples where it is defined (censored
        resamples count at their upper bound, at_init ones as inf) + censored_fraction +
        defined_fraction.
    """
    point = multiplier(grid, baseline_runs.mean(0), arm_runs.mean(0))
    rng = np.random.default_rng(seed)
    values, censored = [], 0
    for _ in range(resamples):
        b = baseline_runs[rng.integers(0, len(baseline_runs), len(baseline_runs))].mean(0)
        a = arm_runs[rng.integers(0, len(arm_runs), len(arm_runs))].mean(0)
        m = multiplier(grid, b, a)
        if m.value is not None:
            values.append(m.value)
            censored += m.status == "censored"
    # "nearest": resamples at inf (at_init) make an unbounded end inf, where interpolating gives nan.
    ci = [float(np.percentile(values, q, method="nearest")) for q in (2.5, 97.5)] if values else None
    return {**asdict(point), "ci": ci, "censored_fraction": censored / max(len(values), 1),
            "defined_fraction": len(values) / max(resamples, 1)}


def bootstrap_mean(values: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """Mean over seeds with a 95% percentile interval (values: [seeds])."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)]
    return {"mean": float(values.mean()), "ci": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0) -> dict:
    """mean(a) - mean(b) over seeds (independent resamples of each) with a 95% interval."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    diffs = [a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
             for _ in range(resamples)]
    return {"mean": float(a.mean() - b.mean()),
            "ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}


# -- one scale's runs -> its summary --------------------------------------------------------------


def summarize_scale(results: list[dict], arms: list[str], grid: np.ndarray, resamples: int) -> dict:
    """Curves, final accuracies, multipliers, gaps and conditioning gaps of one scale.

    Args:
        results: per-run payloads (`eval_runs` result files) of this scale.
        grid: [M] the nominal checkpoint FLOPs, grid[0] = 0 (the initial model).
    """
    by_arm = {a: sorted((r for r in results if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    by_arm = {a: rs for a, rs in by_arm.items() if rs}
    out: dict = {"grid_flops": grid.tolist(), "arms": {}, "multiplier": {}, "final_gap": {}, "conditioning_gap": {}}
    curves, finals = {}, {}
    for arm, runs in by_arm.items():
        curves[arm] = np.stack([on_grid([p["flops"] for p in r["points"]], [p["accuracy"] for p in r["points"]], grid)
                                for r in runs])
        finals[arm] = np.array([r["points"][-1]["accuracy"] for r in runs])
        last = [r["points"][-1]["conditions"] for r in runs]
        conditions = {c: bootstrap_mean([x[c]["accuracy"] for x in last], resamples)
                      for c in last[0] if all(c in x for x in last)}
        out["arms"][arm] = {
            "seeds": [r["seed"] for r in runs], "mode": runs[0]["mode"],
            "curves": curves[arm].tolist(), "mean": curves[arm].mean(0).tolist(),
            "low": curves[arm].min(0).tolist(), "high": curves[arm].max(0).tolist(),
            "final": bootstrap_mean(finals[arm], resamples), "final_conditions": conditions,
            "final_strict": bootstrap_mean([r["points"][-1].get("strict_accuracy", np.nan) for r in runs], resamples),
            "answered": float(np.mean([r["points"][-1]["answered"] for r in runs])),
            "samples_seen": float(np.mean([r["samples_seen"] for r in runs])),
            "epochs": float(np.mean([r["epochs"] for r in runs])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        }
        if runs[0]["mode"] != "none" and all({"positive", "negative", "none"} <= set(x) for x in last):
            pos = np.array([x["positive"]["accuracy"] for x in last])
            out["conditioning_gap"][arm] = {
                "positive_minus_negative": bootstrap_mean(pos - [x["negative"]["accuracy"] for x in last], resamples),
                "positive_minus_none": bootstrap_mean(pos - [x["none"]["accuracy"] for x in last], resamples)}
    if "baseline" in curves:
        for arm in curves:
            if arm != "baseline":
                out["multiplier"][arm] = bootstrap_multiplier(grid, curves["baseline"], curves[arm], resamples)
                out["final_gap"][arm] = bootstrap_difference(finals[arm], finals["baseline"], resamples)
    return out


def finite(obj):
    """A JSON-safe copy: inf / nan become None (json.dumps(allow_nan=False) then holds)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
