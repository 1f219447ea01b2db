"""Learner side of a weight version: write it where generators can fetch it, then announce it.

A version is announced twice: a `WeightVersion` frame on the weights PUB socket (generators apply
it between engine calls) and `run_dir/weights/LATEST` (JSON of the same fields). PUB delivers only
to subscribers connected at that moment, so a generator (re)started mid-run reads LATEST before it
produces anything (the first `apply.WeightApplier.poll`); the learner never re-announces.

How tensors travel is a `base.WeightWriter`, named by `stream.weight_transport` and built through
`registry.TRANSPORTS` (`filesystem`, `collective`, `shm`: one module each); its uri names the
file, the group or the segment, and LATEST / the announcement stay the same for all of them.
Left out: publishing from a background thread (the learner waits for the write).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from ixt_stream.config import StreamConfig
from ixt_stream.stream import sockets
from ixt_stream.types import WeightVersion
from ixt_stream.weights import registry
from ixt_stream.weights.base import LATEST, WeightWriter

log = logging.getLogger(__name__)


def write_latest(root: Path, wv: WeightVersion) -> None:
    tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(dataclasses.asdict(wv)))
    os.replace(tmp, root / LATEST)


class WeightPublisher:
    """Writes a version with its `WeightWriter`, records it in LATEST, announces it on PUB."""

    def __init__(self, writer: WeightWriter, announce: sockets.Sender, root: str | Path,
                 dtype: torch.dtype | None = None):
        self.writer, self.announce, self.root = writer, announce, Path(root)
        self.dtype = dtype
        """The dtype versions are published in (None = the learner's): ask the learner for it."""
        self.root.mkdir(parents=True, exist_ok=True)

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int, step: int,
                positive_critique: str = "") -> WeightVersion:
        """Make `state_dict` (name -> tensor, HF parameter names) version `version` everywhere,
        with the positive feedback generators condition on from now on."""
        t0 = time.perf_counter()
        uri, digest, num_bytes = self.writer.write(state_dict, version)
        wv = WeightVersion(version=version, step=step, uri=uri, digest=digest, num_bytes=num_bytes,
                           published_at=time.time(), transport=self.writer.transport,
                           positive_critique=positive_critique)
        write_latest(self.root, wv)
        self.announce.send(wv)
        log.info("published weights v%d (step %d, %.1f MB, %s) in %.2fs", version, step,
                 num_bytes / 1e6, wv.transport, time.perf_counter() - t0)
        return wv

    def close(self) -> None:
        self.announce.close()
        self.writer.close()


def publisher(cfg: StreamConfig, run_dir: str, run_id: str) -> WeightPublisher:
    """The learner's publisher for `cfg.weight_transport`; binds the weights PUB socket."""
    root = Path(run_dir) / "weights"
    dtype = getattr(torch, cfg.weight_dtype, None) if cfg.weight_dtype else None
    if cfg.weight_dtype and not isinstance(dtype, torch.dtype):
        raise ValueError(f"stream.weight_dtype={cfg.weight_dtype!r} is not a torch dtype")
    writer = registry.factory(cfg.weight_transport, 0)(cfg, root, run_id, dtype)
    return WeightPublisher(writer, sockets.sender(cfg, "weights", run_id), root, dtype)
