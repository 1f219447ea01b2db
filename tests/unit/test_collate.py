"""batch.collate: the loss mask survives padding exactly, and packing respects the token budget."""

from __future__ import annotations

import random

import pytest
import torch

from ixt_stream.batch.collate import IGNORE, collate, pack
from ixt_stream.condition.format import Conditioner
from ixt_stream.types import ConditionedSample, Critique, Label, Sample


@pytest.fixture(scope="module")
def conditioned(tokenizer) -> list[ConditionedSample]:
    """Chat samples with and without feedback, and a document: lengths all differ."""
    cond = Conditioner(tokenizer, mode="critique")
    rows = [
        (Sample("a", "What is 2 + 3?", "2 + 3 = 5. <answer>5</answer>"),
         Critique("a", "Correct and concise.", 1.0, Label.GOOD)),
        (Sample("b", "What is 9 - 4?", "It is 13. <answer>13</answer>"),
         Critique("b", "Subtracted the wrong way round; the answer is wrong.", 0.0, Label.BAD)),
        (Sample("c", "Say hi.", "hi"), None),
        (Sample("d", "", "A raw document with some words in it."),
         Critique("d", "Fluent.", 0.8, Label.GOOD)),
    ]
    return [cond.condition(s, c) for s, c in rows]


def test_targets_are_exactly_the_next_data_tokens(conditioned, tokenizer):
    pad = tokenizer.pad_token_id
    batch = collate(conditioned, pad_id=pad)
    width = max(s.num_tokens for s in conditioned)
    assert batch.input_ids.shape == batch.targets.shape == batch.attention_mask.shape == (4, width)
    for b, s in enumerate(conditioned):
        n = s.num_tokens
        assert batch.input_ids[b, :n].tolist() == s.input_ids
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (width - n)
        assert batch.input_ids[b, n:].eq(pad).all()
        expected = [s.input_ids[t + 1] if s.loss_mask[t + 1] else IGNORE for t in range(n - 1)]
        assert batch.targets[b].tolist() == expected + [IGNORE] * (width - n + 1)


def test_only_response_text_is_learned(conditioned, tokenizer):
    """Decoding the targets of each row gives back the response and its end marker, nothing else:
    no feedback, no prompt, no padding."""
    batch = collate(conditioned, pad_id=tokenizer.pad_token_id)
    for b, s in enumerate(conditioned):
        row = batch.targets[b]
        learned = tokenizer.decode(row[row != IGNORE].tolist())
        if s.sample.is_document:
            assert learned == s.sample.response + tokenizer.eos_token
        else:
            assert learned == s.sample.response + "<|im_end|>"
        assert "Feedback" not in learned
        assert not s.sample.prompt or s.sample.prompt not in learned
    assert batch.num_loss_tokens == sum(s.num_loss_tokens for s in conditioned)  # all have a prefix
    assert batch.num_tokens == sum(s.num_tokens for s in conditioned)
    assert batch.num_padded_tokens == 4 * batch.input_ids.shape[1]


def test_document_without_prefix_cannot_learn_its_first_token():
    s = ConditionedSample(Sample("d", "", "x"), None, [5, 6, 7], [1, 1, 1], 0)
    batch = collate([s], pad_id=0)
    assert batch.targets.tolist() == [[6, 7, IGNORE]]


def _fake(i: int, n: int) -> ConditionedSample:
    return ConditionedSample(Sample(str(i), "p", "r"), None, list(range(n)), [0] + [1] * (n - 1), 0)


def test_pack_respects_budget_cap_and_order():
    rng = random.Random(0)
    samples = [_fake(i, rng.randint(2, 100)) for i in range(200)]
    groups = list(pack(samples, tokens_per_batch=256, max_samples=5))
    assert [s for g in groups for s in g] == samples  # every sample once, in order
    for g, nxt in zip(groups, groups[1:] + [None], strict=True):
        longest = max(s.num_tokens for s in g)
        assert len(g) * longest <= 256 and len(g) <= 5
        if nxt is not None:  # greedy: the next sample would not have fitted
            first = nxt[0].num_tokens
            assert len(g) == 5 or (len(g) + 1) * max(longest, first) > 256


def test_pack_is_lazy_and_rejects_oversized():
    def stream():
        yield _fake(0, 10)
        yield _fake(1, 10)
        raise AssertionError("pack read past the group it needed")

    assert len(next(pack(stream(), tokens_per_batch=100, max_samples=1))) == 1
    with pytest.raises(ValueError, match="more than tokens_per_batch"):
        list(pack([_fake(0, 101)], tokens_per_batch=100, max_samples=4))


def test_collate_carries_weight_versions_and_moves():
    a, b = _fake(0, 3), _fake(1, 4)
    a.sample.weight_version, b.sample.weight_version = 2, 3
    batch = collate([a, b], pad_id=0).to("cpu")
    assert batch.weight_versions == [2, 3]
    assert batch.input_ids.dtype == torch.long
