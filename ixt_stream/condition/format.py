"""The IXT conditioning format: one place decides how feedback sits before the data.

A training sequence is three token segments, tokenized separately and concatenated, so the loss
mask is exact by construction and inference can rebuild the very same prefix ids:

    chat sample:  <|im_start|>system\\n{system}\\n\\n{feedback}<|im_end|>\\n   <- context, no loss
                  <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n   <- no loss
                  {response ids}<|im_end|>                              <- loss
    document:     {feedback}\\n\\n                                      <- no loss
                  {document}<eos>                                       <- loss

With `placement="assistant"` (Chain of Hindsight's layout) the system turn keeps the system text
alone and the feedback opens the assistant turn on a line of its own, right before the response
(no loss on it); a document always has it first.

`{system}` is the model's own system text (the chat template's default, `condition.system_prompt`),
kept under the feedback so every prompt stays in the chat format the model was tuned with: SmolLM2
answers twice as many sums right with it (0.28 vs 0.14 at T=0.7, measured). Without feedback (the
"none" condition, a dropout draw) the system turn holds the system text alone.

The response is the exact token ids the generator sampled when the sample carries them; a response
cut at the token limit (`Sample.truncated`) gets no end-of-turn token, so the model never learns to
close an answer it did not finish. Text from outside (prompts, responses, documents, critiques) is
encoded with special tokens split: a literal "<|im_end|>" in a response stays plain text, never a
forged turn boundary; only the markup above is made of special tokens.

Modes (`modes.MODES`): "critique" (label + the critic's words), "label" (a quality token only,
Quark/SteerLM style), "none" (the unconditioned baseline: no feedback segment at all). At inference the prefix is
feedback the model was *trained on* (`InferenceFeedback`: the critique most often written for good,
resp. bad, trained samples), never a sentence training never saw; "none" drops the prefix. Every
critique is leak-checked (`condition.leak`) before it is used, under `leak_policy`.
Left out: multi-turn samples and non-ChatML chat templates.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass

from ixt_stream.condition import leak, modes
from ixt_stream.config import ConditionConfig
from ixt_stream.types import ConditionedSample, Critique, Label, Sample

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
LEAK_POLICIES = ("train", "redact", "drop")
TRUNCATED_POLICIES = ("train", "drop")
PLACEMENTS = ("system", "assistant")


def feedback_text(label: Label, critique: str, mode: str) -> str:
    """The natural-language feedback prefix (without chat markup); "" for a mode that writes none."""
    text = modes.get(mode).text
    return text(label, critique) if text is not None else ""


def default_system_prompt(tokenizer) -> str:
    """The system text the tokenizer's chat template writes when a chat has none ("" if none)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    start = f"{IM_START}system\n"
    return text[len(start):text.index(IM_END)] if text.startswith(start) else ""


class Rejected(ValueError):
    """A sample that cannot be trained on; `reason` is its ledger drop reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class InferenceFeedback:
    """The feedback a model is conditioned on at inference: critiques it was trained on.

    `positive` (`negative`) is the critique most often trained with label good (bad) at the best
    (worst) score that label was trained with; `unseen` is an optional positive paraphrase the
    critic never writes, evaluated as a probe of generalisation.
    """

    positive: str
    negative: str = ""
    unseen: str = ""

    def conditions(self) -> dict[str, tuple[Label, str]]:
        out = {"positive": (Label.GOOD, self.positive), "negative": (Label.BAD, self.negative),
               "unseen": (Label.GOOD, self.unseen)}
        return {k: v for k, v in out.items() if v[1]}


class FeedbackCounter:
    """Counts the (label, score, critique) triples a model trains on; picks the inference feedback.

    Positive is the most frequent critique among the *best-scored* good samples, negative among the
    worst-scored bad ones: the most frequent good critique overall can be a lukewarm one (measured:
    "correct, but the answer tags are missing", which then asked every prompt for no tags).
    """

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, float, str]] = Counter()

    def observe(self, sample: ConditionedSample) -> None:
        """A trained sample; counted when its feedback was in the sequence."""
        if sample.critique is not None and sample.num_feedback_tokens:
            self.add(sample.critique)

    def add(self, c: Critique) -> None:
        """One critique as trained (the experiment counts its corpus this way)."""
        self.counts[(int(c.label), round(float(c.score), 6), c.critique)] += 1

    def most_frequent(self, label: Label) -> str:
        """The critique trained most often with `label` at that label's extreme score ("" if none)."""
        seen = [(score, n, text) for (lab, score, text), n in self.counts.items() if lab == int(label)]
        if not seen:
            return ""
        extreme = (min if label == Label.BAD else max)(score for score, _, _ in seen)
        return max((n, text) for score, n, text in seen if score == extreme)[1]

    def inference_feedback(self) -> InferenceFeedback | None:
        """None until a good sample was trained with its feedback."""
        positive = self.most_frequent(Label.GOOD)
        return InferenceFeedback(positive, self.most_frequent(Label.BAD)) if positive else None


class Conditioner:
    """Builds IXT training sequences and inference prompts with one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with ChatML special tokens (SmolLM2, Qwen, ...).
        mode: a name in `modes.MODES`: "critique" | "label" | "none".
        feedback_dropout: probability of training a sample without its feedback prefix.
        max_feedback_tokens: the critique is cut so the feedback segment fits this budget.
        max_seq_len: longer samples lose the tail of their response (never the prefix).
        leak_policy: what a critique that gives the answer away gets: "train" (as is), "redact"
            (the leaked spans masked) or "drop" (`Rejected("feedback_leak")`).
        truncated: what a response cut at the token limit gets: "train" or "drop"
            (`Rejected("truncated")`).
        inference: the feedback to condition on at inference (None: none recorded yet).
        system_prompt: the system text the feedback follows in a chat sample ("" = none).
        placement: where a chat sample's feedback sits: "system" (after the system text) or
            "assistant" (opening the assistant turn, on a line of its own before the response).
    """

    def __init__(
        self,
        tokenizer,
        mode: str = "critique",
        feedback_dropout: float = 0.0,
        max_feedback_tokens: int = 160,
        max_seq_len: int = 1024,
        leak_policy: str = "redact",
        inference: InferenceFeedback | None = None,
        seed: int = 0,
        system_prompt: str = "",
        truncated: str = "train",
        placement: str = "system",
    ):
        self._mode = modes.get(mode)  # ValueError for an unknown mode
        if leak_policy not in LEAK_POLICIES:
            raise ValueError(f"unknown leak policy {leak_policy!r}: {' | '.join(LEAK_POLICIES)}")
        if truncated not in TRUNCATED_POLICIES:
            raise ValueError(f"unknown truncated policy {truncated!r}: {' | '.join(TRUNCATED_POLICIES)}")
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown feedback placement {placement!r}: {' | '.join(PLACEMENTS)}")
        self.placement = placement
        self.tok = tokenizer
        self.mode = mode
        self.feedback_dropout = feedback_dropout
        self.max_feedback_tokens = max_feedback_tokens
        self.max_seq_len = max_seq_len
        self.leak_policy = leak_policy
        self.truncated = truncated
        self.inference = inference
        self.system_prompt = system_prompt
        self._rng = random.Random(seed)
        self._im_end = self._markup(IM_END)
        self._eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    @classmethod
    def from_config(cls, tokenizer, cfg: ConditionConfig, seed: int = 0,
                    inference: InferenceFeedback | None = None) -> Conditioner:
        """The Conditioner a ConditionConfig describes: training, generation and eval agree."""
        return cls(tokenizer, mode=cfg.mode, feedback_dropout=cfg.feedback_dropout,
                   max_feedback_tokens=cfg.max_feedback_tokens, max_seq_len=cfg.max_seq_len,
                   leak_policy=cfg.leak_policy, truncated=cfg.truncated, inference=inference, seed=seed,
                   placement=cfg.placement,
                   system_prompt=default_system_prompt(tokenizer) if cfg.system_prompt == "auto" else cfg.system_prompt)

    def _markup(self, text: str) -> list[int]:
        """Our own chat markup: special tokens are meant."""
        return self.tok.encode(text, add_special_tokens=False)

    def _text(self, text: str) -> list[int]:
        """Text from outside: any special-token look-alike is encoded as plain text."""
        return self.tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    # -- segments ---------------------------------------------------------------------------------

    def feedback_ids(self, label: Label | None, critique: str, document: bool) -> list[int]:
        """The context before the prompt (chat: the system turn, the system text then the feedback)
        or before a document (the feedback and a blank line); the critique is cut to fit
        `max_feedback_tokens`. `label=None`: no feedback (a chat sample keeps its system text)."""
        body = self._feedback_body(label, critique)
        system = [] if document or not self.system_prompt else self._text(self.system_prompt)
        if not body and not system:
            return []
        open_, close = ("", "\n\n") if document else (f"{IM_START}system\n", f"{IM_END}\n")
        head, tail = self._markup(open_), self._markup(close)
        head += system + (self._markup("\n\n") if system and body else [])
        room = max(self.max_feedback_tokens - len(head) - len(tail), 0)
        return head + body[:room] + tail

    def _feedback_body(self, label: Label | None, critique: str) -> list[int]:
        """The feedback text's ids, without markup ([] for no label or a mode that writes none)."""
        return [] if label is None or self._mode.text is None else self._text(self._mode.text(label, critique))

    def context_ids(self, label: Label | None, critique: str, prompt: str) -> tuple[list[int], int]:
        """Everything before the data (prompt "" = a document) and how many of those ids are the
        feedback (0: none). A chat sample's feedback sits where `placement` says."""
        has_feedback = label is not None and self._mode.text is not None
        if not prompt or self.placement == "system":
            feedback = self.feedback_ids(label, critique, document=not prompt)
            context = feedback + self.prompt_ids(prompt) if prompt else feedback
            return context, len(feedback) if has_feedback else 0
        body = self._feedback_body(label, critique)[: max(self.max_feedback_tokens - 1, 0)]
        turn = body + self._markup("\n") if has_feedback else []
        return self.feedback_ids(None, "", document=False) + self.prompt_ids(prompt) + turn, len(turn)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The user turn and the assistant header: context the model answers after."""
        return (self._markup(f"{IM_START}user\n") + self._text(prompt)
                + self._markup(f"{IM_END}\n{IM_START}assistant\n"))

    def data_ids(self, sample: Sample) -> list[int]:
        """The trained tokens: the sampled ids (else the encoded text), closed by end-of-turn
        (end-of-text for documents) unless the response was cut at the token limit."""
        ids = list(sample.response_token_ids) or self._text(sample.response)
        end = self._eos if sample.is_document else self._im_end
        if sample.truncated or (end and ids[-len(end):] == end):
            return ids
        return ids + end

    def checked(self, sample: Sample, critique: Critique) -> tuple[Critique, bool]:
        """The critique under the leak policy, and whether it leaked. Raises Rejected to drop."""
        if not self._mode.shows_critique or not leak.find(critique.critique, sample):
            return critique, False
        if self.leak_policy == "drop":
            raise Rejected("feedback_leak", f"sample {sample.sample_id}: the critique contains the answer")
        if self.leak_policy == "redact":
            critique = dataclasses.replace(critique, critique=leak.redact(critique.critique, sample))
        return critique, True

    # -- training ---------------------------------------------------------------------------------

    def condition(self, sample: Sample, critique: Critique | None) -> ConditionedSample:
        """Lay out one training sample; loss only on the response (or the document).

        `critique=None` (or mode "none", or a feedback-dropout draw) gives no feedback segment.
        Raises `Rejected` ("too_long", "feedback_leak", "truncated") for a sample not to train on.
        """
        if sample.truncated and self.truncated == "drop":
            raise Rejected("truncated", f"sample {sample.sample_id}: cut at the token limit (condition.truncated=drop)")
        leaked = False
        if critique is not None:
            critique, leaked = self.checked(sample, critique)
        dropped = self.feedback_dropout > 0 and self._rng.random() < self.feedback_dropout
        with_feedback = critique is not None and not dropped and self._mode.text is not None
        context, num_feedback = self.context_ids(critique.label if with_feedback else None,
                                                 critique.critique if with_feedback else "", sample.prompt)
        room = self.max_seq_len - len(context)
        if room <= 0:
            raise Rejected("too_long", f"sample {sample.sample_id}: prefix of {len(context)} tokens leaves "
                                       f"no room for data within max_seq_len={self.max_seq_len}")
        data = self.data_ids(sample)[:room]
        return ConditionedSample(
            sample=sample,
            critique=critique,
            input_ids=context + data,
            loss_mask=[0] * len(context) + [1] * len(data),
            num_feedback_tokens=num_feedback,
            feedback_leaked=leaked,
        )

    # -- inference --------------------------------------------------------------------------------

    @property
    def sampling_condition(self) -> str:
        """What a generator samples under: the positive feedback once the learner has named one
        (it is learned from the feedback trained on), no prefix before that."""
        return "positive" if self.inference else "none"

    def inference_ids(self, prompt: str, condition: str = "positive") -> list[int]:
        """Prompt token ids under a condition: "positive" (the default at inference), "negative",
        "unseen" (a positive paraphrase never trained on), or "none". A policy trained with mode
        "none" always gets no prefix."""
        label, critique = None, ""
        if condition != "none" and self._mode.text is not None:
            known = self.inference.conditions() if self.inference else {}
            if condition not in known:
                raise ValueError(f"no {condition!r} feedback recorded for this model (known: "
                                 f"{sorted(known) + ['none']}); it is learned from the feedback trained on")
            label, critique = known[condition]
        return self.context_ids(label, critique, prompt)[0]
