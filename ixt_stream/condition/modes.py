"""Conditioning modes by name: `condition.mode` -> how the feedback prefix is written.

A mode is a `Mode`: a function (label, critique) -> the feedback text, or None for no feedback
segment at all (the unconditioned baseline), and whether the critique's own words appear in it
(those are leak-checked). `format.Conditioner` reads a mode through this table only; the config's
`ConditionMode` choices are its names. A new mode is one new module defining its `Mode` plus one
line here. Imports only `types` and `lazy`, so the config can read the table without tokenizers or torch.
Left out: modes that change the data segment itself (the format keeps prompt and response as they are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ixt_stream import lazy
from ixt_stream.types import Label


@dataclass(frozen=True)
class Mode:
    text: Callable[[Label, str], str] | None
    """(label, critique) -> the feedback text, without chat markup; None = no feedback segment."""
    shows_critique: bool = False
    """The critique's own words are in the prefix (so a critique that gives the answer away matters)."""


def quality(label: Label, critique: str = "") -> str:
    """The quality head every feedback text starts with (a quality token only, Quark/SteerLM style)."""
    return f"Feedback on the answer below. Quality: {label.word}."


def with_critique(label: Label, critique: str) -> str:
    """The label and the critic's words (the quality head alone when there are none)."""
    head = quality(label)
    return f"{head} Critique: {critique.strip()}" if critique else head


CRITIQUE = Mode(with_critique, shows_critique=True)
LABEL = Mode(quality)
NONE = Mode(None)

MODES: dict[str, str] = {
    "critique": "ixt_stream.condition.modes:CRITIQUE",
    "label": "ixt_stream.condition.modes:LABEL",
    "none": "ixt_stream.condition.modes:NONE",
}
"""mode name -> "module:attribute" of its `Mode`."""


def get(name: str) -> Mode:
    """The `Mode` called `name`; ValueError for a name not in MODES."""
    return lazy.resolve(lazy.choose(MODES, str(name), "conditioning mode"))
