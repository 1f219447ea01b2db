"""batch.staleness: the off-policy bound shared by the orchestrator and the learner."""

from __future__ import annotations

from ixt_stream.batch.staleness import is_stale, min_fresh_version


def test_min_fresh_version_is_the_newest_less_the_lag():
    assert min_fresh_version(10, 2) == 8
    assert min_fresh_version(0, 2) == -2  # before any publish, nothing is stale
    assert min_fresh_version(5, 0) == 5


def test_a_sample_is_stale_beyond_the_lag_and_never_fresh_again():
    assert not is_stale(8, 10, 2) and is_stale(7, 10, 2)
    assert not is_stale(5, 5, 0) and is_stale(4, 5, 0)
    assert not is_stale(0, 0, 0)
    for lag in range(4):  # versions only grow: once stale, stale for every later version
        for v in range(10):
            stale = [is_stale(3, now, lag) for now in range(v, v + 6)]
            assert stale == sorted(stale)
