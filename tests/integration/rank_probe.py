"""`python -m tests.integration.rank_probe <ixt args>`: the `ixt` command line, recording what this
process opened: every ZeroMQ socket (its type) and every SQLite connection (its path), written at
exit to `$IXT_PROBE_DIR/rank-$RANK.json`. The multi-rank learner test reads them to check that only
rank 0 touches the stream and the ledger."""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import sys
from pathlib import Path

import zmq

opened: dict[str, list] = {"zmq_sockets": [], "sqlite": []}


def _record_socket(original):
    def socket(self, socket_type, *args, **kwargs):
        opened["zmq_sockets"].append(int(socket_type))
        return original(self, socket_type, *args, **kwargs)
    return socket


def _record_connect(original):
    def connect(database, *args, **kwargs):
        opened["sqlite"].append(str(database))
        return original(database, *args, **kwargs)
    return connect


def _write() -> None:
    out = Path(os.environ["IXT_PROBE_DIR"]) / f"rank-{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps(opened))


if __name__ == "__main__":
    zmq.Context.socket = _record_socket(zmq.Context.socket)
    sqlite3.connect = _record_connect(sqlite3.connect)
    atexit.register(_write)
    from ixt_stream.cli import main

    sys.exit(main(sys.argv[1:]))
