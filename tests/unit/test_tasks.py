"""Answers compared as a careful grader would, and a held-out set that can tell models apart."""

from __future__ import annotations

import itertools

import pytest

from ixt_stream import tasks
from ixt_stream.config import TaskConfig, load

ENTRY = {"question": "", "answer": "-7", "metadata": {}}


@pytest.mark.parametrize("answer, reference, right", [
    ("\u22127", "-7", True), ("-7", "-7", True), ("- 7", "-7", True), ("\u20137", "-7", True),
    ("7.", "7", True), ("+7", "7", True), ("7.0", "7", True), ("7.00", "7", True),
    ("\\boxed{7}", "7", True), ("$7$", "7", True), ("$\\boxed{7}$", "7", True), ("\\(7\\)", "7", True),
    ("1,234", "1234", True), (" 7 ", "7", True), ("**7**", "7", True),
    ("17", "7", False), ("77", "7", False), ("-7", "7", False), ("7", "-7", False),
    ("70", "7", False), ("1,23", "123", False), ("7 apples", "7", False), ("", "7", False),
])
def test_numeric_answers_compare_as_numbers(answer, reference, right):
    score = tasks.score_answer("basic_arithmetic", answer, reference, {**ENTRY, "answer": reference})
    assert score == (1.0 if right else 0.0), (answer, reference)


@pytest.mark.parametrize("response, reference, expected", [
    ("8 - 3 = -5", "5", 0.0),  # contains the reference's digit: still wrong
    ("<answer>17</answer>", "7", 0.0),
    ("<answer>\u22127</answer>", "-7", 1.0),
    ("So 3 + 4 = 7.", "7", 1.0),  # no tags: the last number
    ("<answer>7</answer> and 12 more words", "7", 1.0),
])
def test_eval_score_is_exact(response, reference, expected):
    assert tasks.score("basic_arithmetic", response, reference) == expected


def test_extract_answer_is_linear_on_hostile_input():
    import time

    hostile = "<answer> " * 7280  # 65,520 bytes; quadratic regexes spend seconds here
    t0 = time.perf_counter()
    for _ in range(100):
        assert tasks.extract_answer(hostile) is None
        assert tasks.extract_answer(hostile + "</answer>") == ""
    assert time.perf_counter() - t0 < 1.0  # 100 calls; linear work is ~milliseconds
    assert tasks.extract_answer("a <answer>1</answer> b <answer> 2 </answer>") == "2"


def test_eval_set_is_distinct_and_disjoint_from_training():
    cfg = load(["task=mixed", "task.eval_size=300"]).task
    held_out = tasks.eval_prompts(cfg)
    assert len(held_out) == 300
    assert len({p.problem for p in held_out}) == 300  # distinct problems, not just distinct wordings
    train = {p.problem for p in itertools.islice(tasks.train_prompts(cfg), 3000)}
    assert not train & {p.problem for p in held_out}


def test_tasks_draw_from_their_own_seeds():
    cfg = TaskConfig(names=["basic_arithmetic", "chain_sum"], dataset_kwargs={
        "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
        "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}})
    prompts = list(itertools.islice(tasks.train_prompts(cfg), 40))
    numbers = {t: [tuple(sorted(map(int, __import__("re").findall(r"\d+", p.prompt.split("\n")[0]))))
                   for p in prompts if p.task == t] for t in cfg.names}
    assert numbers["basic_arithmetic"] != numbers["chain_sum"]  # one seed gave both the same numbers


def test_a_small_space_yields_what_it_has():
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
                 "allow_negation": False, "allow_parentheses": False}
    cfg = TaskConfig(eval_size=500, dataset_kwargs={"basic_arithmetic": one_digit})  # a few hundred problems at most
    held_out = tasks.eval_prompts(cfg)
    assert len(held_out) == len({p.problem for p in held_out}) < 500
