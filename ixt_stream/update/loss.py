"""The IXT loss: next-token cross-entropy on data tokens only. Pure torch, no DeepSpeed.

IXT needs nothing beyond supervised fine-tuning once the sequence is laid out: the feedback and
the prompt are context (their targets are IGNORE, see `batch.collate`), and the response (or
document) is learned *given* that feedback. The loss is therefore plain cross-entropy over the
positions that have a target.

Normalisation: the mean over all loss tokens in the step (sum of token losses / number of loss
tokens in the batch). Every data token weighs the same, whatever the length of its sample, so long
responses are not down-weighted as a per-sample mean would do. A learner step is exactly one batch
(no gradient accumulation), so "the batch" and "the step" are the same set of tokens.

Left out: KL to a reference model, importance weights for stale samples, and label smoothing:
IXT trains on every sample, conditioned on its feedback, rather than reweighting it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ixt_stream.batch.collate import IGNORE


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the positions whose target is not IGNORE.

    Args:
        logits: [B, T, V] next-token logits (any float dtype; computed in fp32 here).
        targets: [B, T] int64 target ids, IGNORE where a position gets no loss.

    Returns:
        (loss, stats): `loss` is a scalar that carries the graph (0 when no position has a
        target); stats are floats: `loss/mean` (the same value) and `loss/tokens`.
    """
    keep = targets != IGNORE
    num_tokens = int(keep.sum())
    # Selecting the kept positions first keeps the fp32 copy of the logits small.
    picked = logits[keep].float()
    total = F.cross_entropy(picked, targets[keep], reduction="sum")
    loss = total / max(num_tokens, 1)
    return loss, {"loss/mean": float(loss.detach()), "loss/tokens": float(num_tokens)}
