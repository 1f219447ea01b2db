"""`ixt serve <role> [overrides]`: run one role of the stack in the foreground.

Each role's deployable main lives under `services/<role>/main.py` and exposes `run(cfg)`; this
dispatcher gets the composed, validated config from the CLI and imports the role lazily, so
`ixt serve reward` never imports torch for the learner and vice versa.
"""

from __future__ import annotations

import importlib

from ixt_stream.config import IxtConfig

# role -> "module:function" taking the loaded IxtConfig and returning an exit code
ROLES: dict[str, str] = {
    "reward": "services.reward.main:run",
    "generator": "services.generator.main:run",
    "orchestrator": "services.orchestrator.main:run",
    "learner": "services.learner.main:run",
}


def main(cfg: IxtConfig, overrides: list[str], role: str) -> int:
    module, _, func = ROLES[role].partition(":")
    return int(getattr(importlib.import_module(module), func)(cfg) or 0)


def prepare(cfg, name: str, threads: int = 1):
    """Every threaded role's first lines: logging, its thread count, and SIGTERM/SIGINT -> a stop
    event (the role finishes the step in flight, then exits cleanly). Call before heavy imports."""
    import logging
    import os
    import signal
    import threading

    logging.basicConfig(level=cfg.run.log_level, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
