"""The single place where wire data becomes tensors: token-budget groups, then rows of tokens.

`pack` groups ConditionedSamples greedily, in arrival order, into batches whose size fits
`tokens_per_batch` and whose sample count fits `max_samples`. The size is the *padded* one
(samples x longest sample) for padded rows, and the real token count for packed rows.
`collate` turns one such group into tensors with next-token targets already shifted, so the loss
never needs to know about shifting or masks. Two layouts:

- padded (`row_tokens=0`): one sample per row, right-padded to the longest;
- packed (`row_tokens>0`): several samples per row, rows of at most `row_tokens`, laid out
  (`rows_for`) so rows end close together and padding is a few percent. `position_ids` restart
  at 0 for each sample; the model, given position ids, no attention mask and no KV cache
  (`use_cache=False`: with a cache transformers 5.19 skips this), attends only within each
  sample (`masking_utils.find_packed_sequence_indices` builds the block-diagonal causal mask),
  so samples never see each other and the loss equals the padded layout's.

In both, per sample:

    input_ids[b, t]  = token t of the sample, or pad_id past the row's samples
    targets[b, t]    = the sample's next token if it is a data token (loss_mask 1), else IGNORE

Feedback, prompt and padding tokens therefore never carry a target, and no target crosses from
one sample into the next. A data token at a sample's position 0 (a document with no feedback
prefix) has nothing to be predicted from and gets no loss either.

Left out: splitting a sample across rows (every sample fits a row: config validation keeps
`row_tokens >= condition.max_seq_len`), and length-sorting across groups (it would bias which
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
    """One optimizer step of samples as tensors (B rows, T = longest row).

    Attributes:
        input_ids: [B, T] int64, padded with the tokenizer's pad id.
        attention_mask: [B, T] int64, 1 on real tokens, 0 on padding.
        targets: [B, T] int64, the next data token of the same sample, or IGNORE.
        weight_versions: the policy version that produced each sample (for staleness logs).
        position_ids: [B, T] int64 restarting at 0 for each sample in packed rows; None for padded
            rows (one sample per row). When set, pass it to the model *instead of* attention_mask.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    weight_versions: list[int]
    position_ids: torch.Tensor | None = None

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

    @property
    def num_samples(self) -> int:
        return len(self.weight_versions)

    def to(self, device: torch.device | str) -> TensorBatch:
        return TensorBatch(self.input_ids.to(device), self.attention_mask.to(device), self.targets.to(device),
                           self.weight_versions, None if self.position_ids is None else self.position_ids.to(device))


def pack(
    samples: Iterable[ConditionedSample], tokens_per_batch: int, max_samples: int, row_tokens: int = 0
) -> Iterator[list[ConditionedSample]]:
    """Group samples greedily, in order, so each group's size fits the budget.

    A group closes when the next sample would make its size exceed `tokens_per_batch` (padded
    rows, `row_tokens=0`: `len(group) * longest`; packed rows: the sum of token counts) or the
    group exceed `max_samples`. Works on a stream: a group is yielded as soon as it is closed. A
    sample longer than the budget raises ValueError (config validation keeps
    `tokens_per_batch >= condition.max_seq_len`, so this means a bug upstream).
    """
    group: list[ConditionedSample] = []
    longest = total = 0
    for s in samples:
        if s.num_tokens > tokens_per_batch:
            raise ValueError(f"sample {s.sample.sample_id} has {s.num_tokens} tokens, more than "
                             f"tokens_per_batch={tokens_per_batch}")
        grown = max(longest, s.num_tokens)
        size = total + s.num_tokens if row_tokens else (len(group) + 1) * grown
        if group and (len(group) + 1 > max_samples or size > tokens_per_batch):
            yield group
            group, grown, total = [], s.num_tokens, 0
        group.append(s)
        longest, total = grown, total + s.num_tokens
    if group:
        yield group


def _first_fit(order: list[int], lengths: list[int], width: int) -> list[list[int]]:
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        j = next((j for j, load in enumerate(loads) if load + lengths[i] <= width), len(rows))
        if j == len(rows):
            rows.append([])
            loads.append(0)
        rows[j].append(i)
        loads[j] += lengths[i]
    return rows


def rows_for(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Sample indices per row, at most `row_tokens` per row, laid out so that rows x longest row
    (the tensor's size) is smallest: first-fit decreasing into rows of each width from the longest
    sample up to `row_tokens` (steps of 8), the narrowest of the best kept; arrival order kept
    within a row."""
    if max(lengths) > row_tokens:
        raise ValueError(f"a {max(lengths)}-token sample does not fit a {row_tokens}-token row")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best, best_size = None, None
    for width in [*range(max(lengths), row_tokens, 8), row_tokens]:
        rows = _first_fit(order, lengths, width)
        size = len(rows) * max(sum(lengths[i] for i in r) for r in rows)
        if best_size is None or size < best_size:
            best, best_size = rows, size
    return [sorted(r) for r in best]


def _targets(s: ConditionedSample, ids: torch.Tensor) -> torch.Tensor:
    """[n] the sample's next data token per position, IGNORE elsewhere (and at its last token)."""
    out = torch.full((len(ids),), IGNORE, dtype=torch.long)
    out[:-1] = torch.where(torch.tensor(s.loss_mask[1:], dtype=torch.bool), ids[1:], IGNORE)
    return out


def collate(samples: list[ConditionedSample], pad_id: int, row_tokens: int = 0) -> TensorBatch:
    """One group as a TensorBatch (shapes in its docstring): padded rows, or packed rows of at
    most `row_tokens` tokens."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    rows = rows_for([s.num_tokens for s in samples], row_tokens) if row_tokens else [[i] for i in range(len(samples))]
    width = max(sum(samples[i].num_tokens for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long) if row_tokens else None
    for b, row in enumerate(rows):
        at = 0
        for i in row:
            ids = torch.tensor(samples[i].input_ids, dtype=torch.long)
            n = len(ids)
            input_ids[b, at:at + n] = ids
            attention_mask[b, at:at + n] = 1
            targets[b, at:at + n] = _targets(samples[i], ids)
            if position_ids is not None:
                position_ids[b, at:at + n] = torch.arange(n)
            at += n
        if position_ids is not None:  # the padding tail: a segment of its own, attended by no sample
            position_ids[b, at:] = torch.arange(width - at)
    versions = [samples[i].sample.weight_version for row in rows for i in row]
    return TensorBatch(input_ids, attention_mask, targets, versions, position_ids)
