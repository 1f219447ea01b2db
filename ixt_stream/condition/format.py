"""The IXT conditioning format: one place decides how feedback sits before the data.

A training sequence is three token segments, tokenized separately and concatenated, so the loss
mask is exact by construction and inference can rebuild the very same prefix ids:

    chat sample:  <|im_start|>system\\n{feedback}<|im_end|>\\n          <- context, no loss
                  <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n   <- no loss
                  {response}<|im_end|>                                  <- loss
    document:     {feedback}\\n\\n                                      <- no loss
                  {document}<eos>                                       <- loss

Modes: "critique" (label + the critic's words), "label" (a quality token only, Quark/SteerLM
style), "none" (the unconditioned baseline: no feedback segment at all). At inference the prefix
is the *positive* condition (label good + a fixed positive critique); "negative" and "none" exist
for the conditioning gap at eval. Left out: multi-turn samples and non-ChatML chat templates.
"""

from __future__ import annotations

import random

from ixt_stream.config import ConditionConfig
from ixt_stream.types import ConditionedSample, Critique, Label, Sample

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def feedback_text(label: Label, critique: str, mode: str) -> str:
    """The natural-language feedback prefix (without chat markup)."""
    head = f"Feedback on the answer below. Quality: {label.word}."
    if mode == "label" or not critique:
        return head
    return f"{head} Critique: {critique.strip()}"


class Conditioner:
    """Builds IXT training sequences and inference prompts with one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with ChatML special tokens (SmolLM2, Qwen, ...).
        mode: "critique" | "label" | "none".
        feedback_dropout: probability of training a sample without its feedback prefix.
        max_feedback_tokens: the critique is cut so the feedback segment fits this budget.
        max_seq_len: longer samples lose the tail of their response (never the prefix).
    """

    def __init__(
        self,
        tokenizer,
        mode: str = "critique",
        feedback_dropout: float = 0.0,
        max_feedback_tokens: int = 160,
        max_seq_len: int = 1024,
        positive_critique: str = "The final answer is correct.",
        negative_critique: str = "The final answer is wrong.",
        seed: int = 0,
    ):
        if mode not in ("critique", "label", "none"):
            raise ValueError(f"unknown conditioning mode {mode!r}")
        self.tok = tokenizer
        self.mode = mode
        self.feedback_dropout = feedback_dropout
        self.max_feedback_tokens = max_feedback_tokens
        self.max_seq_len = max_seq_len
        self.positive_critique = positive_critique
        self.negative_critique = negative_critique
        self._rng = random.Random(seed)
        self._im_end = self._ids(IM_END)
        self._eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    @classmethod
    def from_config(cls, tokenizer, cfg: ConditionConfig, seed: int = 0) -> Conditioner:
        """The Conditioner a ConditionConfig describes: training, generation and eval agree."""
        return cls(tokenizer, mode=cfg.mode, feedback_dropout=cfg.feedback_dropout,
                   max_feedback_tokens=cfg.max_feedback_tokens, max_seq_len=cfg.max_seq_len,
                   positive_critique=cfg.positive_critique, negative_critique=cfg.negative_critique, seed=seed)

    def _ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    # -- segments ---------------------------------------------------------------------------------

    def feedback_ids(self, label: Label, critique: str, document: bool) -> list[int]:
        """The feedback segment, the critique cut to fit `max_feedback_tokens`."""
        if self.mode == "none":
            return []
        open_, close = ("", "\n\n") if document else (f"{IM_START}system\n", f"{IM_END}\n")
        head, tail = self._ids(open_), self._ids(close)
        body = self._ids(feedback_text(label, critique, self.mode))
        room = max(self.max_feedback_tokens - len(head) - len(tail), 0)
        return head + body[:room] + tail

    def prompt_ids(self, prompt: str) -> list[int]:
        """The user turn and the assistant header: context the model answers after."""
        return self._ids(f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n")

    # -- training ---------------------------------------------------------------------------------

    def condition(self, sample: Sample, critique: Critique | None) -> ConditionedSample:
        """Lay out one training sample; loss only on the response (or the document).

        `critique=None` (or mode "none", or a feedback-dropout draw) gives no feedback segment.
        """
        document = sample.is_document
        dropped = self.feedback_dropout > 0 and self._rng.random() < self.feedback_dropout
        if critique is None or dropped:
            feedback = []
        else:
            feedback = self.feedback_ids(critique.label, critique.critique, document)
        if document:
            context = feedback
            data = self._ids(sample.response) + self._eos
        else:
            context = feedback + self.prompt_ids(sample.prompt)
            data = self._ids(sample.response) + self._im_end
        room = self.max_seq_len - len(context)
        if room <= 0:
            raise ValueError(
                f"sample {sample.sample_id}: prefix of {len(context)} tokens leaves no room "
                f"for data within max_seq_len={self.max_seq_len}"
            )
        data = data[:room]
        return ConditionedSample(
            sample=sample,
            critique=critique,
            input_ids=context + data,
            loss_mask=[0] * len(context) + [1] * len(data),
            num_feedback_tokens=len(feedback),
        )

    # -- inference --------------------------------------------------------------------------------

    def inference_ids(self, prompt: str, condition: str = "positive") -> list[int]:
        """Prompt token ids under a condition: "positive" (the default at inference),
        "negative", or "none". A policy trained with mode "none" always gets no prefix."""
        if condition == "none" or self.mode == "none":
            feedback = []
        elif condition == "positive":
            feedback = self.feedback_ids(Label.GOOD, self.positive_critique, document=not prompt)
        elif condition == "negative":
            feedback = self.feedback_ids(Label.BAD, self.negative_critique, document=not prompt)
        else:
            raise ValueError(f"unknown condition {condition!r}: positive | negative | none")
        if not prompt:
            return feedback
        return feedback + self.prompt_ids(prompt)
