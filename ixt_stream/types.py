"""Plain data carriers that cross every stage boundary.

Protobuf stays at the edges (`ixt_stream.wire`); everything inside the library speaks these
dataclasses. They hold no tensors: token ids are plain int lists until `batch/` turns a batch into
tensors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Label(enum.IntEnum):
    """Coarse quality; values match `ixt.v1.QualityLabel`."""

    UNSPECIFIED = 0
    BAD = 1
    MIXED = 2
    GOOD = 3

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass
class Sample:
    """One response to a prompt (or one raw document when `prompt` is empty)."""

    sample_id: str
    prompt: str
    response: str
    task: str = ""
    reference_answer: str = ""
    prompt_id: str = ""
    weight_version: int = 0
    generator_id: str = ""
    created_at: float = 0.0
    num_response_tokens: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    response_token_ids: list[int] = field(default_factory=list)
    """The exact ids the generator sampled (empty for text from a corpus): the learner trains on
    these, never on a re-tokenization of `response`."""
    finish_reason: str = ""
    """"stop" (ended on its own), "length" (cut at max_new_tokens), "" (unknown: corpus text)."""

    @property
    def is_document(self) -> bool:
        return not self.prompt

    @property
    def truncated(self) -> bool:
        """Cut at the token limit: trained without an end-of-turn token, and the critic is told."""
        return self.finish_reason == "length"


@dataclass
class Critique:
    """A reward model's feedback on one sample."""

    sample_id: str
    critique: str
    score: float
    label: Label
    thinking: str = ""
    model_id: str = ""
    latency_ms: float = 0.0


@dataclass
class ConditionedSample:
    """A sample laid out as [feedback][prompt][response], ready to train on.

    `loss_mask[i] == 1` exactly for the data tokens (the response, or the whole document).
    """

    sample: Sample
    critique: Critique | None
    input_ids: list[int]
    loss_mask: list[int]
    num_feedback_tokens: int
    feedback_leaked: bool = False
    """The critique gave the answer away (`condition.leak`); it is counted, not sent on the wire."""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(
                f"input_ids ({len(self.input_ids)}) and loss_mask ({len(self.loss_mask)}) differ"
            )

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class WeightVersion:
    """A new set of learner weights, announced to generators."""

    version: int
    step: int
    uri: str = ""
    digest: str = ""
    """BLAKE3 hex of the payload (fast enough to check on every push; SHA-256 costs ~2x)."""
    num_bytes: int = 0
    published_at: float = 0.0
    transport: str = "filesystem"
    positive_critique: str = ""
    """The critique most often trained with label good at the best score so far: the positive
    feedback generators condition on from this version on (empty: none trained yet, sample
    without a prefix)."""


@dataclass
class WeightAck:
    """A generator confirms it now serves `version`."""

    generator_id: str
    version: int
    applied_at: float = 0.0
    apply_seconds: float = 0.0


@dataclass
class ModelCard:
    """What a critic is and how its feedback looks (`ixt.v1.ModelCard`)."""

    name: str
    backend: str
    model_id: str = ""
    feedback_format: str = "thinking+critique+score+label"
    score_min: float = 0.0
    score_max: float = 1.0
    labels: list[Label] = field(default_factory=lambda: [Label.BAD, Label.MIXED, Label.GOOD])
    tasks: list[str] = field(default_factory=list)
    """Tasks it can judge; empty = any text."""
    max_response_bytes: int = 0
    """Filled in by the server from its own limit."""
