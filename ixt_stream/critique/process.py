"""A process-verifier critic for worked arithmetic (`reward.backend=process`): every step re-checked.

A sample is a document of worked problems (`worked` format) in `response` (a prompt, if any, is
read before it). Each problem is re-derived column by column (`worked.check`); the critique names
the *first* error kind in the document in one of a few paraphrases per kind (picked by the sample
id, so retries agree), and holds no digit: the critique sits before the data in training, and a
number in it would let the model copy instead of learn what the words describe. The score is the
fraction of problems whose final answer is right; the label is GOOD when every problem is right and
fully worked, BAD when fewer than half are right, MIXED otherwise. `thinking` (never trained on)
lists each problem's kind.
Left out: critiquing more than the first error (a document gets one sentence).
"""

from __future__ import annotations

import zlib

from ixt_stream import worked
from ixt_stream.critique.backend import InvalidRequest
from ixt_stream.types import Critique, Label, ModelCard, Sample

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "correct": ("Every step checks out and the answer follows from the working.",
                "All columns are right, every carry is passed on, and the answer matches.",
                "The working is sound from the first column to the answer."),
    "no_working": ("The answer is given with no working at all.",
                   "No steps are shown, only the answer.",
                   "The columns are skipped: there is just an answer."),
    "operand": ("A step uses a digit that is not in the problem.",
                "A column copies the wrong digit from the problem.",
                "The working starts from a miscopied digit."),
    "carry": ("A carry or borrow is not passed on to the next column.",
              "The working drops a carry or borrow between columns.",
              "One column ignores the carry or borrow from the column before."),
    "column": ("The arithmetic inside one column is wrong.",
               "A column sum or difference does not hold.",
               "One column is miscalculated."),
    "answer": ("The working is right but the answer does not match it.",
               "A digit of the answer was miscopied from the working.",
               "The answer disagrees with the columns worked out above."),
    "malformed": ("The solution is incomplete or not in the expected form.",
                  "Steps are missing or the answer never comes.",
                  "The working breaks off or does not follow the format."),
}
"""first error kind -> paraphrases. No digits anywhere (a test checks it)."""
UNSEEN_CORRECT = "Each column and each carry is right, and so is the final answer."
"""A positive paraphrase the critic never writes: evaluated as a probe of generalisation."""


def paraphrase(kind: str, sample_id: str) -> str:
    options = PARAPHRASES[kind]
    return options[zlib.crc32(sample_id.encode()) % len(options)]


def judge(text: str, sample_id: str) -> tuple[float, Label, str, str]:
    """(score, label, critique, thinking) of a document; InvalidRequest if it holds no problem."""
    parts = worked.split_document(text)
    if not parts:
        raise InvalidRequest("no worked problem (nothing starts with 'Q') in the sample")
    checks = [worked.check(p, sol) if p is not None else worked.Check("malformed", False) for p, sol in parts]
    right = sum(c.right for c in checks) / len(checks)
    first = next((c.kind for c in checks if c.kind != "correct"), "correct")
    label = Label.GOOD if first == "correct" else Label.BAD if right < 0.5 else Label.MIXED
    thinking = "; ".join(f"{p.key if p else '?'}: {c.kind}{'' if c.right else ' (wrong)'}"
                         for (p, _), c in zip(parts, checks, strict=True))
    return right, label, paraphrase(first, sample_id), thinking


class ProcessVerifierBackend:
    """Deterministic and instant; runs on the server's event loop."""

    def card(self) -> ModelCard:
        return ModelCard(name="process verifier (worked arithmetic)", backend="process",
                         feedback_format="thinking+critique+score+label", tasks=["worked_arithmetic"])

    async def critique(self, sample: Sample) -> Critique:
        score, label, critique, thinking = judge(f"{sample.prompt} {sample.response}", sample.sample_id)
        return Critique(sample_id=sample.sample_id, critique=critique, score=score, label=label,
                        thinking=thinking, model_id="process-verifier")

    async def aclose(self) -> None:
        return None


def build(cfg) -> ProcessVerifierBackend:
    """The registry's builder (`critique/registry.py`); the critic takes no settings."""
    return ProcessVerifierBackend()
