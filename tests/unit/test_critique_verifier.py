"""The verifier critic: labels and scores from exact answer checks, critiques that name the kind of
mistake or virtue and never leak the answer."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter

import pytest

from ixt_stream.config import load
from ixt_stream.critique.backend import InvalidRequest
from ixt_stream.critique.verifier import KINDS, VerifierBackend, wrong_kind
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
    return verifier.verdict(Sample(**{**fields, **kw}))


def test_no_critique_text_has_a_digit():
    for label, texts in KINDS.values():
        assert len(texts) >= 3 and label in (Label.GOOD, Label.MIXED, Label.BAD)
        for t in texts:
            assert not re.search(r"\d", t), t


@pytest.mark.parametrize("response, kind, label, score", [
    (f"{REASONING}\n<answer>42</answer>", "correct", Label.GOOD, 1.0),
    ("<answer>42</answer>", "correct_unexplained", Label.GOOD, 1.0),
    (f"{REASONING}\n<answer>-42</answer>", "wrong_sign", Label.BAD, 0.0),
    (f"{REASONING}\n<answer>41</answer>", "wrong_slip", Label.BAD, 0.0),
    (f"{REASONING}\n<answer>52</answer>", "wrong_place_value", Label.BAD, 0.0),
    (f"{REASONING}\n<answer>17</answer>", "wrong", Label.BAD, 0.0),
    (f"{REASONING} The sum is 42.", "correct_untagged", Label.GOOD, 0.75),
    (f"{REASONING}\n<answer>42", "correct_untagged", Label.GOOD, 0.75),
    ("I am not sure how to add these numbers at all.", "no_answer", Label.BAD, 0.0),
    (f"{REASONING} The sum is 47.", "wrong_untagged", Label.BAD, 0.0),  # says the value is wrong, not only the tags
    ("<answer></answer>", "empty_tags", Label.BAD, 0.0),
])
def test_kinds(verifier, response, kind, label, score):
    v = judge(verifier, response)
    assert (v.kind, v.label, v.score) == (kind, label, score)
    assert v.critique.split(" No working")[0].split(" The response is also")[0] in KINDS[kind][1]
    assert "42" not in v.critique and "reference '42'" in v.thinking  # the trace keeps it for debugging


def test_truncated_responses_are_told_apart(verifier):
    right = judge(verifier, f"{REASONING}\n<answer>42</answer> and then I keep talking", finish_reason="length")
    assert (right.kind, right.label) == ("correct_cut_off", Label.MIXED)
    unfinished = judge(verifier, f"{REASONING} so the total is", finish_reason="length")
    assert (unfinished.kind, unfinished.label) == ("cut_off", Label.BAD)
    wrong = judge(verifier, f"{REASONING}\n<answer>41</answer> more", finish_reason="length")
    assert wrong.kind == "wrong_slip" and wrong.critique.endswith("cut off before it ends.")


def test_paraphrase_is_stable_per_sample_and_varies_across_samples(verifier):
    texts = {judge(verifier, f"{REASONING}\n<answer>42</answer>", sample_id=f"s{i}").critique for i in range(30)}
    assert texts == set(KINDS["correct"][1])
    again = {judge(verifier, f"{REASONING}\n<answer>42</answer>", sample_id="s7").critique for _ in range(3)}
    assert len(again) == 1


def test_no_reasoning_is_noted_on_bad_answers(verifier):
    assert judge(verifier, "<answer>17</answer>").critique.endswith("No working is shown.")


def test_wrong_kind_never_needs_the_value():
    assert wrong_kind("-7", "7") == "wrong_sign"
    assert wrong_kind("300", "200") == "wrong_place_value"
    assert wrong_kind("310", "200") == "wrong"
    assert wrong_kind("seven", "7") == "wrong"


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
                "missing_tags": Label.GOOD, "garbled": Label.GOOD}
    seen = Counter()
    for s in synthetic_task_samples(cfg, 200):
        kind = s.metadata["synthetic"]
        assert asyncio.run(v.critique(s)).label == expected[kind], (kind, s.task, s.response)
        seen[kind] += 1
    assert set(seen) == set(expected)  # every error type was drawn
