"""A generator of the pool: `ixt serve generator generator.index=I [overrides]`.

parse config -> logging, threads, signals -> heavy imports (vLLM) -> generate -> stop on
SIGTERM/SIGINT after the engine call in flight.
"""

from __future__ import annotations

import sys

from ixt_stream.config import IxtConfig, load
from ixt_stream.services import prepare


def run(cfg: IxtConfig) -> int:
    stop = prepare(cfg, f"generator-{cfg.generator.index}", cfg.generator.threads)
    from ixt_stream.online import generator

    generator.run(cfg, stop)
    return 0


if __name__ == "__main__":
    sys.exit(run(load(sys.argv[1:])))
