"""batch.collate: the loss mask survives padding and packing exactly, grouping respects the token
budget, and packed rows waste little (the model-side check, packed loss = padded loss, is in
tests/integration/test_learner.py)."""

from __future__ import annotations

import random

import pytest
import torch

from ixt_stream.batch.collate import IGNORE, collate, pack, rows_for
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


# -- packed rows ----------------------------------------------------------------------------------


def _per_sample(batch, samples):
    """(ids, targets, positions) of each sample as laid out in a packed batch, in sample order."""
    out, b, at = [], 0, 0
    rows = rows_for([s.num_tokens for s in samples], batch.input_ids.shape[1])
    for row in rows:
        at = 0
        for i in row:
            n = samples[i].num_tokens
            out.append((i, batch.input_ids[b, at:at + n].tolist(), batch.targets[b, at:at + n].tolist(),
                        batch.position_ids[b, at:at + n].tolist()))
            at += n
        b += 1
    return [o[1:] for o in sorted(out)]


def test_packed_rows_hold_each_sample_whole_with_its_own_targets_and_positions(conditioned, tokenizer):
    pad = tokenizer.pad_token_id
    padded, packed = collate(conditioned, pad), collate(conditioned, pad, row_tokens=512)
    assert packed.input_ids.shape[0] == 1 and packed.num_tokens == padded.num_tokens  # all in one row here
    assert packed.num_loss_tokens == padded.num_loss_tokens
    assert packed.attention_mask.all() and packed.num_padded_tokens == packed.num_tokens  # no padding at all
    for (ids, targets, positions), s, b in zip(_per_sample(packed, conditioned), conditioned, range(4), strict=True):
        n = s.num_tokens
        assert ids == s.input_ids and positions == list(range(n))
        assert targets == padded.targets[b, :n].tolist()  # same targets; the last is IGNORE: none crosses
        assert targets[-1] == IGNORE


def test_rows_are_filled_evenly_and_never_overflow():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
        rows = rows_for(lengths, 300)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # each sample once
        assert all(sum(lengths[i] for i in r) <= 300 for r in rows) and all(r == sorted(r) for r in rows)
    with pytest.raises(ValueError, match="does not fit"):
        rows_for([10, 301], 300)


def test_packing_pads_at_most_5_percent_on_the_online_workload():
    """The CPU profile's online learner: groups of 16 samples of ~60-171 tokens (measured: 1,711 real
    tokens per step, 37% of the padded rows were padding), rows of 512 tokens."""
    rng = random.Random(0)
    real = padded_rows = packed_rows = 0
    for _ in range(100):
        group = [_fake(i, rng.randint(60, 171)) for i in range(16)]
        real += sum(s.num_tokens for s in group)
        padded_rows += collate(group, 0).num_padded_tokens
        packed_rows += collate(group, 0, row_tokens=512).num_padded_tokens
    assert 1 - real / packed_rows <= 0.05, 1 - real / packed_rows
    assert 1 - real / padded_rows > 0.2  # what it replaces


def test_packed_grouping_counts_real_tokens():
    samples = [_fake(i, n) for i, n in enumerate([100, 50, 200, 10, 140, 100])]
    groups = list(pack(samples, tokens_per_batch=300, max_samples=8, row_tokens=300))
    assert [[s.num_tokens for s in g] for g in groups] == [[100, 50], [200, 10], [140, 100]]
