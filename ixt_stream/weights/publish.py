"""Learner side of a weight version: write it where generators can fetch it, then announce it.

A version is announced twice: a `WeightVersion` frame on the weights PUB socket (generators apply
it between engine calls) and `run_dir/weights/LATEST` (JSON of the same fields). PUB delivers only
to subscribers connected at that moment, so a generator (re)started mid-run reads LATEST before it
produces anything (the first `apply.WeightApplier.poll`); the learner never re-announces.

How tensors travel is a `WeightWriter`, chosen by `stream.weight_transport`. `FilesystemWriter`
writes `run_dir/weights/v{N}/model.safetensors` into a temporary folder, hashes the file, and
renames the folder into place, so a reader sees a whole, hashed version or none; only the newest
`keep` versions stay on disk. `collective.CollectiveWriter` broadcasts over a process group (gloo
or NCCL) instead, `shm.ShmWriter` writes a shared-memory segment on this node; their uri names the
group or the segment, and LATEST / the announcement stay the same.
Left out: publishing from a background thread (the learner waits for the write), and fsync (a
version lost to a power cut is simply re-published by the next sync).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import blake3
import torch

from ixt_stream.config import StreamConfig
from ixt_stream.stream import sockets
from ixt_stream.types import WeightVersion
from ixt_stream.weights.base import payload_tensors

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
LATEST = "LATEST"


class WeightWriter(Protocol):
    """Moves one version's tensors toward the generators."""

    transport: str

    def write(self, state_dict: Mapping[str, torch.Tensor], version: int) -> tuple[str, str, int]:
        """Returns (uri, BLAKE3 hex of the payload, payload bytes)."""
        ...

    def close(self) -> None: ...


class FilesystemWriter:
    """Writes `root/v{N}/model.safetensors` atomically and keeps the newest `keep` versions.

    Args:
        root: the weights folder (`run_dir/weights`), shared with the generators.
        keep: versions kept on disk; older folders are deleted after each write.
        dtype: cast tensors to this dtype before writing (None = keep the learner's dtype).
    """

    transport = "filesystem"

    def __init__(self, root: str | Path, keep: int = 3, dtype: torch.dtype | None = None):
        self.root, self.keep, self.dtype = Path(root).resolve(), keep, dtype
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, state_dict: Mapping[str, torch.Tensor], version: int) -> tuple[str, str, int]:
        from safetensors.torch import save_file

        final, tmp = self.root / f"v{version}", self.root / f".v{version}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # Writing straight to the file and hashing it back (from the page cache) is ~2x faster
        # than serializing to bytes first, and holds no second copy of the weights in memory.
        save_file(payload_tensors(state_dict, self.dtype), tmp / WEIGHTS_FILE, metadata={"version": str(version)})
        digest = blake3.blake3().update_mmap(tmp / WEIGHTS_FILE).hexdigest()
        num_bytes = (tmp / WEIGHTS_FILE).stat().st_size
        if final.exists():  # a restarted learner re-publishing this version number
            shutil.rmtree(final)
        tmp.rename(final)
        self._prune()
        return str(final), digest, num_bytes

    def close(self) -> None:
        pass

    def _prune(self) -> None:
        versions = sorted(int(p.name[1:]) for p in self.root.glob("v*") if p.name[1:].isdigit())
        for v in versions[: -self.keep]:
            shutil.rmtree(self.root / f"v{v}", ignore_errors=True)


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
    if cfg.weight_transport == "collective":
        from ixt_stream.weights.collective import CollectiveWriter

        writer = CollectiveWriter(cfg.collective_host or cfg.host, cfg.collective_port, cfg.collective_timeout_s,
                                  cfg.collective_backend, dtype)
    elif cfg.weight_transport == "shm":
        from ixt_stream.weights.shm import ShmWriter, run_tag

        writer = ShmWriter(run_tag(run_id, root), dtype)
    else:
        writer = FilesystemWriter(root, keep=cfg.keep_weight_versions, dtype=dtype)
    return WeightPublisher(writer, sockets.sender(cfg, "weights", run_id), root, dtype)
