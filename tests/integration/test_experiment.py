"""`ixt experiment experiment=quick` end to end: real reward service, DeepSpeed learners, vLLM eval.

Asserts only that the pipeline produces well-formed results (keys, finite numbers, plots, a report
naming every arm) and that a rerun skips what is done; never the scientific outcome, which a
smoke-sized run cannot show.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _numbers(obj, path="$"):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _ixt(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ixt_stream.cli", "experiment", "experiment=quick", *overrides],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.mark.slow
def test_quick_experiment_end_to_end(tmp_path):
    out, report = tmp_path / "exp", tmp_path / "report"
    overrides = [f"experiment.out_dir={out}", f"experiment.report_dir={report}"]
    proc = _ixt(*overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((report / "results.json").read_text())
    e = results["experiment"]
    arms, seeds = e["arms"], e["seeds"]
    assert set(arms) == {"baseline", "filtered", "ixt", "label", "ixt_dropout"}
    assert results["missing_runs"] == []
    assert len(results["pools"]) == 1 and next(iter(results["pools"].values()))["samples"] > 0
    for scale in results["scales"].values():
        assert set(scale["arms"]) == set(arms)
        assert scale["params"]["total"] == scale["params"]["embedding"] + scale["params"]["non_embedding"]
        grid = scale["grid_flops"]
        assert grid[0] == 0 and all(b > a for a, b in zip(grid, grid[1:], strict=False))
        assert grid[-1] == pytest.approx(6 * scale["params"]["total"] * scale["budget_tokens"])
        for arm, a in scale["arms"].items():
            assert a["seeds"] == seeds and len(a["curves"]) == len(seeds)
            assert all(len(c) == len(grid) and all(0 <= x <= 1 for x in c) for c in a["curves"])
            assert set(a["final"]) == {"mean", "ci"}
            if arm != "baseline":
                m = scale["multiplier"][arm]
                assert m["status"] in ("reached", "censored", "at_init", "undefined")
                assert set(scale["final_gap"][arm]) == {"mean", "ci"}
        assert set(scale["conditioning_gap"]) == {"ixt", "label", "ixt_dropout"}
    for path, x in _numbers(results):
        assert math.isfinite(x), path

    for png in ("accuracy_vs_flops.png", "multiplier_vs_size.png", "conditioning.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    text = (report / "report.md").read_text()
    for arm in arms:
        assert f"| {arm}" in text or f" {arm} |" in text, arm
    assert "Where IXT does not win" in text

    # every run has its result; checkpoints are gone once evaluated
    for name in results["scales"]:
        for arm in arms:
            for seed in seeds:
                run = json.loads((out / "results" / name / f"{arm}-s{seed}.json").read_text())
                assert run["points"][0]["flops"] == 0 and run["points"][-1]["tokens"] >= run["budget_tokens"]
    assert not list(out.glob("runs/*/*/m*.pt"))

    # a rerun finds everything done and only rewrites the report
    t0 = time.monotonic()
    again = _ixt(*overrides, timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "0 jobs to run" in again.stdout and time.monotonic() - t0 < 60


