"""update.loss: cross-entropy over data tokens only, normalised over all loss tokens of the step."""

from __future__ import annotations

import math

import torch

from ixt_stream.batch.collate import IGNORE
from ixt_stream.update.loss import token_loss


def _case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    # sample 0 has one loss token, sample 1 has three: token mean != mean of sample means
    targets = torch.tensor([[IGNORE, IGNORE, 3, IGNORE, IGNORE], [IGNORE, 7, 0, 10, IGNORE]])
    return logits, targets


def test_loss_equals_manual_token_mean():
    logits, targets = _case()
    loss, stats = token_loss(logits, targets)
    loss = loss.detach()
    logp = torch.log_softmax(logits.detach().double(), dim=-1)
    terms = [-logp[b, t, targets[b, t]] for b in range(2) for t in range(5) if targets[b, t] != IGNORE]
    manual = float(sum(terms) / len(terms))
    assert math.isclose(float(loss), manual, rel_tol=1e-6)
    assert stats == {"loss/mean": float(loss), "loss/tokens": 4.0}
    per_sample = (float(terms[0]) + float(sum(terms[1:]) / 3)) / 2
    assert not math.isclose(float(loss), per_sample, rel_tol=1e-3)


def test_ignored_positions_get_no_gradient():
    logits, targets = _case()
    loss, _ = token_loss(logits, targets)
    loss.backward()
    keep = targets != IGNORE
    assert logits.grad[~keep].abs().sum() == 0
    assert (logits.grad[keep].abs().sum(-1) > 0).all()


def test_bf16_logits_are_scored_in_fp32():
    logits, targets = _case()
    lowp = logits.detach().bfloat16()
    loss, _ = token_loss(lowp, targets)
    ref, _ = token_loss(lowp.float(), targets)
    assert loss.dtype == torch.float32 and float(loss) == float(ref)


def test_no_loss_tokens_gives_zero_not_nan():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    loss, stats = token_loss(logits, torch.full((1, 3), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and stats["loss/tokens"] == 0.0
    assert logits.grad.abs().sum() == 0
