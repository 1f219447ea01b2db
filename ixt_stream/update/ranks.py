"""The learner's ranks: who is rank 0, how one step's batch is split, and rank 0's word to all.

A learner with `learner.num_gpus > 1` is N processes (torchrun, one per GPU; gloo processes on a
CPU) training one model under DeepSpeed data parallelism (ZeRO-0/1/2/3). Rank 0 alone reads the
stream, writes the ledger and publishes weights; every step it sends each rank its share of the
group (`shard`: token-balanced, longest first onto the least-loaded rank) together with the
decisions every rank must agree on (stop or train, the weight version). One `scatter` per step:
each rank receives only its own samples. The other ranks never open a socket or the ledger.

With one rank every call here is local and free (no process group is touched).
Left out: sequence parallelism (a sample is never split across ranks) and pipeline stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ixt_stream.types import ConditionedSample


def shard(group: list[ConditionedSample], world: int) -> list[list[ConditionedSample]]:
    """`group` split into `world` shares of about equal token counts (longest first, each onto the
    least-loaded rank; ties to the lowest rank), arrival order kept within a share. A share may be
    empty when the group has fewer samples than ranks."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(group)), key=lambda i: -group[i].num_tokens):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += group[i].num_tokens
        shares[r].append(i)
    return [[group[i] for i in sorted(share)] for share in shares]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the learner's ranks (read from torch.distributed once DeepSpeed
    has formed the group)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        import torch.distributed as dist

        if not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a collective: every rank calls it; others pass None)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def scatter(self, objs: list[Any] | None) -> Any:
        """Rank r receives `objs[r]` of rank 0 (a collective; other ranks pass None)."""
        if self.world == 1:
            return objs[0]
        import torch.distributed as dist

        out = [None]
        dist.scatter_object_list(out, objs if self.is_root else None, src=0)
        return out[0]
