"""The run report: built from a synthetic run folder shaped like the main job's (the same writers:
MetricsSink, Ledger, SampleLog, eval reports with samples, summary.json built with `compare`)."""

from __future__ import annotations

import json
import re

import pytest

from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.offline.paired import compare, gap
from ixt_stream.online.main_job import go_no_go, positive_prefix, print_summary
from ixt_stream.report import SAMPLE_LOG, SampleLog, render
from ixt_stream.types import Critique, Label, Sample

N = 20
CRITIQUES = ["The sum is right and the <answer> tags hold it.", "A borrow error in the tens column.",
             "No answer in tags; the working stops early.", "Correct, with every step shown."]


def _eval_report(model: str, correct: dict[str, int]) -> dict:
    """An `ixt eval` report: `correct[c]` of N problems right under condition c."""
    samples = [{"prompt_id": f"eval-{i}", "condition": c, "prompt": f"Calculate {i} + 1.", "answer": str(i + 1),
                "response": f"<answer>{i + 1 if i < k else 0}</answer>", "score": float(i < k), "strict": float(i < k)}
               for c, k in correct.items() for i in range(N)]
    report = {"model": model, "condition_mode": "critique", "conditions": list(correct), "tasks": ["basic_arithmetic"],
              "feedback": {"positive": [3, CRITIQUES[0]], "negative": [1, CRITIQUES[1]]},
              "metrics": {"eval/num_prompts": float(N), **{f"eval/{c}/accuracy": k / N for c, k in correct.items()}},
              "samples": samples}
    report["gap_ci"] = gap(report, 200)
    return report


def _train(run_dir) -> dict:
    """Learner/generator metrics, the ledger and the sample log of a 6-step run with 3 pushes."""
    learner, gen = MetricsSink(run_dir, "learner", tensorboard=False), MetricsSink(run_dir, "generator-0",
                                                                                  tensorboard=False)
    ledger, log = Ledger(run_dir / "ledger.sqlite"), SampleLog(run_dir, per_version=2)
    for step in range(1, 7):
        version = step // 2
        samples = [Sample(f"s{step}-{i}", f"Calculate {step} + {i}.", f"<answer>{step + i}</answer>",
                          reference_answer=str(step + i), weight_version=max(version - 1, 0)) for i in range(4)]
        ledger.generated(samples)
        ledger.critiqued([s.sample_id for s in samples])
        for k, s in enumerate(samples):
            log.add(s, Critique(s.sample_id, CRITIQUES[(step + k) % 4], score=float(k % 2), label=Label.GOOD))
        ledger.trained([s.sample_id for s in samples[:3]], step)
        ledger.dropped([(samples[3].sample_id, "stale")])
        gen.log({"generator/samples": 4 * step, "weights/version": max(version - 1, 0)}, step)
        learner.log({"train/loss": 2.0 / step, "critique/score_mean": 0.5, "learner/samples_per_s": 1.0,
                     "weights/version": version, "weights/push_s": 0.1 * version}, step)
    learner.close()
    gen.close()
    summary = ledger.summary()
    ledger.close()
    return summary


@pytest.fixture
def run_dir(tmp_path):
    before = _eval_report("base", {"positive": 5, "negative": 5, "none": 4})
    after = _eval_report("runs/x/final", {"positive": 12, "negative": 6, "none": 9, "unseen": 11})
    (tmp_path / "eval_before.json").write_text(json.dumps(before))
    (tmp_path / "eval_after.json").write_text(json.dumps(after))
    ledger = _train(tmp_path)
    summary = {"run_dir": str(tmp_path), "eval_problems": N, "positive_prefix": CRITIQUES[0],
               "accuracy_before": {c: before["metrics"][f"eval/{c}/accuracy"] for c in before["conditions"]},
               "accuracy_after": {c: after["metrics"][f"eval/{c}/accuracy"] for c in after["conditions"]},
               "change": compare(before, after, 200), "gap_before": before["gap_ci"], "gap_after": after["gap_ci"],
               "samples_trained": ledger["trained"], "versions_pushed": 3, "steps": 6, "learner_busy_fraction": 0.9,
               "staleness": {"0": 10, "1": 8}, "ledger": ledger, "wall_s": 600.0, "skipped": {"stale": 6}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def _row(text: str, first_cell: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.timeout(60)
def test_report_holds_the_runs_numbers_pictures_and_critiques(run_dir):
    text = render(run_dir).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    for c, after in summary["accuracy_after"].items():
        cells = _row(text.split("## Before and after")[1].split("##")[0], c)
        ch = summary["change"].get(c)
        assert cells[2] == f"{after:.3f}"
        assert cells[1] == (f"{summary['accuracy_before'][c]:.3f}" if c in summary["accuracy_before"] else "—")
        assert cells[3] == (f"{ch['diff']:+.3f} [{ch['lo']:+.3f}, {ch['hi']:+.3f}]" if ch else "—")
    checkpoints = text.split("## Accuracy at each evaluated checkpoint")[1].split("##")[0]
    assert _row(checkpoints, "condition")[1:] == ["base (control)", "final"]
    assert _row(checkpoints, "positive")[2].startswith("0.600 [")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(images) == {"accuracy.png", "learning_curve.png", "weights.png"}
    assert all((run_dir / name).stat().st_size > 1000 for name in images)
    weights = text.split("## Weight versions")[1].split("##")[0]
    assert [_row(weights, str(v))[1] for v in (1, 2, 3)] == ["2", "4", "6"]  # the step each version appeared
    assert _row(weights, "1")[3] == "0.10" and _row(weights, "3")[4] == "never"  # push s; v3 never applied
    led = summary["ledger"]
    assert (f"generated {led['generated']} = trained {led['trained']} + dropped {led['dropped']} + in flight "
            f"{led['in_flight']}") in text and "conserved" in text
    trained = text.split("## Samples trained on")[1].split("## Held-out")[0]
    assert "Calculate 1 + 0." in trained and "trained at step 1" in trained
    assert re.findall(r"\*\*v(\d+) ·", trained) == ["0", "1", "2"]  # one sample of each version
    assert sum(c.replace("<", "&lt;").replace(">", "&gt;") in trained for c in CRITIQUES) >= 2
    assert "<answer>" not in text and "response: &lt;answer&gt;" in trained  # tags escaped: they stay visible
    held_out = text.split("## Held-out responses")[1]
    assert "From the final checkpoint" in held_out and "score 1 · Calculate 0 + 1." in held_out
    assert "**unseen**" in held_out and "Not available" not in text


@pytest.mark.timeout(30)
def test_sample_log_keeps_the_first_few_per_weight_version(tmp_path):
    log = SampleLog(tmp_path, per_version=2)
    for v in range(3):
        for i in range(5):
            log.add(Sample(f"{v}-{i}", "p", "r", weight_version=v), Critique(f"{v}-{i}", "c", 0.0, Label.BAD))
    rows = [json.loads(line) for line in (tmp_path / SAMPLE_LOG).read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == ["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"]
    assert rows[0]["label"] == "bad" and rows[0]["critique"] == "c"


@pytest.mark.timeout(60)
def test_a_folder_with_missing_pieces_renders_with_notes(tmp_path):
    """`ixt eval` alone: one eval report, no summary, no training, no ledger, no sample log."""
    (tmp_path / "eval.json").write_text(json.dumps(_eval_report("m", {"positive": 3, "none": 2})))
    text = render(tmp_path).read_text()
    assert "no summary.json" in text and "no metrics/learner.jsonl" in text and f"no {SAMPLE_LOG}" in text
    assert "no ledger.sqlite" in text
    assert _row(text, "condition")[1:] == ["eval"] and _row(text, "positive")[1].startswith("0.150 [")
    assert (tmp_path / "accuracy.png").exists() and not (tmp_path / "weights.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no `ixt eval` report" in render(empty).read_text()


@pytest.mark.timeout(60)
def test_a_main_job_folder_without_the_control_says_so(run_dir):
    (run_dir / "eval_before.json").unlink()
    text = render(run_dir).read_text()
    assert "Not available: eval_before.json" in text
    assert _row(text.split("## Accuracy at each")[1], "condition")[1:] == ["final"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("gap, verdict", [(0.15, "go"), (0.10, "no-go"), (-0.2, "no-go")])
def test_summary_prints_the_post_training_pilot_verdict(run_dir, capsys, gap, verdict):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(plot="learning_curve.png", pilot=go_no_go({"diff": gap, "lo": gap - 0.05, "hi": gap + 0.05}))
    print_summary(summary)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "post-training pilot" in ln)
    assert line.endswith(f": {verdict}") and f"{gap:+.3f}" in line


@pytest.mark.timeout(60)
def test_summary_marks_a_condition_the_base_model_was_not_run_under(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(plot="learning_curve.png", accuracy_after={**summary["accuracy_after"], "unseen": 0.25})
    assert "unseen" not in summary["accuracy_before"]
    print_summary(summary)
    out = capsys.readouterr().out
    assert "nan" not in out
    assert next(ln for ln in out.splitlines() if ln.strip().startswith("unseen")).split() == [
        "unseen", "-", "0.250", "(trained", "model", "only)"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, prefix", [
    ("critique", f"Feedback on the answer below. Quality: good. Critique: {CRITIQUES[0]}"),
    ("label", "Feedback on the answer below. Quality: good."),  # the record's critique is not read
    ("none", "")])
def test_the_summary_names_the_positive_prefix_the_model_reads(mode, prefix):
    report = {**_eval_report("m", {"positive": 3}), "condition_mode": mode}
    assert positive_prefix(report) == prefix
