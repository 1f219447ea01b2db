"""`ixt eval -m`: a Hydra sweep of a real command, two jobs on the tiny model, one run dir each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_eval_sweep_runs_two_jobs_on_the_tiny_model(tmp_path):
    """`unseen`: a prefixed condition the base model can be evaluated under (no ixt_condition.json)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ixt_stream.cli", "eval", "-m", "profile=smoke", "eval.sampling.max_new_tokens=4,8",
         "task.eval_size=2", "eval.conditions=[unseen]", "generator.dtype=float32", f"run.run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[hydra] Launching 2 jobs locally" in done.stderr
    (sweep,) = tmp_path.glob("sweep-*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, tokens in (("0", 4), ("1", 8)):
        report = json.loads((sweep / job / "eval.json").read_text())
        assert report["conditions"] == ["unseen"] and report["metrics"]["eval/num_prompts"] == 2.0
        assert 0 < report["metrics"]["eval/unseen/response_tokens"] <= tokens
        overrides = yaml.safe_load((sweep / job / ".hydra" / "eval" / "overrides.yaml").read_text())
        assert f"eval.sampling.max_new_tokens={tokens}" in overrides
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.name]  # no outputs/, nothing else
