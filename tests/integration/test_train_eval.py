"""`ixt train` and `ixt eval`: the annotated-JSONL reader, evaluate() on a fake engine, and both
commands end to end on the tiny model (real DeepSpeed, real vLLM, separate processes)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ixt_stream import tasks
from ixt_stream.condition import record
from ixt_stream.condition.format import Conditioner, InferenceFeedback
from ixt_stream.config import TaskConfig, load
from ixt_stream.corpus import BadInput, Skips, annotated_row, read_annotated
from ixt_stream.offline.evaluate import conditioner_for, evaluate, table
from ixt_stream.offline.paired import compare, gap, paired_ci
from ixt_stream.offline.train import fitting
from ixt_stream.types import Critique, Label, Sample


def _rows(n: int) -> list[tuple[Sample, Critique]]:
    """Train-pool prompts, each with a right answer (good) and a wrong one (bad)."""
    out = []
    for p in itertools.islice(tasks.train_prompts(TaskConfig()), n):
        good = Sample(f"{p.prompt_id}-0", p.prompt, f"Adding up: <answer>{p.answer}</answer>",
                      task=p.task, reference_answer=p.answer, prompt_id=p.prompt_id)
        bad = Sample(f"{p.prompt_id}-1", p.prompt, "It is <answer>1000</answer>",
                     task=p.task, reference_answer=p.answer, prompt_id=p.prompt_id)
        out += [(good, Critique(good.sample_id, "Correct and clear.", 1.0, Label.GOOD)),
                (bad, Critique(bad.sample_id, "The final answer is wrong.", 0.0, Label.BAD))]
    return out


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(annotated_row(s, c)) + "\n" for s, c in rows))
    return path


# -- reading the annotated JSONL --------------------------------------------------------------


def test_read_annotated_round_trips_annotate_lines(tmp_path):
    rows = _rows(2)
    path = _write(tmp_path / "a.jsonl", rows)
    with path.open("a") as f:
        f.write("\n")
        f.write(json.dumps({"sample_id": "x", "prompt": "p", "response": "r", "label": 3, "score": 1}) + "\n")
        f.write(json.dumps({"sample_id": "y", "prompt": "p", "response": "r", "extra": 1}) + "\n")
        f.write('{"sample_id": "z", "prom')  # an annotate run killed mid-write
    got = read_annotated(path)
    assert got[:4] == rows
    assert got[4][1].label is Label.GOOD and got[4][1].critique == ""
    assert got[5][0].sample_id == "y" and got[5][1] is None
    assert len(got) == 6


def test_read_annotated_rejects_a_broken_line_mid_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"sample_id": "a", "pro\n' + json.dumps(annotated_row(*_rows(1)[0])) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        read_annotated(path)
    path.write_text(json.dumps({"sample_id": "a", "prompt": "", "response": "r", "label": "great"}) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        read_annotated(path)


# -- rows that cannot be trained (issue 13, item 4) --------------------------------------------

LONG_PROMPT = "Add all of these numbers: " + "1 + " * 500 + "1."


def _with_a_long_row(n: int) -> list[tuple[Sample, Critique]]:
    """`_rows(n)` with, third, a row whose feedback + prompt alone are ~1,040 tokens."""
    rows = _rows(n)
    long = Sample("long-0", LONG_PROMPT, "<answer>501</answer>", task="basic_arithmetic", reference_answer="501")
    return rows[:2] + [(long, Critique("long-0", "Correct.", 1.0, Label.GOOD))] + rows[2:]


def test_rows_that_cannot_fit_are_found_before_the_first_step(tokenizer):
    cond = Conditioner.from_config(tokenizer, load(["model=tiny", "condition.max_seq_len=512"]).condition)
    skips = Skips()
    kept = fitting(_with_a_long_row(3), cond, skips)
    assert len(kept) == 6 and "long-0" not in {s.sample_id for s, _ in kept}
    assert dict(skips.reasons) == {"too_long": 1}
    with pytest.raises(BadInput, match="long-0: too_long .*leaves no room"):
        fitting(_with_a_long_row(3), cond, Skips(fail=True))


def test_read_annotated_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    good = json.dumps(annotated_row(*_rows(1)[0])).encode() + b"\n"
    path.write_bytes(good + b'{"sample_id": "n", "prompt": "p", "response": null, "label": "bad"}\n'
                     + b'[1, 2]\n' + b'{"sample_id": "\xff", "prompt": "p", "response": "r"}\n'
                     + b'{"sample_id": "g", "prompt": "p", "response": "r", "label": "great"}\n' + good)
    skips = Skips()
    assert len(read_annotated(path, skips=skips)) == 2
    assert dict(skips.reasons) == {"bad_field": 2, "not_object": 1, "not_utf8": 1}


# -- evaluate() on a fake engine --------------------------------------------------------------


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


class _FakeEngine:
    """Answers right only when the prompt carries the positive prefix; counts engine calls."""

    def __init__(self, positive_prefix: list[int], answers: dict[tuple, str]):
        self.prefix, self.answers, self.calls = positive_prefix, answers, 0

    def fits(self, ids):
        return len(ids) < 400

    def generate(self, prompts, n, max_new_tokens, temperature, top_p):
        self.calls += 1
        out = []
        for ids in prompts:
            positive = ids[: len(self.prefix)] == self.prefix
            answer = self.answers[tuple(ids[len(self.prefix):])] if positive else "0"
            out.append([_Completion(f"<answer>{answer}</answer>", [1, 2, 3])])
        return out


def test_evaluate_scores_each_condition_and_the_gap(tokenizer):
    prompts = tasks.eval_prompts(TaskConfig(eval_size=6))
    critique_in_system_turn = load(["model=tiny", "condition.mode=critique", "condition.placement=system"])
    cond = Conditioner.from_config(tokenizer, critique_in_system_turn.condition,
                                   inference=InferenceFeedback("Correct and clear.", "The final answer is wrong."))
    prefix = cond.feedback_ids(Label.GOOD, "Correct and clear.", document=False)
    answers = {tuple(cond.prompt_ids(p.prompt)): p.answer for p in prompts}
    engine = _FakeEngine(prefix, answers)
    result = evaluate(engine, cond, prompts, ["positive", "negative", "none"], 8, 0.0)
    m = result["metrics"]
    lucky = sum(p.answer == "0" for p in prompts) / len(prompts)  # "0" is right by chance there
    assert m["eval/positive/accuracy"] == 1.0
    assert m["eval/negative/accuracy"] == m["eval/none/accuracy"] == lucky
    assert m["eval/gap"] == 1.0 - lucky
    assert m["eval/positive/answered"] == 1.0 and m["eval/none/response_tokens"] == 3.0
    assert engine.calls == 3 and len(result["samples"]) == 18
    assert "truncated" in table(m, ["positive", "negative", "none"])
    g = gap(result, resamples=500)
    assert g["diff"] == pytest.approx(1.0 - lucky) and g["lo"] <= g["diff"] <= g["hi"] and g["n"] == 6


def test_paired_ci_and_compare():
    same = paired_ci([1, 0, 1, 0], [1, 0, 1, 0])
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    up = paired_ci([0] * 50 + [1] * 50, [1] * 100)
    assert up["diff"] == 0.5 and 0.35 < up["lo"] < 0.5 < up["hi"] <= 0.65
    report = lambda pos, neg: {"samples": [  # noqa: E731
        *({"prompt_id": str(i), "condition": "positive", "score": s} for i, s in enumerate(pos)),
        *({"prompt_id": str(i), "condition": "negative", "score": s} for i, s in enumerate(neg))]}
    out = compare(report([0, 1, 0, 1], [0, 1, 0, 1]), report([1, 1, 1, 1], [0, 0, 0, 1]))
    assert out["positive"]["diff"] == 0.5 and out["negative"]["diff"] == -0.25
    assert out["gap"]["diff"] == 0.75  # the gap went from 0 to 0.75


def test_baseline_is_generated_once_without_prefix(tokenizer, tmp_path):
    """A model trained with mode none: its record says so, every condition is the bare prompt."""
    cfg = load(["model=tiny", "condition.mode=critique", f"eval.checkpoint={tmp_path}"])
    record.write(tmp_path, load(["condition.mode=none"]).condition, None)
    tokenizer.save_pretrained(tmp_path)
    cond, cond_cfg = conditioner_for(str(tmp_path), cfg)
    assert cfg.condition.mode == "critique" and cond_cfg.mode == "none"
    prompts = tasks.eval_prompts(TaskConfig(eval_size=3))
    engine = _FakeEngine([-1], {})
    result = evaluate(engine, cond, prompts, ["positive", "negative", "none"], 8, 0.0)
    assert engine.calls == 1
    assert len({result["metrics"][f"eval/{c}/accuracy"] for c in ("positive", "negative", "none")}) == 1


# -- end to end -------------------------------------------------------------------------------


# A Learner made earlier in this pytest process set these for itself (its gloo store still holds
# MASTER_PORT); a child must pick its own.
_RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _ixt(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _RANK_ENV} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ixt_stream.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.slow
def test_train_then_eval_end_to_end(tmp_path):
    data = _write(tmp_path / "annotated.jsonl", _rows(12))
    out, run_dir = tmp_path / "model", tmp_path / "run"
    common = ["profile=smoke", f"run.run_dir={run_dir}", "run.tensorboard=false",
              "condition.max_seq_len=256", "learner.tokens_per_batch=512", "learner.max_samples_per_batch=4"]
    train = ["train", *common, f"train.data={data}", f"train.output_dir={out}", "learner.epochs=3",
             "learner.max_steps=6", "learner.save_every=3"]
    r = _ixt(*train)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["train/steps"] == 6 and summary["train/mean_tokens_per_s"] > 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", record.CONDITION_FILE):
        assert (out / name).exists(), name
    trained = json.loads((out / record.CONDITION_FILE).read_text())["inference"]
    assert trained == {"positive": "Correct and clear.", "negative": "The final answer is wrong.", "unseen": ""}
    metrics = [json.loads(line) for line in (run_dir / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]

    # resume: continues at step 6 with the next batch, not from scratch
    r = _ixt(*train[:-2], "learner.max_steps=8", "train.resume=true")
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6, 7, 8]

    report_path = tmp_path / "eval.json"
    r = _ixt("eval", *common, f"eval.checkpoint={out}", f"eval.output={report_path}", "task.eval_size=4",
             "eval.sampling.max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert report["condition_mode"] == "critique" and len(report["samples"]) == 16
    for c in ("positive", "negative", "none", "unseen"):
        assert 0.0 <= report["metrics"][f"eval/{c}/accuracy"] <= 1.0
        assert report["metrics"][f"eval/{c}/response_tokens"] > 0
    assert report["feedback"]["positive"] == [3, "Correct and clear."]
    assert "positive - negative accuracy" in r.stdout and "95% CI" in r.stdout

    # the base model has no record: positive needs one, and says where to get it
    r = _ixt("eval", *common, f"eval.output={report_path}", "task.eval_size=4", "eval.sampling.max_new_tokens=8")
    assert r.returncode == 2 and "eval.condition_from" in r.stderr
    r = _ixt("eval", *common, f"eval.condition_from={out}", f"eval.output={report_path}", "task.eval_size=4",
             "eval.sampling.max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(report_path.read_text())["feedback"]["positive"] == [3, "Correct and clear."]

    # the control's cache: the second greedy eval of unchanged weights reads the first one's completions
    control = [*common, f"eval.condition_from={out}", "task.eval_size=4", "eval.sampling.max_new_tokens=8",
               "eval.cache=true", f"eval.cache_dir={tmp_path / 'cache'}", "eval.conditions=[positive,none]"]
    reports = []
    for i in range(2):
        r = _ixt("eval", *control, f"eval.output={tmp_path / f'control{i}.json'}")
        assert r.returncode == 0, r.stderr[-4000:]
        reports.append(json.loads((tmp_path / f"control{i}.json").read_text()))
        assert ("read back" in r.stderr) == (i == 1), r.stderr[-4000:]
    assert reports[1]["samples"] == reports[0]["samples"] and len(reports[0]["samples"]) == 8

    # a mode that shows no critique has no unseen probe (it would be the positive prefix again)
    r = _ixt("eval", *common, "condition.mode=label", "eval.conditions=[none,unseen]", "task.eval_size=4",
             "eval.sampling.max_new_tokens=8", f"eval.output={report_path}")
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(report_path.read_text())["conditions"] == ["none"] and "unseen probe" in r.stderr
    r = _ixt("eval", *common, "condition.mode=label", "eval.conditions=[unseen]", f"eval.output={report_path}")
    assert r.returncode == 2 and "eval.conditions=[unseen]: condition.mode=label" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_train_skips_a_sample_too_long_and_says_so(tmp_path):
    """Issue 13, item 4: one row whose feedback + prompt is ~1,040 tokens under max_seq_len=512
    used to kill `ixt train` after step 3 with no model; now it is skipped before the first step."""
    data = _write(tmp_path / "annotated.jsonl", _with_a_long_row(6))
    out, run_dir = tmp_path / "model", tmp_path / "run"
    r = _ixt("train", "profile=smoke", f"run.run_dir={run_dir}", "run.tensorboard=false", "condition.max_seq_len=512",
             "learner.tokens_per_batch=512", "learner.max_samples_per_batch=2", f"train.data={data}",
             f"train.output_dir={out}", "learner.max_steps=4")
    assert r.returncode == 1, r.stderr[-4000:]  # 1: a row was skipped (the summary says which reason)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["train/steps"] == 4 and summary["train/skipped/too_long"] == 1 and summary["train/samples"] == 12
    assert (out / "model.safetensors").exists() and "long-0: too_long" in r.stderr
