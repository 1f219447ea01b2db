"""The learner: `ixt serve learner [overrides]`.

parse config -> logging, threads, signals -> heavy imports (torch, DeepSpeed) -> train -> stop on
SIGTERM/SIGINT (the step in flight finishes; the learner exits cleanly).
"""

from __future__ import annotations

import logging
import sys

from ixt_stream.config import IxtConfig, load
from ixt_stream.services import prepare


def run(cfg: IxtConfig) -> int:
    stop = prepare(cfg, "learner", cfg.learner.threads)
    from ixt_stream.online import learner

    summary = learner.run(cfg, stop)
    logging.getLogger("ixt.learner").info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(run(load(sys.argv[1:])))
