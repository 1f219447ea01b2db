"""Weight versions over a process group: the learner broadcasts, generators receive. Both ends.

The collective transport (`stream.weight_transport=collective`) moves tensors with one broadcast
instead of a file: `CollectiveWriter` (learner, a `base.WeightWriter`) and `CollectiveReader`
(generator, a `base.WeightReader`) live in this one file, as prime-rl keeps its NCCL sender and
receiver under one name. Announcements, LATEST, acks and the BLAKE3 check are unchanged: the
`WeightVersion` still travels over the (CURVE-authenticated) ZeroMQ PUB socket and still carries
the digest, so nothing received over the unauthenticated group is applied unless it matches.

Group. The learner owns a `torch.distributed.TCPStore` at `stream.collective.host:port` and forms
*generations* of a group: rank 0 = learner, ranks 1..n = the generators that joined, in
generator-id order (with all present, generator i is rank i + 1). Each generation is a
`ProcessGroupGloo` / `ProcessGroupNCCL` built directly on a `PrefixStore`, so the default group
(DeepSpeed's in the learner, vLLM's in a generator) is never touched. Membership is not fixed:
a generator registers when it starts, the learner forms a new generation at its next publish
(opening a `JOIN_S` window for joiners), and a dead generator drops out when a broadcast fails.
A fixed world of `num_generators + 1` would let one dead generator stop weight delivery to all of
them, and then (through `max_version_lag`) stop the learner too.

One publish. The learner packs the tensors (the same tied-weight / dtype rules as the file) into
one flat uint8 payload, hashes header + payload, bumps `<generation>/seq` in the store, and
broadcasts three tensors: the header length, the JSON header (version, names, dtypes, shapes,
offsets) and the payload. Only then does `WeightPublisher` announce the version over ZeroMQ.

Blocking, and the trade-off. A broadcast needs every member inside it. The generator's loop swaps
weights only between engine calls, so the receiving is done by a background thread of
`CollectiveReader` that polls the store every `POLL_S` and joins each broadcast at once, then
hashes the payload (off the main loop); the main loop later finds the tensors ready when the
announcement arrives. So the learner waits for the wire, not for the slowest engine call, at the
cost of one extra copy of the weights in each generator (CPU memory, or GPU memory under NCCL:
leave room below `gpu_memory_utilization`). Every wait has `stream.collective.timeout_s`: a
generator that dies mid-publish costs the learner at most that long, after which the learner
re-forms the group once and broadcasts again to whoever joins; a publish never raises for a
transport failure, the version is announced anyway and generators that missed it refuse it
(`not_received` / `not_in_group`) and take the next one.

Backend: `stream.collective.backend`, or NCCL where CUDA is available and gloo elsewhere; every
member must pick the same. The learner hands over CPU tensors (`Learner.full_state_dict`), which
are copied to its GPU for NCCL; a generator receives on its own GPU (NCCL) or in CPU memory (gloo).

Why not vLLM's `StatelessProcessGroup` / `weight_transfer.NCCLWeightTransferEngine`: the first is
a pickle-over-TCPStore metadata channel (pickle from an unauthenticated port is code execution),
the second is CUDA-only (PyNccl), so neither runs in the CPU tests; torch's process groups give
one code path for gloo and NCCL, and the learner needs no vLLM import.

Left out: a restarted generator serving the version broadcast before it joined (it catches up at
the next publish: broadcasts are not replayed); tensor-parallel generators (receive on one GPU,
then `reload_weights` through the engine); a digest computed on the GPU (a receiving GPU copies
the payload to the host to hash it, in the background thread); authentication of the store port
(keep it on a private network; forged payloads are refused by the digest check).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import blake3
import torch
from torch.distributed import BroadcastOptions, PrefixStore, ProcessGroupGloo, TCPStore

from ixt_stream.config import StreamConfig
from ixt_stream.types import WeightVersion
from ixt_stream.weights.base import WeightRefused, layout, payload_tensors, unpack

log = logging.getLogger(__name__)

JOIN_S = 1.0
"""How long the learner keeps a new generation open for generators to join."""
POLL_S = 0.02
"""How often a generator's receiver looks at the store for a new generation or broadcast."""
GENERATION, WANT = "generation", "want"
"""Store keys: the current generation's id; a counter generators bump to ask for a new one."""


# -- the payload: one flat byte buffer and its JSON header -----------------------------------


def pack(state_dict: Mapping[str, torch.Tensor], version: int,
         dtype: torch.dtype | None = None) -> tuple[bytes, torch.Tensor]:
    """(JSON header, flat uint8 CPU payload) of one version (`base.layout`: [name, dtype, shape, offset])."""
    tensors = payload_tensors(state_dict, dtype)
    entries, nbytes = layout({name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()})
    payload = torch.zeros(nbytes, dtype=torch.uint8)
    for (_, _, _, start), t in zip(entries, tensors.values(), strict=True):
        raw = t.reshape(-1).view(torch.uint8)
        payload[start:start + raw.numel()] = raw
    header = json.dumps({"version": version, "nbytes": nbytes, "tensors": entries}).encode()
    return header, payload


def digest(header: bytes, payload: torch.Tensor) -> str:
    """BLAKE3 over header then payload (a GPU payload is copied to the host first)."""
    h = blake3.blake3(header)
    h.update(payload.cpu().numpy())
    return h.hexdigest()


# -- the group ------------------------------------------------------------------------------


def backend_for(name: str) -> str:
    """`name` checked, or (empty) NCCL where CUDA is available, else gloo."""
    if name not in ("", "gloo", "nccl"):
        raise ValueError(f"stream.collective.backend={name!r}: choose gloo, nccl or empty (auto)")
    return name or ("nccl" if torch.cuda.is_available() else "gloo")


def _device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def _env(key: str, value: str):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _group(backend: str, store, rank: int, size: int, timeout: timedelta):
    """A process-group backend on `store` that leaves torch.distributed's default group alone."""
    if backend == "gloo":
        return ProcessGroupGloo(store, rank, size, timeout)
    from torch.distributed import ProcessGroupNCCL

    options = ProcessGroupNCCL.Options()
    options._timeout = timeout
    # Default error handling (3) tears the whole process down when a collective times out; 2 only
    # aborts this communicator, so a dead generator cannot take the learner with it.
    with _env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2"):
        return ProcessGroupNCCL(store, rank, size, options)


def _broadcast(pg, tensor: torch.Tensor, timeout: timedelta) -> None:
    """Rank 0's `tensor` into every member's; raises RuntimeError on a timeout or a lost peer."""
    opts = BroadcastOptions()
    opts.rootRank, opts.rootTensor, opts.timeout = 0, 0, timeout
    pg.broadcast([tensor], opts).wait(timeout)


def _order(token: str) -> list:
    """Natural order of member tokens (`generator-2#…` before `generator-10#…`)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", token)]


# -- learner side ---------------------------------------------------------------------------


class CollectiveWriter:
    """Broadcasts each version to the generators in the current generation of the group.

    Args:
        host, port: where the learner's TCPStore listens (generators connect there).
        timeout_s: longest wait for a group to form or one broadcast to finish.
        backend: "gloo" | "nccl" | "" (auto).
        dtype: cast tensors to this dtype before sending (None = keep the learner's dtype).
        join_s: how long a new generation stays open for joiners.
    """

    transport = "collective"

    def __init__(self, host: str, port: int, timeout_s: float = 60.0, backend: str = "",
                 dtype: torch.dtype | None = None, join_s: float = JOIN_S):
        self.backend = backend_for(backend)
        self.device = _device(self.backend)
        self.base_uri, self.dtype, self.join_s = f"collective://{host}:{port}", dtype, join_s
        self.timeout = timedelta(seconds=timeout_s)
        self.store = TCPStore(host, port, None, True, self.timeout, wait_for_workers=False)
        self._nonce, self._count = uuid.uuid4().hex[:8], 0
        self._pg, self.generation, self.members = None, "", []
        self._wants = -1  # requests seen at the last formation; -1 = form at the next publish

    def write(self, state_dict: Mapping[str, torch.Tensor], version: int) -> tuple[str, str, int]:
        header, payload = pack(state_dict, version, self.dtype)
        payload_digest = digest(header, payload)
        payload = payload.to(self.device)
        for attempt in (1, 2):  # a failed broadcast gets one fresh group, without the dead
            try:
                if int(self.store.add(WANT, 0)) != self._wants:
                    self._form()
                if self._pg is not None:
                    self._send(header, payload)
                break
            except RuntimeError as e:  # DistStoreError, gloo / NCCL errors and timeouts
                # Dropping the last reference closes the group's connections, so members still
                # waiting in this broadcast fail now instead of at their timeout; hence str(e):
                # a log record must not keep the traceback (and the group) alive.
                failed, self._pg, self.generation, self.members, self._wants = self.generation, None, "", [], -1
                log.warning("weights v%d: group %s failed (attempt %d): %s", version, failed or "-", attempt, str(e))
        return f"{self.base_uri}/{self.generation or 'none'}", payload_digest, len(header) + payload.numel()

    def _form(self) -> None:
        """Open a new generation, wait `join_s` for joiners, then build the group with them."""
        self._pg = None
        wants = int(self.store.add(WANT, 0))
        self._count += 1
        g = f"{self._nonce}.{self._count}"
        self.store.set(GENERATION, g)
        time.sleep(self.join_s)
        joined = self.store.get(f"{g}/joined").decode().split() if self.store.check([f"{g}/joined"]) else []
        members = sorted(set(joined), key=_order)
        self.store.set(f"{g}/members", " ".join(members))
        self._wants, self.generation, self.members = wants, (g if members else ""), members
        if members:
            self._pg = _group(self.backend, PrefixStore(f"{g}/pg", self.store), 0, len(members) + 1, self.timeout)
        log.info("weight group %s (%s): learner + %d generators %s", g, self.backend, len(members),
                 [m.split("#")[0] for m in members])

    def _send(self, header: bytes, payload: torch.Tensor) -> None:
        self.store.add(f"{self.generation}/seq", 1)  # wakes the receivers
        head = torch.frombuffer(bytearray(header), dtype=torch.uint8).to(self.device)
        _broadcast(self._pg, torch.tensor([head.numel()], dtype=torch.int64, device=self.device), self.timeout)
        _broadcast(self._pg, head, self.timeout)
        _broadcast(self._pg, payload, self.timeout)

    def close(self) -> None:
        self._pg = self.store = None


# -- generator side -------------------------------------------------------------------------


@dataclass
class _Received:
    generation: str
    version: int
    digest: str
    num_bytes: int
    tensors: dict[str, torch.Tensor] | None
    error: WeightRefused | None = None


class CollectiveReader:
    """Receives broadcasts in a background thread; `read` hands over the announced one, verified.

    Args:
        host, port: the learner's TCPStore.
        name: this generator's id (`generator-<index>`): its place in the rank order.
        timeout_s: longest wait for a group, a broadcast, or (in `read`) a version in flight.
        backend: "gloo" | "nccl" | "" (auto); must match the learner's.
    """

    def __init__(self, host: str, port: int, name: str, timeout_s: float = 60.0, backend: str = ""):
        self.backend = backend_for(backend)
        self.device = _device(self.backend)
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.timeout = timedelta(seconds=timeout_s)
        self.token = f"{name}#{uuid.uuid4().hex[:8]}"
        self._cond = threading.Condition()
        self._generation = ""
        """The generation this process is a member of ("" = none)."""
        self._latest = -1
        """The newest version whose header arrived in `_generation`."""
        self._result: _Received | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-receiver", daemon=True)
        self._thread.start()

    def read(self, wv: WeightVersion) -> dict[str, torch.Tensor]:
        generation = wv.uri.rsplit("/", 1)[-1]

        def settled() -> bool:
            r = self._result
            return (self._generation != generation or self._latest > wv.version
                    or (r is not None and r.generation == generation and r.version >= wv.version))

        with self._cond:
            self._cond.wait_for(settled, timeout=self.timeout_s)
            r = self._result
            if r is None or (r.generation, r.version) != (generation, wv.version):
                reason = "not_received" if self._generation == generation else "not_in_group"
                raise WeightRefused(reason, f"v{wv.version} of group {generation} did not reach {self.token}")
            self._result = None  # the buffers go to the engine; nothing here keeps them alive
        if r.error is not None:
            raise r.error
        if r.num_bytes != wv.num_bytes:
            raise WeightRefused("truncated", f"v{wv.version}: {r.num_bytes} bytes, announced {wv.num_bytes}")
        if r.digest != wv.digest:
            raise WeightRefused("digest_mismatch", f"v{wv.version}: digest {r.digest}, announced {wv.digest}")
        return r.tensors

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)  # a broadcast in flight ends at its timeout (daemon thread)

    # -- the receiver thread ----------------------------------------------------------------

    def _run(self) -> None:
        seen: set[str] = set()  # generations already joined or missed: never joined again
        while not self._stop.is_set():
            try:
                store = TCPStore(self.host, self.port, None, False, self.timeout, wait_for_workers=False)
                store.add(WANT, 1)  # ask the learner for a generation that includes this process
                self._follow(store, seen)
            except Exception as e:  # learner gone or restarted, or a bug: never die silently
                if not self._stop.is_set():
                    log.warning("%s: weight store lost (%s: %s); reconnecting", self.token, type(e).__name__, e)
            self._set_generation("")
            self._stop.wait(1.0)

    def _follow(self, store: TCPStore, seen: set[str]) -> None:
        """Join each new generation, receive each broadcast; store errors end it (reconnect)."""
        pg, done = None, 0
        while not self._stop.is_set():
            g = store.get(GENERATION).decode() if store.check([GENERATION]) else ""
            try:
                if g and g not in seen:
                    seen.add(g)
                    pg, done = None, 0
                    self._set_generation("")
                    pg = self._join(store, g)
                    if pg is None:
                        store.add(WANT, 1)  # joined too late: ask for the next generation
                elif pg is not None and int(store.add(f"{self._generation}/seq", 0)) > done:
                    done += 1
                    self._receive(pg)
                else:
                    self._stop.wait(POLL_S)
            except RuntimeError as e:  # the group broke (a peer died, a timeout): ask for a new one
                pg = None
                log.warning("%s: left weight group %s: %s", self.token, self._generation or g, str(e))
                self._set_generation("")
                store.add(WANT, 1)

    def _join(self, store: TCPStore, g: str):
        store.append(f"{g}/joined", self.token + " ")
        deadline = time.monotonic() + self.timeout_s
        while not store.check([f"{g}/members"]):
            if self._stop.is_set() or time.monotonic() > deadline:
                return None
            self._stop.wait(POLL_S)
        members = store.get(f"{g}/members").decode().split()
        if self.token not in members:
            return None
        self._set_generation(g)
        return _group(self.backend, PrefixStore(f"{g}/pg", store), members.index(self.token) + 1,
                      len(members) + 1, self.timeout)

    def _receive(self, pg) -> None:
        size = torch.zeros(1, dtype=torch.int64, device=self.device)
        _broadcast(pg, size, self.timeout)
        head = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        _broadcast(pg, head, self.timeout)
        header = head.cpu().numpy().tobytes()
        try:
            meta = json.loads(header)
            version, nbytes = int(meta["version"]), int(meta["nbytes"])
        except (ValueError, KeyError, TypeError) as e:  # cannot know the payload size: leave
            raise RuntimeError(f"unreadable weight header: {e}") from e
        with self._cond:
            self._latest = version
            self._cond.notify_all()
        payload = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        _broadcast(pg, payload, self.timeout)
        got = digest(header, payload)
        try:
            tensors, error = unpack(meta, payload), None
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            tensors, error = None, WeightRefused("unreadable", f"v{version}: {e}")
        with self._cond:
            self._result = _Received(self._generation, version, got, len(header) + nbytes, tensors, error)
            self._cond.notify_all()
        log.debug("%s: received v%d (%.1f MB)", self.token, version, nbytes / 1e6)

    def _set_generation(self, g: str) -> None:
        with self._cond:
            self._generation, self._latest = g, -1
            self._cond.notify_all()


def writer(cfg: StreamConfig, root, run_id: str, dtype: torch.dtype | None) -> CollectiveWriter:
    c = cfg.collective
    return CollectiveWriter(c.host or cfg.host, c.port, c.timeout_s, c.backend, dtype)


def reader(cfg: StreamConfig, root, run_id: str, generator_id: str) -> CollectiveReader:
    c = cfg.collective
    return CollectiveReader(c.host or cfg.host, c.port, generator_id, c.timeout_s, c.backend)
