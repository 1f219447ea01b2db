"""The single place where wire data becomes tensors: token-budget packing and padding.

`pack` groups ConditionedSamples greedily, in arrival order, into batches whose *padded* size
(samples x longest sample) fits `tokens_per_batch` and whose sample count fits `max_samples`.
`collate` turns one such group into right-padded tensors with next-token targets already
shifted, so the loss never needs to know about shifting or masks:

    input_ids[b, t]  = token t of sample b, or pad_id past its end
    targets[b, t]    = input_ids[b, t + 1] if token t + 1 is a data token (loss_mask 1), else IGNORE

Feedback, prompt and padding tokens therefore never carry a target. A data token at position 0
(a document with no feedback prefix) has nothing to be predicted from and gets no loss either.

Left out: sequence packing several samples into one row (needs per-sample attention masks and
position ids; padding waste is small at these lengths) and length-sorting (it would bias which
samples share a step; callers shuffle instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ixt_stream.types import ConditionedSample

IGNORE = -100
"""Target of a position that gets no loss (matches torch's cross_entropy default)."""


@dataclass
class TensorBatch:
    """One optimizer step of samples as right-padded tensors (B samples, T = longest sample).

    Attributes:
        input_ids: [B, T] int64, padded with the tokenizer's pad id.
        attention_mask: [B, T] int64, 1 on real tokens, 0 on padding.
        targets: [B, T] int64, the next data token, or IGNORE; the last column is always IGNORE.
        weight_versions: [B] the policy version that produced each sample (for staleness logs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    weight_versions: list[int]

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens: what throughput counts."""
        return int(self.attention_mask.sum())

    @property
    def num_padded_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def num_loss_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device | str) -> TensorBatch:
        return TensorBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.targets.to(device), self.weight_versions)


def pack(
    samples: Iterable[ConditionedSample], tokens_per_batch: int, max_samples: int
) -> Iterator[list[ConditionedSample]]:
    """Group samples greedily, in order, so each group's padded size fits the budget.

    A group closes when the next sample would make `len(group) * longest` exceed
    `tokens_per_batch` or the group exceed `max_samples`. Works on a stream: a group is yielded as
    soon as it is closed. A sample longer than the budget raises ValueError (config validation
    keeps `tokens_per_batch >= condition.max_seq_len`, so this means a bug upstream).
    """
    group: list[ConditionedSample] = []
    longest = 0
    for s in samples:
        if s.num_tokens > tokens_per_batch:
            raise ValueError(f"sample {s.sample.sample_id} has {s.num_tokens} tokens, more than "
                             f"tokens_per_batch={tokens_per_batch}")
        grown = max(longest, s.num_tokens)
        if group and (len(group) + 1 > max_samples or (len(group) + 1) * grown > tokens_per_batch):
            yield group
            group, grown = [], s.num_tokens
        group.append(s)
        longest = grown
    if group:
        yield group


def collate(samples: list[ConditionedSample], pad_id: int) -> TensorBatch:
    """Right-pad one group into a TensorBatch (shapes in its docstring)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    width = max(s.num_tokens for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    targets = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for b, s in enumerate(samples):
        ids = torch.tensor(s.input_ids, dtype=torch.long)
        n = len(ids)
        input_ids[b, :n] = ids
        attention_mask[b, :n] = 1
        is_data = torch.tensor(s.loss_mask[1:], dtype=torch.bool)
        targets[b, : n - 1] = torch.where(is_data, ids[1:], IGNORE)
    return TensorBatch(input_ids, attention_mask, targets, [s.sample.weight_version for s in samples])
