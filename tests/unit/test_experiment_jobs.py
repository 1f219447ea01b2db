"""`ixt experiment`'s job runner: order, dependencies, failures, and its lines above the progress bar."""

from __future__ import annotations

import sys

from ixt_stream.experiment.main import Job, run_jobs


def test_jobs_run_after_their_deps_and_a_failure_skips_its_dependents(tmp_path, capsys):
    def job(name: str, code: int, deps=()) -> Job:
        cmd = [sys.executable, "-c", f"print('[train {name}]'); raise SystemExit({code})"]
        return Job(name, cmd, tmp_path / f"{name}.log", deps=list(deps))

    jobs = [job("a", 0), job("b", 3), job("c", 0, ["a"]), job("d", 0, ["b"])]
    assert run_jobs(jobs, workers=2) == ["b", "d"]
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("done  a (") and line.endswith("[train a]") for line in out)
    assert any(line.startswith("FAIL  b (exit 3,") for line in out)
    assert "skip d: a dependency failed" in out and any(line.startswith("done  c") for line in out)
    assert out.index("start a") < out.index("start c")
