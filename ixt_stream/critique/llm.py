"""LLM critics: one prompt, one parser, one backend over any text completer.

`vllm`, `openai` and `sglang` differ only in how a chat becomes text (`completers.py`); everything
a critic model is asked and how its answer is read lives here, so the three behave alike. The model
is asked to think inside <think></think>, then write `Critique:`, `Score:` and `Label:` lines. The
parser tolerates what small models do to that format: missing or garbled fields, scores out of
range or written as "7/10", a label that contradicts the score. Whatever is missing falls back to
something consistent (label from score, score from label, else MIXED / 0.5) and `thinking` records
that the fallback happened. A reply with no usable critique at all (empty, only an unclosed
<think>, the prompt copied back) is not feedback: the item fails with `BackendUnavailable`
(retried, then counted as failed and kept out of training), never a made-up MIXED 0.5.

`hybrid` is this backend with a verifier: the verdict (score, label) is exact, and the model is
told it and asked only to explain it; if its text has no usable critique, the verifier's is kept.
Left out: few-shot examples, multi-turn critiques, self-consistency voting.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol

from ixt_stream.condition import leak
from ixt_stream.critique.backend import BackendUnavailable
from ixt_stream.critique.verifier import Verdict, VerifierBackend
from ixt_stream.types import Critique, Label, ModelCard, Sample

Messages = list[dict[str, str]]

SYSTEM = (
    "You review answers written by a student model. Check the answer carefully, then write feedback "
    "the student can learn from: what is right and what is wrong. Never state the correct answer."
)
FORMAT = (
    "Reply in exactly this format:\n"
    "<think>your step-by-step check</think>\n"
    "Critique: two or three sentences on what is right and what is wrong\n"
    "Score: a number from 0 to 1\n"
    "Label: good, mixed or bad"
)
LABEL_SCORE = {Label.GOOD: 1.0, Label.MIXED: 0.5, Label.BAD: 0.0}
NO_FEEDBACK = "The critic gave no usable feedback."

_THINK = re.compile(r"<think>(.*?)(?:</think>|(?=critique\s*:)|\Z)", re.IGNORECASE | re.DOTALL)
_KEY = r"\**\s*[:=]\**\s*"  # "Score:", "**Score:**", "score ="
_NEXT_FIELD = r"(?=\s*\**\s*\b(?:score|label)\s*" + _KEY + r"|\Z)"
_CRITIQUE = re.compile(r"critique\s*" + _KEY + r"(.*?)" + _NEXT_FIELD, re.IGNORECASE | re.DOTALL)
_SCORE = re.compile(r"score\s*" + _KEY + r"(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_LABEL = re.compile(r"label\s*" + _KEY + r"(good|mixed|bad)", re.IGNORECASE)
_FIELD = re.compile(r"\**\s*\b(?:score|label)\s*" + _KEY + r"[\w./]*", re.IGNORECASE)


def _cut(text: str, limit: int) -> str:
    """Keep head and tail of an over-long field: the final answer usually sits at the end."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def build_messages(sample: Sample, verdict: Verdict | None = None, max_field_chars: int = 6000) -> Messages:
    """The chat a critic model sees for one sample."""
    if sample.is_document:
        parts = [f"## Document\n{_cut(sample.response, max_field_chars)}",
                 "Judge the document's quality: is it correct, clear and coherent?"]
    else:
        parts = [f"## Task\n{_cut(sample.prompt, max_field_chars)}",
                 f"## Response\n{_cut(sample.response, max_field_chars)}"]
        if sample.reference_answer:
            parts.append(f"## Reference answer (private: never repeat it)\n{sample.reference_answer}")
    if verdict is not None:
        parts.append("## Verdict (decided by an exact checker: explain it, do not change it)\n"
                     f"Label: {verdict.label.word}\nScore: {verdict.score:g}\nChecker: {verdict.critique}")
    parts.append(FORMAT)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def render_chat(tokenizer, messages: Messages) -> str:
    """Messages -> prompt text with the model's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_plain(messages)


def render_plain(messages: Messages) -> str:
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


@dataclass
class Parsed:
    thinking: str
    critique: str
    score: float
    label: Label
    complete: bool
    """True when the model wrote a critique, a score and a label itself."""


def _score_value(match: re.Match) -> float:
    value = float(match.group(1))
    if match.group(2):
        value /= max(float(match.group(2)), 1e-9)
    elif value > 10:
        value /= 100  # "Score: 85" is a percentage
    elif value > 1:
        value /= 10  # "Score: 7" is out of ten
    return min(max(value, 0.0), 1.0)


def label_of(score: float) -> Label:
    """A critic model's score, read coarsely: its scores are not calibrated enough for exact cuts."""
    return Label.GOOD if score >= 0.75 else Label.BAD if score <= 0.25 else Label.MIXED


def parse(text: str, max_critique_chars: int = 2000) -> Parsed:
    """Read thinking, critique, score and label from a critic's output; never raises."""
    if "</think>" in text and "<think>" not in text:  # templates that open <think> in the prompt
        text = "<think>" + text
    think = _THINK.search(text)
    thinking = think.group(1).strip() if think else ""
    body = _THINK.sub("", text) if think else text
    crit = _CRITIQUE.search(body)
    if crit:
        critique = crit.group(1).strip()
        if not think:
            thinking = body[: crit.start()].strip()
    else:
        critique = _FIELD.sub("", body).strip()
    score_m, label_m = _SCORE.search(body), _LABEL.search(body)
    score = _score_value(score_m) if score_m else None
    label = Label[label_m.group(1).upper()] if label_m else None
    if label is None:
        label = label_of(score if score is not None else 0.5)
    contradicts = score is not None and (label == Label.GOOD and score < 0.5
                                         or label == Label.BAD and score > 0.5)
    if score is None or contradicts:
        score = LABEL_SCORE[label]  # the label is the more robust signal; keep the pair consistent
    complete = bool(crit and critique and score_m and label_m)
    if not complete:
        thinking = (thinking + "\n" if thinking else "") + "[parser fallback: incomplete critic output]"
    critique = _cut(" ".join(critique.split()), max_critique_chars) or NO_FEEDBACK
    return Parsed(thinking=thinking, critique=critique, score=score, label=label, complete=complete)


def _echoes(critique: str, messages: Messages, probe_chars: int = 48) -> bool:
    """Whether the critique's opening is copied from the prompt (instructions or sample)."""
    probe = critique[:probe_chars]
    return len(probe) >= 16 and any(probe in " ".join(m["content"].split()) for m in messages)


def _no_feedback_reason(text: str, echoed: bool) -> str:
    lower = text.lower()
    if echoed:
        return "it copied the prompt back"
    if not text.strip():
        return "its reply was empty"
    if "<think>" in lower and "</think>" not in lower:
        return "its <think> was never closed"
    return "no critique outside its thinking"


class Completer(Protocol):
    """Turns one chat into the model's reply; batches concurrent calls itself if it can."""

    model_id: str

    async def complete(self, messages: Messages) -> str: ...

    async def aclose(self) -> None: ...


class LLMBackend:
    """A critic that asks an LLM (through `completer`) to think, then critique.

    Args:
        completer: vllm / openai / sglang text completer.
        backend: the name on the model card ("vllm", "openai", "sglang", "hybrid").
        verifier: if set (hybrid), the verdict comes from it and the LLM only explains it.
    """

    def __init__(self, completer: Completer, backend: str, verifier: VerifierBackend | None = None,
                 max_critique_chars: int = 2000, max_field_chars: int = 6000):
        self.completer = completer
        self.backend = backend
        self.verifier = verifier
        self.max_critique_chars = max_critique_chars
        self.max_field_chars = max_field_chars

    def card(self) -> ModelCard:
        tasks_ = self.verifier.card().tasks if self.verifier else []
        return ModelCard(name=f"{self.backend} LLM critic", backend=self.backend,
                         model_id=self.completer.model_id, tasks=tasks_)

    async def critique(self, sample: Sample) -> Critique:
        verdict = self.verifier.verdict(sample) if self.verifier else None
        t0 = time.perf_counter()
        messages = build_messages(sample, verdict, self.max_field_chars)
        text = await self.completer.complete(messages)
        p = parse(text, self.max_critique_chars)
        critique = leak.redact(p.critique, sample)  # the answer must never sit in a training prefix
        echoed = _echoes(critique, messages)  # small models copy the instructions or the sample back
        if echoed:
            critique, p.complete = NO_FEEDBACK, False
        if critique == NO_FEEDBACK and verdict is None:  # nothing to train on: a failed, retryable item
            raise BackendUnavailable(f"the critic gave no usable feedback ({_no_feedback_reason(text, echoed)})")
        score, label, thinking = p.score, p.label, p.thinking
        if verdict is not None:
            score, label = verdict.score, verdict.label
            thinking = f"{verdict.thinking}\n--- critic model ---\n{p.thinking}"
            if not p.complete:
                critique = verdict.critique
        return Critique(sample_id=sample.sample_id, critique=critique, score=score, label=label,
                        thinking=thinking, model_id=self.completer.model_id,
                        latency_ms=(time.perf_counter() - t0) * 1e3)

    async def aclose(self) -> None:
        await self.completer.aclose()
