"""The process-verifier critic: it names the first error kind of every author, and no critique holds a digit."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from ixt_stream import worked
from ixt_stream.critique import registry
from ixt_stream.critique.backend import InvalidRequest
from ixt_stream.critique.process import PARAPHRASES, UNSEEN_CORRECT, ProcessVerifierBackend, judge
from ixt_stream.experiment import world
from ixt_stream.types import Label, Sample

CARRY = worked.Problem(47, "+", 38)  # a carry into the tens
BORROW = worked.Problem(52, "-", 17)  # a borrow from the tens


def test_no_paraphrase_holds_a_digit():
    for text in [UNSEEN_CORRECT, *(p for ps in PARAPHRASES.values() for p in ps)]:
        assert not re.search(r"\d", text), text
    assert set(PARAPHRASES) == set(worked.KINDS)
    assert all(len(set(ps)) == len(ps) >= 3 for ps in PARAPHRASES.values())


def test_no_critique_of_any_document_holds_a_digit():
    """Every author, every mixture, and text that is not in the format at all."""
    split = world.split(2, 100, 0)
    docs = [d.response for m in world.MIXTURES for d in world.corpus(split, m, 60, 4, 0)]
    docs += ["Q 9 9 + 9 9 = 12345 answer 198 .", "Q 1 2 - 3 4 = answer 7 7 7", "Q 5 + 5 = answer 1 0 ."]
    for i, text in enumerate(docs):
        critique = judge(text, f"s{i}")[2]
        assert not re.search(r"\d", critique), (text, critique)


@pytest.mark.parametrize("problem", [CARRY, BORROW])
@pytest.mark.parametrize(("author", "kind", "right"), [("expert", "correct", True), ("carry_drop", "carry", False),
                                                        ("slip", "answer", False), ("terse", "no_working", True)])
def test_each_author_gets_its_error_kind(problem, author, kind, right):
    assert worked.check(problem, worked.solution(problem, author, random.Random(0))) == worked.Check(kind, right)


def test_the_checker_finds_operand_column_and_format_errors():
    good = worked.solution(CARRY)  # 7 + 8 + 0 = 5 carry 1 ; 4 + 3 + 1 = 8 carry 0 ; answer 8 5 .
    assert worked.check(CARRY, good.replace("7 + 8", "7 + 9", 1)).kind == "operand"
    assert worked.check(CARRY, good.replace("= 8 carry 0", "= 9 carry 0")).kind == "column"
    assert worked.check(CARRY, good.replace("answer 8 5 .", "answer 8 5")).kind == "malformed"
    assert worked.check(CARRY, good.split(" ;")[0] + " ; answer 8 5 .").kind == "malformed"  # a column missing
    assert worked.check(CARRY, "") == worked.Check("malformed", False)
    # the first error is named: a dropped carry before a wrong answer copy
    dropped = worked.solution(CARRY, "carry_drop").replace("answer 7 5", "answer 7 4")
    assert worked.check(CARRY, dropped).kind == "carry"


def test_a_carry_dropper_without_carries_writes_a_correct_solution():
    easy = worked.Problem(21, "+", 34)
    assert worked.check(easy, worked.solution(easy, "carry_drop")) == worked.Check("correct", True)


def test_score_is_the_fraction_right_and_the_label_follows_the_first_error():
    right, wrong = worked.Problem(21, "+", 34), CARRY
    doc = worked.document([right, wrong], "carry_drop", random.Random(0))
    score, label, critique, thinking = judge(doc, "x")
    assert (score, label) == (0.5, Label.MIXED) and critique in PARAPHRASES["carry"]
    assert "21+34: correct" in thinking and "47+38: carry (wrong)" in thinking
    assert judge(worked.document([right, wrong], "expert", random.Random(0)), "x")[:2] == (1.0, Label.GOOD)
    assert judge(worked.document([wrong], "slip", random.Random(0)), "x")[:2] == (0.0, Label.BAD)
    assert judge(worked.document([wrong], "terse", random.Random(0)), "x")[:2] == (1.0, Label.MIXED)


def test_the_paraphrase_is_stable_per_sample_and_varies_across_samples():
    doc = worked.document([CARRY], "expert", random.Random(0))
    assert judge(doc, "a")[2] == judge(doc, "a")[2]
    assert len({judge(doc, f"id{i}")[2] for i in range(30)}) == 3


def test_the_backend_is_registered_and_rejects_text_without_problems():
    from ixt_stream.config import load

    backend = registry.build(load(["reward.backend=process"]))
    assert isinstance(backend, ProcessVerifierBackend) and backend.card().backend == "process"
    sample = Sample(sample_id="d1", prompt="", response=worked.document([CARRY], "expert", random.Random(0)))
    critique = asyncio.run(backend.critique(sample))
    assert critique.label == Label.GOOD and critique.score == 1.0 and critique.sample_id == "d1"
    with pytest.raises(InvalidRequest):
        asyncio.run(backend.critique(Sample(sample_id="d2", prompt="", response="no problem here")))
