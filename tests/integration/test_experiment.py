"""`ixt experiment experiment=quick` end to end: the process critic behind the real reward service,
from-scratch runs of every arm, the report; then a rerun that skips everything done.

Asserts the invariants the design rests on (no digits in critiques, the inference prefix is a
training prefix, zero loss on prefix tokens, FLOPs = counted tokens x formula, one data order for
every arm, equal FLOPs), the report's order (Scope first, negative controls before the headline)
and the smoke banner; never the scientific outcome, which a smoke-sized run cannot show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _ixt(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ixt_stream.cli", "experiment", "experiment=quick", "run.progress=false", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_experiment_end_to_end_and_resumed(tmp_path):
    out, report = tmp_path / "exp", tmp_path / "report"
    overrides = [f"experiment.out_dir={out}", f"experiment.report_dir={report}"]
    proc = _ixt(*overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("smoke test, not evidence") == 2

    results = json.loads((report / "results.json").read_text())
    assert results["missing"] == []
    assert set(results["invariants"]) == {"no digits in critiques", "inference prefix is a training prefix",
                                          "zero loss on prefix tokens", "FLOPs = counted tokens x formula",
                                          "identical data order across arms", "equal FLOPs across arms"}
    assert all(v["ok"] for v in results["invariants"].values()), results["invariants"]
    assert results["invariants"]["identical data order across arms"]["detail"] == "20/20 runs"
    e = results["experiment"]
    (s,) = results["sizes"].values()
    assert set(s["arms"]) == set(e["arms"]) and set(s["multipliers"]) == set(e["arms"]) - {"baseline"}
    assert set(s["conditioning"]) == {"ixt", "label", "shuffled", "ixt_dropout"}
    for a in s["arms"].values():
        assert a["seeds"] == e["seeds"] and len(a["greedy"]) == e["checkpoints"] + 1 and a["flops"][0] == 0
        assert all(0 <= x <= 1 for x in a["greedy"] + a["sampled"])
    assert set(results["mixtures"]) == {"systematic", "scarce"}
    for c in results["corpora"].values():  # the expert is always right, the slipper never
        assert [k for k in c["author_to_label"] if k.startswith("expert->")] == ["expert->good"]
        assert [k for k in c["author_to_label"] if k.startswith("slip->")] == ["slip->bad"]
    text = (report / "report.md").read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[0] == "## Scope" and text.index("## Negative controls") < text.index("## Headline")
    assert "Smoke test, not evidence" in text and "reproduces" not in text
    assert "with the paper's mechanism" in text and "### Where IXT does not win" in text
    for name in ("curves_flops", "curves_tokens", "multiplier", "conditioning", "critic_confusion", "error_kinds",
                 "mixtures"):
        assert (report / f"{name}.png").stat().st_size > 0 and f"`{name}.png`" in text

    again = _ixt(*overrides)  # everything is current: nothing is trained again
    assert again.returncode == 0, again.stdout[-3000:]
    assert "start " not in again.stdout
    assert json.loads((report / "results.json").read_text())["sizes"] == results["sizes"]
