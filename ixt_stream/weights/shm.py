"""Weight versions through shared memory, for generators on the learner's node. Both ends.

`stream.weight_transport=shm`: `ShmWriter` (learner, a `base.WeightWriter`) casts each tensor
straight into a `/dev/shm` segment, one per version, hashing each chunk while it is still in
cache; `ShmReader` (generator, a `base.WeightReader`) maps the segment, checks size and digest
against the announcement, and hands the engine views into the mapping: no file on disk, no
serialisation, no copy between the segment and `reload_weights`. Announcements, LATEST and acks
are those of every transport (`publish` / `apply`); chosen by `registry.TRANSPORTS`.

Segment: `/dev/shm/ixt-<run tag>-<writer pid>-v<version>`, written under a dot-prefixed temporary
name and renamed into place, so a reader sees a whole version or none. Bytes: an 8-byte little-
endian header length, the JSON header (`base.layout`), zeros up to a multiple of `base.ALIGN`,
then the payload. The digest covers every byte of the segment; `num_bytes` is its size. It is
XXH3-128, not the BLAKE3 of the other transports: it guards against a torn, stale or foreign
segment on this node (segments are mode 0600, and whoever can write them can write LATEST too),
not against a forger on the network, and on this CPU it hashes 270 MB in ~0.03 s against
BLAKE3's ~0.15 s, which alone would be the whole floor of a push (see bench/weights.py).

Lifetime. The writer keeps the newest `KEEP` segments (double-buffered: the one generators serve
and the next) and writes each version over the oldest, whose tmpfs pages are already allocated
(a fresh segment costs ~4x as much to fill). A reader holds a shared `flock` on a segment for as
long as it maps it; the writer recycles only a segment it can lock exclusively, and otherwise
unlinks it and starts a fresh one, leaving the pages to the reader (POSIX keeps them while mapped).
A reader that opens a segment being rewritten is refused (`superseded`) or, had it raced the
lock, caught by the digest. A clean `close` unlinks every segment of the writer. After a kill -9
the run tag and pid in the name let the others clean up: a starting writer and a closing reader
unlink the segments (and temporaries) of this run whose writer process is gone. A killed reader
leaks nothing: its mappings and locks go with it.

Left out: generators on other nodes (use `filesystem` or `collective`); GPU generators (the views
are CPU memory; vLLM copies them to the device in `reload_weights`); detecting a reused pid of a
dead writer (its segments then wait for the next start or close); a generator started after a
restarted learner swept the old segments and before its first publish (LATEST names a swept
segment: refused as `missing`; it serves its initial weights until that publish, as with
`collective`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
import xxhash

from ixt_stream.config import StreamConfig
from ixt_stream.types import WeightVersion
from ixt_stream.weights.base import WeightRefused, aligned, layout, unique_tensors, unpack

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
KEEP = 2
"""Segments the writer keeps: the version being served and the next one."""
CHUNK = 1 << 20
"""Bytes cast and hashed at a time: small enough to hash from cache right after the copy."""
_LEN = struct.Struct("<Q")


def run_tag(run_id: str, root: str | Path) -> str:
    """A name part unique to one run: the run id (made file-name safe) + a hash of its weights folder."""
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", run_id)[:48]
    return f"{safe}-{xxhash.xxh3_64_hexdigest(str(Path(root).resolve()).encode())[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def segments(tag: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Every segment and temporary of the run `tag` (any writer)."""
    return sorted(p for p in shm_dir.glob(f"*ixt-{tag}-*") if p.name.lstrip(".").startswith(f"ixt-{tag}-"))


def sweep(tag: str, shm_dir: Path = SHM_DIR) -> int:
    """Unlink the segments of run `tag` whose writer process is gone; returns how many."""
    removed = 0
    for path in segments(tag, shm_dir):
        m = re.fullmatch(rf"\.?ixt-{re.escape(tag)}-(\d+)-v\d+(\.tmp)?", path.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d shared-memory weight segments left by a dead writer of run %s", removed, tag)
    return removed


class ShmWriter:
    """Writes each version into its own shared-memory segment; keeps the newest KEEP.

    Args:
        tag: `run_tag(run_id, weights folder)`, the same on both ends.
        dtype: cast tensors to this dtype while copying them in (None = keep their dtype).
        shm_dir: where segments live (tests may point it elsewhere).
    """

    transport = "shm"

    def __init__(self, tag: str, dtype: torch.dtype | None = None, shm_dir: Path = SHM_DIR):
        self.tag, self.dtype, self.shm_dir = tag, dtype, Path(shm_dir)
        self.prefix = f"ixt-{tag}-{os.getpid()}-v"
        sweep(tag, self.shm_dir)

    def write(self, state_dict: Mapping[str, torch.Tensor], version: int) -> tuple[str, str, int]:
        tensors = unique_tensors(state_dict)
        specs = {name: (self.dtype or t.dtype, tuple(t.shape)) for name, t in tensors.items()}
        entries, nbytes = layout(specs)
        header = json.dumps({"version": version, "nbytes": nbytes, "tensors": entries}).encode()
        start = aligned(_LEN.size + len(header))
        size = start + nbytes
        final = self.shm_dir / f"{self.prefix}{version}"
        tmp = self.shm_dir / f".{final.name}.tmp"
        fd = self._recycle(tmp)
        try:
            os.ftruncate(fd, size)
            # Prefault every page now: a recycled segment then costs no fault on the copy below.
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)  # also drops the exclusive lock of a recycled segment
        try:
            mm[:_LEN.size] = _LEN.pack(len(header))
            mm[_LEN.size:_LEN.size + len(header)] = header
            digest = self._fill(mm, start, entries, tensors.values())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            mm.close()
        os.rename(tmp, final)
        self._prune()
        return str(final), digest, size

    def _mine(self) -> list[tuple[int, Path]]:
        return sorted((int(p.name.rsplit("-v", 1)[1]), p) for p in self.shm_dir.glob(f"{self.prefix}*")
                      if p.name.rsplit("-v", 1)[1].isdigit())

    def _recycle(self, tmp: Path) -> int:
        """An fd for `tmp`: the oldest segment that will be pruned anyway, if no reader maps it
        (its pages are allocated already: writing a fresh tmpfs file costs ~4x as much), else new."""
        mine = self._mine()
        if len(mine) >= KEEP:
            old = mine[0][1]
            fd = os.open(old, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # readers hold LOCK_SH while they map it
                os.rename(old, tmp)
                return fd
            except BlockingIOError:  # still mapped by a reader: its pages stay with it
                os.close(fd)
                old.unlink(missing_ok=True)
        return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def _fill(self, mm: mmap.mmap, start: int, entries: list, tensors) -> str:
        """Cast each tensor into its slot chunk by chunk, hashing every byte of `mm` in order."""
        h = xxhash.xxh3_128()
        with memoryview(mm) as view:
            buf, dst, hashed = torch.frombuffer(view, dtype=torch.uint8), None, 0
            for (_, dtype_name, _, offset), t in zip(entries, tensors, strict=True):
                src = t.detach().reshape(-1)
                dtype = getattr(torch, dtype_name)
                at = start + offset
                dst = buf[at:at + src.numel() * dtype.itemsize].view(dtype)
                step = max(CHUNK // dtype.itemsize, 1)
                for i in range(0, src.numel(), step):
                    dst[i:i + step].copy_(src[i:i + step])  # the cast happens here, on the way in
                    end = at + min(i + step, src.numel()) * dtype.itemsize
                    h.update(view[hashed:end])
                    hashed = end
            h.update(view[hashed:])  # trailing alignment zeros (and the header, if no tensors)
            del buf, dst  # release the buffer exports before the mapping closes
        return h.hexdigest()

    def _prune(self) -> None:
        for _, path in self._mine()[:-KEEP]:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        for path in self.shm_dir.glob(f"{self.prefix}*"):
            path.unlink(missing_ok=True)


class ShmReader:
    """Maps an announced segment and returns tensors viewing it, once size and digest match.

    Args:
        tag: `run_tag(run_id, weights folder)`, the same on both ends.
        shm_dir: where segments live.
    """

    def __init__(self, tag: str, shm_dir: Path = SHM_DIR):
        self.tag, self.shm_dir = tag, Path(shm_dir)

    def read(self, wv: WeightVersion) -> dict[str, torch.Tensor]:
        path = Path(wv.uri)
        if path.parent != self.shm_dir or not path.name.startswith(f"ixt-{self.tag}-"):
            raise WeightRefused("outside_root", f"{path} is not a segment of this run in {self.shm_dir}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:  # superseded and unlinked already, or a writer gone and swept
            raise WeightRefused("missing", str(e)) from e
        try:
            try:  # held (by the mapping's own fd) until the views are gone: the writer recycles no mapped segment
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise WeightRefused("superseded", f"{path} is being rewritten with a newer version") from e
            size = os.fstat(fd).st_size
            if size != wv.num_bytes:
                raise WeightRefused("truncated", f"{path}: {size} bytes, announced {wv.num_bytes}")
            # Copy-on-write mapping: writable views for torch, and no page is ever copied unless written.
            mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        digest = xxhash.xxh3_128(mm).hexdigest()
        if digest != wv.digest:
            raise WeightRefused("digest_mismatch", f"{path}: digest {digest}, announced {wv.digest}")
        try:
            (hlen,) = _LEN.unpack_from(mm)
            meta = json.loads(mm[_LEN.size:_LEN.size + hlen])
            payload = torch.frombuffer(mm, dtype=torch.uint8)[aligned(_LEN.size + hlen):]
            return unpack(meta, payload)  # views: the mapping lives as long as they do
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise WeightRefused("unreadable", f"{path}: {e}") from e

    def close(self) -> None:
        sweep(self.tag, self.shm_dir)


def writer(cfg: StreamConfig, root: Path, run_id: str, dtype: torch.dtype | None) -> ShmWriter:
    return ShmWriter(run_tag(run_id, root), dtype)


def reader(cfg: StreamConfig, root: Path, run_id: str, generator_id: str) -> ShmReader:
    return ShmReader(run_tag(run_id, root))
