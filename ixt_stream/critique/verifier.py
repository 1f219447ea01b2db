"""A deterministic *thinking* critic for reasoning-gym tasks, whose feedback never leaks the answer.

The verdict comes from `tasks.score_answer` (numbers compared as numbers, else reasoning-gym's own
`score_answer` with the entry metadata the generator attached as JSON under `metadata["entry"]`).
The critique names the *kind* of virtue or mistake (correct with working shown; correct but
unexplained; wrong sign; a small slip; an error in one place value, i.e. a carry or borrow; no
answer in tags; a wrong value without tags; cut off before the end; ...) in one of a few
paraphrases per kind, picked by the sample id, so retries agree. No critique contains a digit:
the critique is placed before the data during training, and a number in it (the response's
answer, the reference, or anything copied from them) would make the answer tokens predictable by
copying instead of by the quality it describes.
`thinking` (never trained on) keeps the full trace, reference included, for debugging.

Labels follow what eval accuracy counts, the final answer being right: GOOD when it is (score 1,
or 0.75 when the right value is given without proper <answer></answer> tags, which the critique
says); MIXED when it is only partly right (non-numeric tasks) or when a right answer is followed
by a response cut off at the token limit; BAD otherwise. (A small model rarely tags its answers at
first: were untagged right answers not good, it would train on no good sample at all.) Every step is linear in the
response length (the service parses untrusted text). Each task's scorer is built once (some take
up to half a second).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal

from ixt_stream import tasks
from ixt_stream.critique.backend import InvalidRequest
from ixt_stream.types import Critique, Label, ModelCard, Sample

MIN_REASONING_CHARS = 20
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

KINDS: dict[str, tuple[Label, tuple[str, ...]]] = {
    "correct": (Label.GOOD, (
        "The final answer is correct, the working is shown, and the answer is given in the required tags.",
        "Correct: each step is shown and the final answer sits in the answer tags as asked.",
        "A right answer, reached with clear working and given in the required format.",
    )),
    "correct_unexplained": (Label.GOOD, (
        "The final answer is correct and in the required tags, but no working is shown.",
        "Right answer in the right format, given without any steps.",
        "Correct and properly tagged, though the answer comes with no reasoning.",
    )),
    "correct_untagged": (Label.GOOD, (
        "The value is right, but it is not given inside the answer tags, so it cannot be read as the answer.",
        "Right value, wrong format: the final answer is missing its answer tags.",
        "The result is correct, but the answer tags around it are missing or broken.",
    )),
    "correct_cut_off": (Label.MIXED, (
        "The answer is right, but the response runs on after it and is cut off before it ends.",
        "A correct answer, followed by text that never finishes: the response should stop after the answer.",
        "Right answer, but the response keeps going and is cut off mid-way.",
    )),
    "partial": (Label.MIXED, (
        "The final answer is only partly right.",
        "Part of the final answer is right, part is not.",
        "The final answer is close but not fully correct.",
    )),
    "wrong_sign": (Label.BAD, (
        "The final answer has the wrong sign.",
        "The size of the result is right but its sign is flipped.",
        "A sign error: the answer should have the opposite sign.",
    )),
    "wrong_place_value": (Label.BAD, (
        "The final answer is wrong in one place value: a carry or a borrow went wrong.",
        "A carry or borrow error puts one digit of the final answer off.",
        "The answer is off in a single digit position, the mark of a mishandled carry or borrow.",
    )),
    "wrong_slip": (Label.BAD, (
        "The final answer is off by a little: a slip in the arithmetic.",
        "Close, but a small arithmetic slip makes the final answer wrong.",
        "The final answer misses by a small amount; one step was miscounted.",
    )),
    "wrong": (Label.BAD, (
        "The final answer is wrong; a step in the working does not hold.",
        "Wrong answer: the calculation goes astray somewhere.",
        "The final answer is incorrect; the steps need checking one by one.",
    )),
    "empty_tags": (Label.BAD, (
        "The answer tags are empty: no final answer is given.",
        "The answer tags hold nothing, so there is no final answer.",
        "An empty pair of answer tags: the final answer is missing.",
    )),
    "wrong_untagged": (Label.BAD, (
        "The value given is wrong, and it is not inside the answer tags either.",
        "Wrong result, and no answer tags around it.",
        "The final value is incorrect and is not given in the required answer tags.",
    )),
    "no_answer": (Label.BAD, (
        "No final answer is given inside the answer tags.",
        "The response never states a final answer in the answer tags.",
        "There is no tagged final answer to check.",
    )),
    "cut_off": (Label.BAD, (
        "The response is cut off before it reaches a final answer.",
        "The response runs out of room before giving an answer.",
        "The response never finishes: it stops before any final answer.",
    )),
}
"""kind -> (label, paraphrases). No digits anywhere (a test checks it)."""

UNTAGGED_SCORE = 0.75
"""A right value given without proper tags: right (label good, what eval accuracy counts), but
below a well-formed answer."""
NO_WORKING = "No working is shown."
CUT_OFF = "The response is also cut off before it ends."


@dataclass
class Verdict:
    score: float
    label: Label
    kind: str
    critique: str
    thinking: str


def registered_tasks() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def paraphrase(kind: str, sample_id: str) -> str:
    """One of the kind's paraphrases, the same for the same sample (retries agree)."""
    options = KINDS[kind][1]
    return options[zlib.crc32(sample_id.encode()) % len(options)]


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text[: 4 * limit].split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _outside_tags(response: str) -> str:
    """The response without the <answer>...</answer> spans (one pass: linear time)."""
    out, i = [], 0
    while True:
        start = response.find("<answer>", i)
        end = response.find("</answer>", start) if start >= 0 else -1
        if end < 0:
            out.append(response[i:])
            return "".join(out)
        out.append(response[i:start])
        i = end + len("</answer>")


def _untagged_candidates(response: str) -> list[str]:
    """Where a final answer may sit when the tags are missing or broken."""
    out = []
    if "<answer>" in response:
        out.append(response.rsplit("<answer>", 1)[1].split("</answer", 1)[0].strip())
    lines = response.strip().rsplit("\n", 1)
    last = lines[-1].strip() if lines else ""
    if last:
        numbers = _NUMBER.findall(last[-400:])
        if numbers:
            out.append(numbers[-1])
        out.append(last[:200])
    return [c for c in out if c]


def wrong_kind(answer: str, reference: str) -> str:
    """What kind of numeric mistake a wrong answer makes (never what the right value is)."""
    got, want = tasks.as_number(answer), tasks.as_number(reference)
    if got is None or want is None:
        return "wrong"
    if got == -want:
        return "wrong_sign"
    diff = abs(got - want)
    if diff <= 2:
        return "wrong_slip"
    if diff == diff.to_integral_value() and diff % 10 == 0 and _single_digit_place(diff):
        return "wrong_place_value"
    return "wrong"


def _single_digit_place(diff: Decimal) -> bool:
    """True for 10, 20, ..., 90, 100, 200, ...: a difference confined to one place value."""
    digits = str(int(diff)).rstrip("0")
    return len(digits) == 1


class VerifierBackend:
    """Judges reasoning-gym task samples.

    Args:
        warm_tasks: task names whose scorers are built now rather than on first use.
    """

    def __init__(self, warm_tasks: list[str] | tuple[str, ...] = ()):
        self._registry = set(registered_tasks())
        for name in warm_tasks:
            tasks.scorer(name)

    def card(self) -> ModelCard:
        return ModelCard(name="reasoning-gym verifier", backend="verifier",
                         tasks=sorted(self._registry))

    def check(self, sample: Sample) -> dict:
        """Raise InvalidRequest unless the sample can be verified; returns the scoring entry."""
        if not sample.task:
            raise InvalidRequest("the verifier judges reasoning-gym tasks; the request has no task")
        if sample.task not in self._registry:
            raise InvalidRequest(f"unknown task {sample.task!r}: not in reasoning-gym's registry")
        try:
            metadata = json.loads(sample.metadata.get("entry") or "{}")
        except (json.JSONDecodeError, RecursionError) as e:
            raise InvalidRequest(f"metadata['entry'] is not valid JSON: {type(e).__name__}") from e
        return {"question": sample.prompt, "answer": sample.reference_answer, "metadata": metadata}

    def _score(self, sample: Sample, answer: str, entry: dict, notes: list[str]) -> float:
        value = tasks.score_answer(sample.task, answer, sample.reference_answer, entry)
        notes.append(f"score of {_quote(answer)}: {value:g}")
        return value

    def _kind(self, sample: Sample, entry: dict, notes: list[str]) -> tuple[str, float]:
        response, cut = sample.response, sample.truncated
        answer = tasks.extract_answer(response)
        notes.append(f"tagged final answer: {'none' if answer is None else _quote(answer)}")
        if answer is None:
            candidates = _untagged_candidates(response)
            if any(self._score(sample, c, entry, notes) >= 1.0 for c in candidates):
                return ("correct_cut_off", 0.5) if cut else ("correct_untagged", UNTAGGED_SCORE)
            if cut:
                return "cut_off", 0.0
            # a value was given, untagged, and it is wrong: say so (what eval accuracy counts),
            # not only that the tags are missing, which a right untagged value shares
            numeric = any(tasks.as_number(c) is not None for c in candidates)
            return ("wrong_untagged" if numeric else "no_answer"), 0.0
        if not answer:
            return "empty_tags", 0.0
        score = self._score(sample, answer, entry, notes)
        if score >= 1.0:
            return ("correct_cut_off", 0.5) if cut else ("correct", 1.0)
        if score > 0.0:
            return "partial", score
        return wrong_kind(answer, sample.reference_answer), 0.0

    def verdict(self, sample: Sample) -> Verdict:
        entry = self.check(sample)
        notes = [f"task {sample.task}; reference {_quote(sample.reference_answer)}; truncated {sample.truncated}"]
        reasoning = _outside_tags(sample.response).strip()
        has_reasoning = len(reasoning) >= MIN_REASONING_CHARS
        notes.append(f"reasoning outside the answer tags: {len(reasoning)} chars")
        kind, score = self._kind(sample, entry, notes)
        if kind == "correct" and not has_reasoning:
            kind = "correct_unexplained"
        label = KINDS[kind][0]
        text = paraphrase(kind, sample.sample_id)
        if label == Label.BAD and not has_reasoning and kind not in ("cut_off",):
            text += " " + NO_WORKING
        if sample.truncated and kind not in ("cut_off", "correct_cut_off"):
            text += " " + CUT_OFF
        notes.append(f"verdict: {kind}, {label.word}, score {score:g}")
        return Verdict(score=score, label=label, kind=kind, critique=text, thinking="\n".join(notes))

    async def critique(self, sample: Sample) -> Critique:
        v = self.verdict(sample)
        return Critique(sample_id=sample.sample_id, critique=v.critique, score=v.score, label=v.label,
                        thinking=v.thinking, model_id="verifier")

    async def aclose(self) -> None:
        return None
