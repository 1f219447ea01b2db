"""The orchestrator (critique stage): `ixt serve orchestrator [overrides]`.

parse config -> logging -> run the critique stage under uvloop -> stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from ixt_stream.config import IxtConfig, load


def run(cfg: IxtConfig) -> int:
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s orchestrator %(levelname)s %(name)s: %(message)s")
    import uvloop

    from ixt_stream.online import orchestrator

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        counts = await orchestrator.run(cfg, stop)
        logging.getLogger("ixt.orchestrator").info("stopped: %s", counts)

    uvloop.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(run(load(sys.argv[1:])))
