"""Does a critique give the answer away? The leak check of the conditioning stage.

Feedback sits *before* the data during training. If it contains the response's final answer or the
reference answer (or a number copied from either), the answer tokens become predictable by copying
from the prefix, and the quality label teaches nothing: at inference, where no answer is in the
prefix, the copying habit has nothing to copy. Every sample's feedback is checked here, in the
online loop and in `ixt annotate`; `condition.leak_policy` decides what happens to a leaking
critique (from a plugged-in reward model; the built-in critics write none): `train` it as is,
`redact` the leaked spans, or `drop` the sample (ledgered with reason `feedback_leak`).

What counts as the answer: the response's final answer (tagged, else its last number) and the
reference. A number leaks when it appears in the critique as the same number (sign and thousands
separators aside); a non-numeric answer of three or more characters leaks as a case-insensitive
substring, a shorter one only as a whole word with the same case.
Left out: paraphrased leaks ("the sum of seven and five"), and answers spread over several spans.
"""

from __future__ import annotations

import re

from ixt_stream import tasks
from ixt_stream.types import Sample

REDACTED = "[...]"
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+\u2212]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|"
                             r"(?<![\w.])[-+\u2212]?\d+(?:\.\d+)?(?![\w])")


def answers_of(sample: Sample) -> list[str]:
    """The strings a critique of `sample` must not contain: its final answer and the reference."""
    found = [tasks.final_answer(sample.response), sample.reference_answer]
    return [tasks.normalize_answer(a) for a in found if a and a.strip()]


def _spans(critique: str, answer: str) -> list[tuple[int, int]]:
    value = tasks.as_number(answer)
    if value is not None:
        return [m.span() for m in _NUMBER_IN_TEXT.finditer(critique)
                if (n := tasks.as_number(m.group())) is not None and abs(n) == abs(value)]
    if len(answer) >= 3:
        return [m.span() for m in re.finditer(re.escape(answer), critique, flags=re.IGNORECASE)]
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", critique)]


def find(critique: str, sample: Sample) -> list[str]:
    """The answers (response's final answer, reference) that `critique` gives away; [] = no leak."""
    return [a for a in dict.fromkeys(answers_of(sample)) if _spans(critique, a)]


def redact(critique: str, sample: Sample) -> str:
    """`critique` with every leaked answer replaced by `[...]`."""
    spans = sorted(s for a in answers_of(sample) for s in _spans(critique, a))
    out, at = [], 0
    for start, end in spans:
        if start < at:
            continue
        out += [critique[at:start], REDACTED]
        at = end
    return "".join(out) + critique[at:]
