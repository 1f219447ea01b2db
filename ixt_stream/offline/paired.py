"""Paired bootstrap statistics over held-out problems, from `ixt eval` reports.

Every comparison pairs the same problems (two models, or two conditions of one model) and
resamples problems, so problem difficulty cancels: the interval is the one a before/after or
positive/negative claim needs. Pure functions of the JSON reports; `ixt eval`, the main job and
the run report share them. Left out: resampling over seeds (the experiment's analysis does that).
"""

from __future__ import annotations


def paired_ci(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """mean(b - a) over paired items with a 95% percentile bootstrap interval (resampling items)."""
    import numpy as np

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": int(diff.size)}


def scores_by_condition(report: dict) -> dict[str, dict[str, float]]:
    """condition -> prompt_id -> exact score, from an `evaluate` report."""
    out: dict[str, dict[str, float]] = {}
    for s in report["samples"]:
        out.setdefault(s["condition"], {})[s["prompt_id"]] = s["score"]
    return out


def gap(report: dict, resamples: int = 2000) -> dict[str, float] | None:
    """positive - negative accuracy on the same problems, with its paired CI."""
    by = scores_by_condition(report)
    if "positive" not in by or "negative" not in by:
        return None
    ids = sorted(by["positive"])
    return paired_ci([by["negative"][i] for i in ids], [by["positive"][i] for i in ids], resamples)


def compare(before: dict, after: dict, resamples: int = 2000) -> dict[str, dict[str, float]]:
    """Per condition both reports share: after - before accuracy on the same problems, paired CI;
    plus "gap": the change of the positive - negative gap (a difference of paired differences)."""
    b, a = scores_by_condition(before), scores_by_condition(after)
    out = {}
    for c in b.keys() & a.keys():
        ids = sorted(b[c].keys() & a[c].keys())
        out[c] = paired_ci([b[c][i] for i in ids], [a[c][i] for i in ids], resamples)
    if {"positive", "negative"} <= b.keys() & a.keys():
        ids = sorted(b["positive"].keys() & a["positive"].keys())
        out["gap"] = paired_ci([b["positive"][i] - b["negative"][i] for i in ids],
                               [a["positive"][i] - a["negative"][i] for i in ids], resamples)
    return out
