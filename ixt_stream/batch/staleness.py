"""The off-policy bound, as one pure rule used where work is cancelled early (the orchestrator,
before paying for a critique) and where the bound is enforced (the learner, before a step).

A sample produced by weight version `v` may be trained while the newest published version is at
most `v + max_lag`. Versions only grow, so a sample stale now stays stale: the orchestrator, which
knows the newest version from the learner's announcements, can drop it before its critique.
Left out: importance weights for slightly stale samples (IXT trains each sample as it is).
"""

from __future__ import annotations


def min_fresh_version(version: int, max_lag: int) -> int:
    """The oldest sample version still trainable while `version` is the newest published one."""
    return version - max_lag


def is_stale(sample_version: int, version: int, max_lag: int) -> bool:
    """True when a sample of `sample_version` must not be trained once `version` is published."""
    return sample_version < min_fresh_version(version, max_lag)
