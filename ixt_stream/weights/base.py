"""What every weight transport shares: the writer / reader interfaces, the refusal error, the name of
the LATEST record, the tensors a version carries, and the flat layout (one aligned byte buffer
described by a JSON header) used by the transports that move bytes rather than files (`collective`,
`shm`).

Imports nothing from its sibling modules, so transports import it and not each other; `publish`
(learner) and `apply` (generator) drive any transport through these interfaces only.
Left out: choosing a transport (`registry.TRANSPORTS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from ixt_stream.types import WeightVersion

LATEST = "LATEST"
"""`run_dir/weights/LATEST`: JSON of the newest published `WeightVersion`, whatever the transport."""
ALIGN = 64
"""Byte alignment of each tensor in a flat payload (any dtype can be viewed in place)."""


class WeightRefused(Exception):
    """A payload that must not be applied; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class WeightWriter(Protocol):
    """Learner side of a transport: moves one version's tensors toward the generators."""

    transport: str

    def write(self, state_dict: Mapping[str, torch.Tensor], version: int) -> tuple[str, str, int]:
        """Returns (uri, hex digest of the payload, payload bytes): what the announcement carries."""
        ...

    def close(self) -> None: ...


class WeightReader(Protocol):
    """Generator side of a transport: fetches one announced version's tensors; raises WeightRefused
    rather than return bad ones (the digest is checked before anything is handed over)."""

    def read(self, wv: WeightVersion) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


def unique_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` without tied aliases (lm_head = embed_tokens: vLLM re-ties them on load)."""
    out, seen = {}, set()
    for name, t in state_dict.items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def payload_tensors(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict:
    """Detached CPU tensors safetensors accepts: tied aliases dropped, flat-buffer views copied."""
    out = {}
    for name, t in unique_tensors(state_dict).items():
        t = t.detach().to(device="cpu", dtype=dtype or t.dtype).contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger buffer (e.g. DeepSpeed's flat groups)
        out[name] = t
    return out


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def layout(specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> tuple[list, int]:
    """([name, dtype name, shape, byte offset] per tensor, payload bytes); offsets are ALIGN multiples."""
    entries, offset = [], 0
    for name, (dtype, shape) in specs.items():
        entries.append([name, str(dtype).removeprefix("torch."), list(shape), offset])
        offset += aligned(math.prod(shape) * dtype.itemsize)
    return entries, offset


def unpack(meta: dict, payload: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views into `payload` (same device), named as the header says. Raises ValueError on a bad header."""
    out = {}
    for name, dtype_name, shape, start in meta["tensors"]:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{name}: unknown dtype {dtype_name!r}")
        size = math.prod(shape) * dtype.itemsize
        if start % ALIGN or start + size > payload.numel():
            raise ValueError(f"{name}: bytes [{start}, {start + size}) outside the {payload.numel()}-byte payload")
        out[name] = payload[start:start + size].view(dtype).view(shape)
    return out
