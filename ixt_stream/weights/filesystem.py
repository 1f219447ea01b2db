"""The filesystem transport (`stream.weight_transport=filesystem`, the default): safetensors files in
a folder the learner and the generators share. Both ends.

`FilesystemWriter` (learner) writes `run_dir/weights/v{N}/model.safetensors` into a temporary
folder, hashes the file (BLAKE3), and renames the folder into place, so a reader sees a whole,
hashed version or none; only the newest `keep` versions (`stream.filesystem.keep_versions`) stay
on disk. `FilesystemReader` (generator) reads the file, checks its size and digest against the
announcement, and only then parses it, so nothing re-reads the file after the check.
Left out: fsync (a version lost to a power cut is simply re-published by the next sync).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import blake3
import torch

from ixt_stream.config import StreamConfig
from ixt_stream.types import WeightVersion
from ixt_stream.weights.base import WeightRefused, payload_tensors

WEIGHTS_FILE = "model.safetensors"


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


class FilesystemReader:
    """Reads `<uri>/model.safetensors` under `root`, checking size and BLAKE3 digest before parsing."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def read(self, wv: WeightVersion) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        path = Path(wv.uri).resolve() / WEIGHTS_FILE
        if not path.is_relative_to(self.root):
            raise WeightRefused("outside_root", f"{path} is not under {self.root}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise WeightRefused("missing", str(e)) from e
        if len(data) != wv.num_bytes:
            raise WeightRefused("truncated", f"{path}: {len(data)} bytes, announced {wv.num_bytes}")
        digest = blake3.blake3(data).hexdigest()
        if digest != wv.digest:
            raise WeightRefused("digest_mismatch", f"{path}: digest {digest}, announced {wv.digest}")
        try:
            return load(data)
        except Exception as e:  # safetensors raises its own error types on a corrupt header
            raise WeightRefused("unreadable", f"{path}: {e}") from e

    def close(self) -> None:
        pass


def writer(cfg: StreamConfig, root: Path, run_id: str, dtype: torch.dtype | None) -> FilesystemWriter:
    return FilesystemWriter(root, keep=cfg.filesystem.keep_versions, dtype=dtype)


def reader(cfg: StreamConfig, root: Path, run_id: str, generator_id: str) -> FilesystemReader:
    return FilesystemReader(root)
