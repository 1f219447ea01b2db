"""Checkpoint integrity: a sha256 manifest per checkpoint tag, checked before anything is loaded.

    save:  DeepSpeed writes folder/<tag>/*  ->  write_manifest(folder/<tag>): every file's size
           and sha256, written last and atomically, so a tag without a manifest is a save that
           never finished (a kill -9 mid-save) and is never loaded
    load:  tags(folder), newest first  ->  verify(tag_dir) raises CorruptCheckpoint naming the
           first missing, truncated or altered file  ->  the caller tries the next older tag

Hashing reads every byte once (about 1 s per GB); that is the price of never resuming from a
silently damaged optimizer state. Left out: pruning old tags, signing the manifest (it detects
accidents, not an attacker who can also rewrite it), and checking per-rank files on other hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

MANIFEST = "ixt_manifest.json"
_TAG = re.compile(r"step-(\d+)")


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that must not be loaded; `path` is the offending file (or the tag folder)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"refusing checkpoint file {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST and ".tmp-" not in p.name)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(tag_dir: str | Path) -> Path:
    """Record size and sha256 of every file under `tag_dir` (call after the save finished)."""
    tag_dir = Path(tag_dir)
    files = {p.relative_to(tag_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(tag_dir)}
    if not files:
        raise FileNotFoundError(f"{tag_dir} holds no checkpoint files")
    tmp = tag_dir / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, tag_dir / MANIFEST)
    return tag_dir / MANIFEST


def remove_manifest(tag_dir: str | Path) -> None:
    """Before a tag is (re)written: until the new manifest exists, the tag counts as unfinished."""
    (Path(tag_dir) / MANIFEST).unlink(missing_ok=True)


def verify(tag_dir: str | Path) -> None:
    """Raise CorruptCheckpoint (naming the file) unless every file matches the manifest."""
    tag_dir = Path(tag_dir)
    manifest = tag_dir / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        raise CorruptCheckpoint(manifest, "no manifest: the save did not finish") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(manifest, f"unreadable manifest ({e})") from e
    for name, want in files.items():
        path = tag_dir / name
        if not path.is_file():
            raise CorruptCheckpoint(path, "missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpoint(path, f"{size} bytes, the manifest says {want['bytes']} (truncated?)")
        if _sha256(path) != want["sha256"]:
            raise CorruptCheckpoint(path, "sha256 does not match the manifest (corrupted)")


def tags(folder: str | Path) -> list[Path]:
    """The `step-N` tag folders under `folder`, newest (highest N) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _TAG.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]
