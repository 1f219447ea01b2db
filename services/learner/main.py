"""The learner: `ixt serve learner [overrides]`.

parse config -> logging -> threads -> heavy imports (torch, DeepSpeed) -> train -> stop on
SIGTERM/SIGINT (the step in flight finishes; the learner exits cleanly).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ixt_stream.config import IxtConfig, load


def run(cfg: IxtConfig) -> int:
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s learner %(levelname)s %(name)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(cfg.learner.threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from ixt_stream.online import learner

    summary = learner.run(cfg, stop)
    logging.getLogger("ixt.learner").info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(run(load(sys.argv[1:])))
