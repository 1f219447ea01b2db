"""One logging setup for every command and role: `<time> <process> <LEVEL> <logger>: <message>`.

The process name (`reward`, `generator-1`, `annotate`, ...) is in every line, so the logs of a run's
processes can be merged and still read. Left out: structured (JSON) logs and log rotation.
"""

from __future__ import annotations

import logging


def setup(level: str | int, name: str) -> None:
    """Configure the root logger once per process (a no-op when it already has handlers)."""
    logging.basicConfig(level=level, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
