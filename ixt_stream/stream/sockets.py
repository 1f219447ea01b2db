"""ZeroMQ links of the online loop: who binds, who connects, and typed frames in and out.

Four links, each named after what flows on it (`LINKS`): samples (generators PUSH -> orchestrator
PULL), conditioned (orchestrator PUSH -> learner PULL), weights (learner PUB -> generators SUB) and
acks (generators PUSH -> learner PULL). The single stable end of each link binds; the many connect.

Senders block at the high-water mark and never drop (PUSH semantics); a blocked `send` wakes every
`timeout_ms` so a role can notice shutdown (`send_until_stopped`, `asend_until_stopped`: the one
wait-at-the-HWM-but-notice-a-stop loop, sync and async). Small kernel socket buffers (`stream.tcp_buffer_bytes`)
keep the HWM meaningful: with the OS default, thousands of small frames would wait in flight.
Receivers turn bytes into types with `wire.codec.decode_frame` and never raise on garbage: a bad
frame is counted by reason (a prometheus counter and `Receiver.rejects`), logged, and skipped.

Links stay on loopback unless CURVE is on (`stream.curve_keys_dir`): the binder is the CURVE
server, connecting peers are clients, and only public keys found in that folder may connect.
Left out: ROUTER/DEALER patterns, multipart frames, and per-link hosts (one `stream.host` for all).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from prometheus_client import Counter as PromCounter

from ixt_stream.config import ConfigError, StreamConfig
from ixt_stream.net import is_loopback
from ixt_stream.types import ConditionedSample, Sample, WeightAck, WeightVersion
from ixt_stream.wire.codec import Body, FrameLimits, Reject, decode_frame, encode_frame

log = logging.getLogger(__name__)

FRAMES_RECEIVED = PromCounter("ixt_frames_received", "Frames accepted by a receiver", ["link"])
FRAMES_REJECTED = PromCounter("ixt_frames_rejected", "Frames refused by a receiver", ["link", "reason"])
FRAMES_SENT = PromCounter("ixt_frames_sent", "Frames handed to ZeroMQ by a sender", ["link"])


@dataclass(frozen=True)
class Link:
    port_field: str
    """The StreamConfig field holding this link's TCP port."""
    send_type: int
    recv_type: int
    sender_binds: bool
    """True for the fan-out link (one PUB, many SUBs); fan-in links bind the receiver."""
    body: type


LINKS: dict[str, Link] = {
    "samples": Link("samples_port", zmq.PUSH, zmq.PULL, False, Sample),
    "conditioned": Link("conditioned_port", zmq.PUSH, zmq.PULL, False, ConditionedSample),
    "weights": Link("weights_port", zmq.PUB, zmq.SUB, True, WeightVersion),
    "acks": Link("acks_port", zmq.PUSH, zmq.PULL, False, WeightAck),
}

# -- CURVE ------------------------------------------------------------------------------------


def create_curve_keys(keys_dir: str) -> None:
    """Write a server and a client keypair (`server.key[_secret]`, `client.key[_secret]`)."""
    import zmq.auth

    Path(keys_dir).mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        if not (Path(keys_dir) / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(keys_dir, name)


_authenticators: dict[zmq.Context, object] = {}


def _secure(sock: zmq.Socket, keys_dir: str, server: bool) -> None:
    """Server ends need `server.key_secret`; client ends `server.key` and `client.key_secret`."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    keys = Path(keys_dir)
    if server:
        ctx = sock.context
        if ctx not in _authenticators:  # one ZAP handler per context admits the folder's public keys
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=str(keys))
            _authenticators[ctx] = auth
        public, secret = zmq.auth.load_certificate(keys / "server.key_secret")
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    else:
        server_public, _ = zmq.auth.load_certificate(keys / "server.key")
        public, secret = zmq.auth.load_certificate(keys / "client.key_secret")
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public


def open_socket(cfg: StreamConfig, link: str, side: str, ctx: zmq.Context | None = None) -> zmq.Socket:
    """A configured socket for one end (`side` = "send" | "recv") of `link`, bound or connected.

    Raises ConfigError (a ValueError) for a non-loopback host without CURVE: frames would cross the network in
    the clear and anyone could inject samples or weight announcements; ConfigError naming the
    port setting when the address cannot be bound (in use).
    """
    spec = LINKS[link]
    if not cfg.curve_keys_dir and not is_loopback(cfg.host):
        raise ConfigError(
            f"stream.host={cfg.host!r} is not a loopback address; set stream.curve_keys_dir "
            f"(see sockets.create_curve_keys) to encrypt and authenticate the ZeroMQ links"
        )
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(spec.send_type if side == "send" else spec.recv_type)
    sock.sndhwm = sock.rcvhwm = cfg.high_water_mark
    if cfg.tcp_buffer_bytes:
        sock.sndbuf = sock.rcvbuf = cfg.tcp_buffer_bytes
    sock.linger = cfg.linger_ms
    binds = spec.sender_binds == (side == "send")
    if cfg.curve_keys_dir:
        _secure(sock, cfg.curve_keys_dir, server=binds)
    if spec.recv_type == zmq.SUB and side == "recv":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    address = f"tcp://{cfg.host}:{getattr(cfg, spec.port_field)}"
    try:
        (sock.bind if binds else sock.connect)(address)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise ConfigError(f"stream.{spec.port_field}: cannot {'bind' if binds else 'connect to'} {address} "
                          f"({e})") from None
    return sock


# -- typed ends -------------------------------------------------------------------------------


class Sender:
    """Encodes bodies into frames for one link. `send` blocks at the HWM; nothing is dropped."""

    def __init__(self, sock: zmq.Socket, link: str, run_id: str):
        self.sock, self.link, self.run_id = sock, link, run_id
        self._async: zmq.asyncio.Socket | None = None

    def send(self, body: Body, timeout_ms: int | None = None) -> bool:
        """Queue one frame; False if it could not be queued within `timeout_ms` (retry it)."""
        frame = encode_frame(body, self.run_id)
        if timeout_ms is not None and not self.sock.poll(timeout_ms, zmq.POLLOUT):
            return False
        self.sock.send(frame)
        FRAMES_SENT.labels(self.link).inc()
        return True

    async def asend(self, body: Body) -> None:
        """`send` for asyncio roles: waits at the HWM without blocking the event loop."""
        if self._async is None:
            self._async = zmq.asyncio.Socket.from_socket(self.sock)
        await self._async.send(encode_frame(body, self.run_id))
        FRAMES_SENT.labels(self.link).inc()

    def close(self) -> None:
        self.sock.close()


class Receiver:
    """Decodes frames for one link; skips (and counts) anything that is not a valid body.

    `limits` adds the receiving end's bounds (vocabulary, length) to the checks. Rejected frames
    that named a sample are kept in `rejected` as (sample_id, reason) for the owner to ledger."""

    def __init__(self, sock: zmq.Socket, link: str, run_id: str, limits: FrameLimits | None = None):
        self.sock, self.link, self.run_id, self.limits = sock, link, run_id, limits
        self.expect = LINKS[link].body
        self.rejects: Counter[str] = Counter()
        self.rejected: list[tuple[str, str]] = []
        self.received = 0
        self._async: zmq.asyncio.Socket | None = None

    def _accept(self, frame: bytes) -> Body | None:
        body = decode_frame(frame, self.run_id, self.expect, self.limits)
        if isinstance(body, Reject):
            self.rejects[body.reason] += 1
            if body.sample_id:
                self.rejected.append((body.sample_id, body.reason))
            FRAMES_REJECTED.labels(self.link, body.reason).inc()
            n = self.rejects[body.reason]
            if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ...: a flood of garbage cannot flood the log
                log.warning("%s: rejected frame (%s, seen %d): %s", self.link, body.reason, n, body.detail)
            return None
        self.received += 1
        FRAMES_RECEIVED.labels(self.link).inc()
        return body

    def recv(self, timeout_ms: int | None = None) -> Body | None:
        """The next valid body, or None when none arrived within `timeout_ms` (None = wait)."""
        while True:
            if timeout_ms is not None and not self.sock.poll(timeout_ms, zmq.POLLIN):
                return None
            body = self._accept(self.sock.recv())
            if body is not None:
                return body

    def drain(self) -> list[Body]:
        """Every valid body already queued, without waiting."""
        out = []
        while self.sock.poll(0, zmq.POLLIN):
            body = self._accept(self.sock.recv())
            if body is not None:
                out.append(body)
        return out

    async def arecv(self) -> Body:
        """The next valid body, awaited on the running (uv)loop."""
        if self._async is None:
            self._async = zmq.asyncio.Socket.from_socket(self.sock)
        while True:
            body = self._accept(await self._async.recv())
            if body is not None:
                return body

    def close(self) -> None:
        self.sock.close()


def sender(cfg: StreamConfig, link: str, run_id: str, ctx: zmq.Context | None = None) -> Sender:
    return Sender(open_socket(cfg, link, "send", ctx), link, run_id)


def receiver(cfg: StreamConfig, link: str, run_id: str, ctx: zmq.Context | None = None,
             limits: FrameLimits | None = None) -> Receiver:
    return Receiver(open_socket(cfg, link, "recv", ctx), link, run_id, limits)


def send_until_stopped(sender: Sender, body: Body, stop: threading.Event, timeout_ms: int) -> bool:
    """Block until `body` is queued (True) or `stop` is set (False): wait at the high-water mark,
    waking every `timeout_ms` only to notice a stop. Never drops."""
    while not stop.is_set():
        if sender.send(body, timeout_ms=timeout_ms):
            return True
    return False


async def asend_until_stopped(sender: Sender, body: Body, stop: asyncio.Event, timeout_s: float = 0.5) -> bool:
    """`send_until_stopped` for asyncio roles: the event loop keeps running while it waits."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(sender.asend(body), timeout=timeout_s)
            return True
        except TimeoutError:
            continue
    return False
