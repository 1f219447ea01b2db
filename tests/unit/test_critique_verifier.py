"""The verifier critic: labels and scores from reasoning-gym, critiques that never leak the answer."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from ixt_stream.config import load
from ixt_stream.critique.backend import InvalidRequest
from ixt_stream.critique.verifier import VerifierBackend
from ixt_stream.offline.annotate import synthetic_task_samples
from ixt_stream.types import Label, Sample

ENTRY = json.dumps({"expression": "17 + 25", "num_terms": 2, "num_digits": 2})
REASONING = "I add 17 and 25: 17 + 20 = 37, then 37 + 5 gives the total."


@pytest.fixture(scope="module")
def verifier() -> VerifierBackend:
    return VerifierBackend(warm_tasks=["basic_arithmetic"])


def judge(verifier, response: str, **kw):
    fields = dict(sample_id="s", prompt="Calculate 17 + 25.", response=response, task="basic_arithmetic",
                  reference_answer="42", metadata={"entry": ENTRY})
    return asyncio.run(verifier.critique(Sample(**{**fields, **kw})))


def test_correct_answer_is_good(verifier):
    c = judge(verifier, f"{REASONING}\n<answer>42</answer>")
    assert (c.label, c.score) == (Label.GOOD, 1.0)
    assert "correct" in c.critique and "No reasoning" not in c.critique
    assert "reasoning-gym score" in c.thinking


def test_wrong_value_is_bad_and_does_not_state_the_reference(verifier):
    c = judge(verifier, f"{REASONING}\n<answer>41</answer>")
    assert (c.label, c.score) == (Label.BAD, 0.0)
    assert "'41' is wrong" in c.critique
    assert "42" not in c.critique  # the critique is trained on as a prefix: no answer leaks
    assert "42" in c.thinking  # the trace (never trained on) keeps the reference for debugging


def test_missing_answer_is_bad(verifier):
    c = judge(verifier, "I am not sure how to add these numbers at all.")
    assert (c.label, c.score) == (Label.BAD, 0.0)
    assert "no final answer" in c.critique


def test_right_value_without_tags_is_mixed(verifier):
    for response in (f"{REASONING} The sum is 42.", f"{REASONING}\n<answer>42", f"{REASONING}\n<answr>42</answr>"):
        c = judge(verifier, response)
        assert (c.label, c.score) == (Label.MIXED, 0.5), response
        assert "tags" in c.critique


def test_empty_tags_and_no_reasoning(verifier):
    c = judge(verifier, "<answer></answer>")
    assert c.label == Label.BAD and "empty" in c.critique and "No reasoning is shown" in c.critique


def test_partial_credit_is_mixed_with_reasoning_gym_score(verifier):
    c = judge(verifier, f"{REASONING}\n<answer>the answer is 42</answer>")
    assert c.label == Label.MIXED and 0.0 < c.score < 1.0
    assert "only the final answer" in c.critique


@pytest.mark.parametrize("kw, why", [
    (dict(task=""), "no task"),
    (dict(task="not_a_dataset"), "registry"),
    (dict(metadata={"entry": "{not json"}), "not valid JSON"),
])
def test_unjudgeable_requests_are_invalid(verifier, kw, why):
    with pytest.raises(InvalidRequest, match=why):
        judge(verifier, "<answer>42</answer>", **kw)


def test_synthetic_error_types_get_the_expected_labels(verifier):
    cfg = load(["task=mixed", "generator.samples_per_prompt=4"])
    v = VerifierBackend(warm_tasks=cfg.task.names)
    expected = {"correct": Label.GOOD, "wrong_value": Label.BAD, "off_by_one": Label.BAD,
                "missing_tags": Label.MIXED, "garbled": Label.MIXED}
    seen = Counter()
    for s in synthetic_task_samples(cfg, 200):
        kind = s.metadata["synthetic"]
        assert asyncio.run(v.critique(s)).label == expected[kind], (kind, s.task, s.response)
        seen[kind] += 1
    assert set(seen) == set(expected)  # every error type was drawn
