"""Synthetic responses with controlled error types, for annotating without a policy model.

Each response is short, plausible reasoning followed by a final answer that is right or wrong in
a known way, so a critic's labels can be checked against the kind (`KINDS`):
  correct       reasoning + the reference answer in <answer></answer> tags
  wrong_value   reasoning + a clearly different value in tags
  off_by_one    reasoning + the value off by one (numeric answers; else like wrong_value)
  missing_tags  reasoning + the right value, but no <answer> tags
  garbled       the right value inside broken tags (unclosed, misspelled)
Deterministic: the kind and the wording depend only on the seed string (e.g. "<seed>:<sample id>").
Left out: long chains of thought, task-specific worked solutions.
"""

from __future__ import annotations

import random

KINDS = ("correct", "wrong_value", "off_by_one", "missing_tags", "garbled")

_OPENINGS = (
    "Let me work through this step by step.",
    "I will solve this carefully, one part at a time.",
    "First, I restate the problem to be sure I read it right.",
)
_MIDDLES = (
    "The question asks: {q} I compute each part and then combine the results.",
    "We need: {q} Breaking it into small steps, I evaluate each one and check it.",
    "Here the task is: {q} I go through it in order and keep track of the intermediate values.",
)
_CLOSINGS = ("So the result is {a}.", "Putting it together gives {a}.", "Therefore the answer is {a}.")
_BROKEN_TAGS = ("<answer>{a}", "<answr>{a}</answr>", "answer: {a}</answer>", "<answer {a}>")


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _wrong(answer: str, rng: random.Random, off_by_one: bool) -> str:
    value = _number(answer.strip())
    if value is None:  # not numeric: a different string of the same kind
        changed = answer[::-1] if answer[::-1] != answer else answer + answer[-1:]
        return changed or "0"
    delta = rng.choice((-1, 1)) if off_by_one else rng.choice((-1, 1)) * rng.randint(2, 9)
    if value + delta == -value:  # some scorers give partial credit for a flipped sign
        delta = -delta
    return str(value + delta)


def synthetic_response(prompt: str, answer: str, seed: str, kind: str | None = None) -> tuple[str, str]:
    """(kind, response text) for a prompt with a reference answer; `kind` is drawn if not given."""
    rng = random.Random(seed)
    kind = kind or rng.choice(KINDS)
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {KINDS}")
    question = " ".join(prompt.strip().splitlines()[0].split())[:160] if prompt.strip() else "the task."
    right = kind in ("correct", "missing_tags", "garbled")
    value = answer if right else _wrong(answer, rng, off_by_one=kind == "off_by_one")
    reasoning = " ".join((rng.choice(_OPENINGS), rng.choice(_MIDDLES).format(q=question),
                          rng.choice(_CLOSINGS).format(a=value)))
    if kind == "missing_tags":
        return kind, reasoning
    if kind == "garbled":
        return kind, f"{reasoning}\n{rng.choice(_BROKEN_TAGS).format(a=value)}"
    return kind, f"{reasoning}\n<answer>{value}</answer>"
