"""Generator side of a weight version: hear the announcement, verify the payload, swap it in.

Mirrors `publish.py`: a `base.WeightReader` of the transport `stream.weight_transport` names
(`registry.TRANSPORTS`; `filesystem.FilesystemReader` reads what `FilesystemWriter` wrote) behind
a `WeightApplier` that the generator calls between engine calls. Announcements are drained and
only the newest pending version is kept: a generator that fell two versions behind jumps straight
to the latest. Its first poll also reads `run_dir/weights/LATEST`, because PUB does not replay
announcements made before it connected.

Every reader checks the payload's size and digest against the announcement before it hands a
tensor over; a missing, truncated, mismatched or unreadable payload is refused (logged, counted by
reason in `WeightApplier.refused` and prometheus) and the engine keeps its current weights. The
verified tensors themselves go to `Engine.reload_weights(state_dict=...)`, so nothing re-reads the
payload after the check.
Left out: retrying a refused version (the next one supersedes it).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter as PromCounter

from ixt_stream.config import StreamConfig
from ixt_stream.stream import sockets
from ixt_stream.types import WeightAck, WeightVersion
from ixt_stream.weights import registry
from ixt_stream.weights.base import LATEST, WeightReader, WeightRefused

log = logging.getLogger(__name__)

WEIGHTS_REFUSED = PromCounter("ixt_weights_refused", "Weight versions refused by a generator", ["reason"])


class Reloadable(Protocol):
    """What the applier needs of an engine (`sample.engine.Engine`, or a fake in tests)."""

    def reload_weights(self, weights_path: str | None = None, state_dict: dict | None = None) -> float: ...


class WeightApplier:
    """Tracks the version this generator serves and applies newer announced ones.

    Args:
        reader: the transport's reader.
        announcements: the weights SUB receiver.
        root: the weights folder holding LATEST (`run_dir/weights`).
        generator_id: stamped on acks.
    """

    def __init__(self, reader: WeightReader, announcements: sockets.Receiver, root: str | Path,
                 generator_id: str):
        self.reader, self.announcements = reader, announcements
        self.root, self.generator_id = Path(root), generator_id
        self.version = 0
        """The version the engine serves; 0 = the initial model, before any publish."""
        self.refused: Counter[str] = Counter()
        self._polled = False

    def _recorded(self) -> WeightVersion | None:
        try:
            return WeightVersion(**json.loads((self.root / LATEST).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:  # written atomically, so only a foreign hand gets here
            log.error("%s: ignoring unreadable %s: %s", self.generator_id, self.root / LATEST, e)
            return None

    def poll(self) -> WeightVersion | None:
        """The newest announced version newer than the one served; older pending ones are dropped.

        The first call also considers LATEST: PUB does not replay what was announced before this
        generator subscribed (the SUB socket connects in the constructor, before LATEST is read).
        """
        found = self.announcements.drain()
        if not self._polled:
            self._polled = True
            found.append(self._recorded())
        newer = [wv for wv in found if wv is not None and wv.version > self.version]
        return max(newer, key=lambda wv: wv.version, default=None)

    def apply(self, wv: WeightVersion, engine: Reloadable) -> WeightAck | None:
        """Verify and swap in `wv`; the ack to send, or None if it was refused."""
        t0 = time.perf_counter()
        try:
            state_dict = self.reader.read(wv)
        except WeightRefused as e:
            self.refused[e.reason] += 1
            WEIGHTS_REFUSED.labels(e.reason).inc()
            log.error("%s: refused weights v%d (%s): %s", self.generator_id, wv.version, e.reason, e.detail)
            return None
        read_s = time.perf_counter() - t0
        reload_s = engine.reload_weights(state_dict=state_dict)
        self.version = wv.version
        seconds = time.perf_counter() - t0
        log.info("%s: applied weights v%d (step %d) in %.2fs (read+verify %.2fs, reload %.2fs)",
                 self.generator_id, wv.version, wv.step, seconds, read_s, reload_s)
        return WeightAck(generator_id=self.generator_id, version=wv.version, applied_at=time.time(),
                         apply_seconds=seconds)

    def close(self) -> None:
        self.announcements.close()
        self.reader.close()


def applier(cfg: StreamConfig, run_dir: str, run_id: str, generator_id: str) -> WeightApplier:
    """A generator's applier for `cfg.weight_transport`; connects the weights SUB socket."""
    root = Path(run_dir) / "weights"
    reader = registry.factory(cfg.weight_transport, 1)(cfg, root, run_id, generator_id)
    return WeightApplier(reader, sockets.receiver(cfg, "weights", run_id), root, generator_id)
