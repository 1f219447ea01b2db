"""A deterministic *thinking* critic for reasoning-gym tasks.

The verdict comes from reasoning-gym's own `score_answer` (with the entry metadata the generator
attached as JSON under `metadata["entry"]`); the critique is written from rules: correct / wrong
value / right value but not tagged / empty or partial answer, plus a note when no reasoning is shown.
The critique never states the reference answer: it is placed before the data during training, and
a model would learn to copy the answer from its own prefix. `thinking` (never trained on) keeps the
full trace, reference included, for debugging.

Labels: GOOD when the tagged answer scores 1; MIXED when it scores in (0, 1) or when the right value
is given without proper <answer></answer> tags (score 0.5); BAD otherwise. Scoring runs in-process
(tens of microseconds per call); each task's scorer is built once, because building some of them
takes up to half a second.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ixt_stream import tasks
from ixt_stream.critique.backend import InvalidRequest, label_for_score
from ixt_stream.types import Critique, Label, ModelCard, Sample

UNTAGGED_SCORE = 0.5
"""Score of a right value given without proper <answer></answer> tags."""
MIN_REASONING_CHARS = 20
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TAGGED = re.compile(r"<answer>.*?</answer>", re.DOTALL)


@dataclass
class Verdict:
    score: float
    label: Label
    critique: str
    thinking: str


def registered_tasks() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _untagged_candidates(response: str) -> list[str]:
    """Where a final answer may sit when the tags are missing or broken."""
    out = []
    if "<answer>" in response:
        out.append(response.rsplit("<answer>", 1)[1].split("</answer", 1)[0].strip())
    lines = [ln.strip() for ln in response.strip().splitlines() if ln.strip()]
    if lines:
        numbers = _NUMBER.findall(lines[-1])
        if numbers:
            out.append(numbers[-1])
        out.append(lines[-1][:200])
    return [c for c in out if c]


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
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"metadata['entry'] is not valid JSON: {e}") from e
        return {"question": sample.prompt, "answer": sample.reference_answer, "metadata": metadata}

    def _score(self, task: str, answer: str, entry: dict, notes: list[str]) -> float:
        try:
            value = float(tasks.scorer(task)(answer, entry))
        except Exception as e:  # a scorer choking on odd input means: not right
            notes.append(f"scorer raised {type(e).__name__}: {e}")
            return 0.0
        notes.append(f"reasoning-gym score of {_quote(answer)}: {value:g}")
        return min(max(value, 0.0), 1.0)

    def verdict(self, sample: Sample) -> Verdict:
        entry = self.check(sample)
        notes = [f"task {sample.task}; reference {_quote(sample.reference_answer)}"]
        response = sample.response
        reasoning = _TAGGED.sub("", response).strip()
        has_reasoning = len(reasoning) >= MIN_REASONING_CHARS
        notes.append(f"reasoning outside the answer tags: {len(reasoning)} chars")
        answer = tasks.extract_answer(response)
        notes.append(f"tagged final answer: {'none' if answer is None else _quote(answer)}")

        if answer is None:
            right = any(self._score(sample.task, c, entry, notes) >= 1.0
                        for c in _untagged_candidates(response))
            if right:
                score = UNTAGGED_SCORE
                text = ("The final value is right, but it is not given inside <answer></answer> tags, "
                        "so it cannot be read as the answer.")
            else:
                score = 0.0
                text = "The response gives no final answer inside <answer></answer> tags."
                if "<answer>" in response:
                    text = ("The answer tags are broken (an <answer> tag is never closed), "
                            "and no right value is given.")
        elif not answer:
            score, text = 0.0, "The <answer></answer> tags are empty: no final answer is given."
        else:
            score = self._score(sample.task, answer, entry, notes)
            if score >= 1.0:
                text = f"The final answer {_quote(answer)} is correct and given in the required format."
            elif score > 0.0:
                text = f"The final answer {_quote(answer)} is only partly correct."
                if len(answer.split()) > 1:
                    text += " The answer tags should hold only the final answer, without extra words."
            else:
                text = f"The final answer {_quote(answer)} is wrong."
                if has_reasoning:
                    text += " The reasoning contains an error; each step needs checking."
        if not has_reasoning:
            text += " No reasoning is shown."
        label = label_for_score(score)
        notes.append(f"verdict: {label.word}, score {score:g}")
        return Verdict(score=score, label=label, critique=text, thinking="\n".join(notes))

    async def critique(self, sample: Sample) -> Critique:
        v = self.verdict(sample)
        return Critique(sample_id=sample.sample_id, critique=v.critique, score=v.score, label=v.label,
                        thinking=v.thinking, model_id="verifier")

    async def aclose(self) -> None:
        return None
