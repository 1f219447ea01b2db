"""`ixt experiment`'s job runner: order, dependencies, failures, and its lines above the progress bar."""

from __future__ import annotations

import sys

from ixt_stream.experiment.main import Job, run_jobs


def test_jobs_run_after_their_deps_and_a_failure_skips_its_dependents(tmp_path, capsys):
    def job(name: str, code: int, deps=(), after_failures=False) -> Job:
        cmd = [sys.executable, "-c", f"print('[train {name}]'); raise SystemExit({code})"]
        return Job(name, cmd, tmp_path / f"{name}.log", deps=list(deps), after_failures=after_failures)

    jobs = [job("a", 0), job("b", 3), job("c", 0, ["a"]), job("d", 0, ["b"]), job("e", 0, ["b"], after_failures=True)]
    assert run_jobs(jobs, workers=2) == ["b", "d"]
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("done  a (") and line.endswith("[train a]") for line in out)
    assert any(line.startswith("FAIL  b (exit 3,") for line in out)
    assert "skip d: a dependency failed" in out and any(line.startswith("done  e") for line in out)
    assert out.index("start a") < out.index("start c")


def test_a_policy_plus_synthetic_pool_joins_both_parts(tmp_path, monkeypatch):
    """Both parts number a prompt's samples 0..k-1: the synthetic ones get a `syn-` prefix."""
    import json

    from ixt_stream import corpus
    from ixt_stream.config import ExperimentScaleConfig, load
    from ixt_stream.experiment import data
    from ixt_stream.types import Critique, Label, Sample

    def fake_annotate(cfg, scale, responses, output, address):
        rows = [(Sample("p0-0", "q", f"{responses} answer"), Critique("p0-0", "fine", 1.0, Label.GOOD))]
        output.write_text("".join(json.dumps(corpus.annotated_row(s, c)) + "\n" for s, c in rows))
        return {"written": 1}

    monkeypatch.setattr(data, "_annotate", fake_annotate)
    out = tmp_path / "pool.jsonl"
    summary = data.build_pool(load([]), ExperimentScaleConfig(responses="policy+synthetic"), out, "127.0.0.1:1")
    assert summary == {"policy": {"written": 1}, "synthetic": {"written": 1}}
    pool = data.read_pool(out)
    assert [(s.sample_id, s.response) for s, _ in pool] == [("p0-0", "policy answer"), ("syn-p0-0", "synthetic answer")]
    assert all(c.label == Label.GOOD for _, c in pool) and (tmp_path / "pool.jsonl.done").exists()
