"""The processes of the online stack, in one ordered table: `ixt serve <role>`, `ixt up` (the
supervisor starts them in this order: the ends that bind sockets first) and the default of
`run.roles` all read `ROLES`.

Each role's entry point and loop live in one module; the entry point is `main(cfg) -> exit code`
and has one shape: logging, threads and signals (`prepare`) -> heavy imports -> build -> run ->
clean up. A new role is its module plus one line here (and its messages in `protos/ixt/v1`).
Imports nothing heavy: the table is read by the config and the CLI before any role is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ixt_stream import lazy

if TYPE_CHECKING:
    from ixt_stream.config import IxtConfig

ROLES: dict[str, str] = {
    "reward": "ixt_stream.critique.server:main",
    "learner": "ixt_stream.online.learner:main",
    "orchestrator": "ixt_stream.online.orchestrator:main",
    "generator": "ixt_stream.online.generator:main",
}
"""role -> "module:function" taking the loaded IxtConfig and returning an exit code; start order."""


def serve(cfg: IxtConfig, overrides: list[str], role: str) -> int:
    """`ixt serve <role> [overrides]`: run one role in the foreground. The role's module is imported
    here, so `ixt serve reward` never imports torch for the learner and vice versa."""
    return int(lazy.resolve(ROLES[role])(cfg) or 0)


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
