"""update.ranks.shard: a step's group split across ranks by tokens, nothing lost or repeated."""

from __future__ import annotations

from ixt_stream.types import ConditionedSample, Sample
from ixt_stream.update.ranks import Ranks, shard


def _cs(sid: str, n: int) -> ConditionedSample:
    return ConditionedSample(Sample(sid, "p", "r"), None, input_ids=[1] * n, loss_mask=[1] * n, num_feedback_tokens=0)


def test_shares_are_token_balanced_and_keep_arrival_order():
    group = [_cs("a", 10), _cs("b", 100), _cs("c", 40), _cs("d", 50), _cs("e", 20)]
    shares = shard(group, 2)
    assert [[s.sample.sample_id for s in share] for share in shares] == [["a", "b"], ["c", "d", "e"]]
    assert sorted(s.sample.sample_id for share in shares for s in share) == list("abcde")
    loads = [sum(s.num_tokens for s in share) for share in shares]
    assert loads == [110, 110]


def test_fewer_samples_than_ranks_leaves_a_share_empty_and_one_rank_takes_all():
    group = [_cs("a", 5), _cs("b", 7)]
    assert [len(s) for s in shard(group, 3)] == [1, 1, 0]
    assert shard(group, 1) == [group]


def test_one_rank_needs_no_process_group():
    one = Ranks()
    assert one.is_root and one.broadcast("x") == "x" and one.scatter(["mine"]) == "mine"
