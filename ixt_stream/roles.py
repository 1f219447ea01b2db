"""The processes of the online stack, in one ordered table: `ixt serve <role>`, `ixt up` (the
supervisor starts them in this order: the ends that bind sockets first) and the default of
`run.roles` all read `ROLES`.

Each role's entry point and loop live in one module; the entry point is `main(cfg) -> exit code`
and has one shape: logging, threads and signals (`prepare`) -> heavy imports -> build -> run ->
clean up. Its line here also names the config sections it reads, and `serve` hands it only those
(`sections`): a role's config dependencies are its line, and reading another section fails at
once. A new role is its module plus one line here (and its messages in `protos/ixt/v1`).
Imports nothing heavy: the table is read by the config and the CLI before any role is chosen.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ixt_stream import lazy

if TYPE_CHECKING:
    from ixt_stream.config import IxtConfig


@dataclasses.dataclass(frozen=True)
class Role:
    entry: str
    """"module:function" taking the role's sections and returning an exit code."""
    sections: tuple[str, ...]
    """The `IxtConfig` sections the role reads; it is handed only these."""


ROLES: dict[str, Role] = {
    "reward": Role("ixt_stream.critique.server:main", ("run", "model", "task", "reward")),
    "learner": Role("ixt_stream.online.learner:main",
                    ("run", "metrics", "model", "condition", "learner", "stream")),
    "orchestrator": Role("ixt_stream.online.orchestrator:main",
                         ("run", "metrics", "model", "condition", "client", "stream")),
    "generator": Role("ixt_stream.online.generator:main",
                      ("run", "metrics", "model", "task", "condition", "generator", "stream")),
}
"""role -> its entry point and config sections; start order."""


def sections(cfg: IxtConfig, role: str):
    """`cfg` cut to the sections `role` declares: a frozen dataclass with those fields only, so
    reading any other section is an AttributeError naming it."""
    names = ROLES[role].sections
    view = dataclasses.make_dataclass(f"{role.capitalize()}Sections",
                                      [(n, type(getattr(cfg, n))) for n in names], frozen=True)
    return view(**{n: getattr(cfg, n) for n in names})


def serve(cfg: IxtConfig, overrides: list[str], role: str) -> int:
    """`ixt serve <role> [overrides]`: run one role in the foreground, handed only its sections. The
    role's module is imported here, so `ixt serve reward` never imports torch for the learner and
    vice versa."""
    return int(lazy.resolve(ROLES[role].entry)(sections(cfg, role)) or 0)


def prepare(cfg: IxtConfig, name: str, threads: int = 1):
    """A threaded role's first lines: logging, its thread count, and SIGTERM/SIGINT -> a stop event
    (the role finishes the step in flight, then exits cleanly). Call before heavy imports."""
    import os
    import signal
    import threading

    from ixt_stream import logs

    logs.setup(cfg.run.log_level, name)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
