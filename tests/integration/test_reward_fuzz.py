"""Hostile input against a real reward service process (`ixt serve reward`, verifier backend, bearer
token) over a real loopback socket: hypothesis draws at least 10,000 malformed or hostile requests,
sent concurrently as raw bytes through generic gRPC calls (so the server's own protobuf decoding is
what meets invalid UTF-8, corrupt wire format and garbage). Every one must get a clear status
(never UNKNOWN, never a dead server), a valid request is answered correctly afterwards, and the
token never reaches the service's log. Also: no config file holds a secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ixt_stream.critique.client import RewardClient
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from tests.conftest import free_port

pytestmark = pytest.mark.slow

MAX_MESSAGE = 32 << 10
MAX_FIELD = 4 << 10
BATCH, BATCHES = 100, 103  # >= 10,000 cases
CRITIQUE, STREAM = "/ixt.v1.RewardModel/Critique", "/ixt.v1.RewardModel/CritiqueStream"
ENTRY = json.dumps({"expression": "17 + 25", "num_terms": 2, "num_digits": 2})
GOOD = "I add 17 and 25: 17 + 20 = 37, then 37 + 5 gives the total.\n<answer>42</answer>"


# -- a reward service process ----------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def reward_process(run_dir: Path, *overrides: str):
    """`ixt serve reward` in its own session, SERVING on a free port: yields (address, pid, log)."""
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "reward.log"
    argv = [sys.executable, "-m", "ixt_stream.cli", "serve", "reward", f"reward.port={port}",
            f"run.run_dir={run_dir}", "run.tensorboard=false", *overrides]
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        async def ready():
            async with RewardClient(address) as client:
                await client.wait_ready(120)

        try:
            asyncio.run(ready())
        except TimeoutError:
            raise AssertionError(log.read_text()[-3000:]) from None
        yield address, proc.pid, log
        assert proc.poll() is None, f"the reward service died:\n{log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- protobuf by hand: bytes the generated code would never produce -------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def request(sample_id: bytes | None = b"id", prompt: bytes = b"Calculate 17 + 25.", response: bytes = GOOD.encode(),
            reference: bytes = b"42", task: bytes = b"basic_arithmetic",
            metadata: tuple = ((b"entry", ENTRY.encode()),)) -> bytes:
    out = b"" if sample_id is None else field(1, sample_id)
    for number, value in ((2, prompt), (3, response), (4, reference), (5, task)):
        out += field(number, value)
    for key, value in metadata:
        out += field(6, field(1, key) + field(2, value))
    return out


# -- the hostile cases: (class, payload, statuses allowed) -----------------------------------------

INVALID, OK = {"INVALID_ARGUMENT"}, {"OK"}
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"ok\x80"]
NAN_JSON = ["NaN", "Infinity", "-Infinity", "1e999", "-0.0", '"NaN"', "null"]
ids = st.binary(min_size=1, max_size=24).map(lambda b: b.hex().encode())
text = st.text(max_size=40)


@st.composite
def case(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from([
        "valid", "empty_message", "missing_id", "long_id", "blank_response", "huge_field", "oversize",
        "invalid_utf8", "unknown_task", "nan_metadata", "bad_entry_json", "garbage", "truncated",
        "wrong_wire_type", "unknown_fields", "nul_and_controls", "wrong_token", "tiny_deadline",
        "stream_half_closed_early", "stream_hangs", "stream_garbage_item", "stream_oversize_item",
        "describe_garbage", "unknown_method",
    ]))
    sid = draw(ids)
    c = {"path": CRITIQUE, "allowed": INVALID}
    if kind == "valid":
        c |= {"payload": request(sid, prompt=draw(text).encode(), response=(draw(text) + "x").encode()),
              "allowed": OK}
    elif kind == "empty_message":
        c["payload"] = b""
    elif kind == "missing_id":
        c["payload"] = request(draw(st.sampled_from([None, b""])))
    elif kind == "long_id":
        c["payload"] = request(b"i" * draw(st.integers(257, 4000)))
    elif kind == "blank_response":
        c["payload"] = request(sid, response=draw(st.sampled_from([b"", b" ", b"\n\t  \r\n", b"\xe2\x80\x83"])))
    elif kind == "huge_field":
        size = draw(st.integers(MAX_FIELD + 1, MAX_MESSAGE - 1024))
        where = draw(st.sampled_from(["prompt", "response", "reference", "task", "metadata"]))
        blob = b"9" * size
        c["payload"] = (request(sid, metadata=((b"entry", ENTRY.encode()), (b"k", blob))) if where == "metadata"
                        else request(sid, **{where: blob}))
    elif kind == "oversize":  # over max_message_bytes: gRPC refuses it before the servicer runs
        c |= {"payload": request(sid, response=b"x" * draw(st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + (24 << 10)))),
              "allowed": {"RESOURCE_EXHAUSTED"}, "slow": True}
    elif kind == "invalid_utf8":
        bad = draw(st.sampled_from(BAD_UTF8))
        where = draw(st.sampled_from(["sample_id", "prompt", "response", "task", "meta_key", "meta_value"]))
        if where.startswith("meta"):
            pair = (bad, b"v") if where == "meta_key" else (b"k", bad)
            c["payload"] = request(sid, metadata=(pair,))
        else:
            c["payload"] = request(bad) if where == "sample_id" else request(sid, **{where: bad})
    elif kind == "unknown_task":
        c["payload"] = request(sid, task=("no_such_" + draw(text)).encode())
    elif kind == "nan_metadata":  # json.loads accepts NaN / Infinity: the critic must not choke
        value = draw(st.sampled_from(NAN_JSON))
        entry = draw(st.sampled_from([f'{{"expression": {value}}}', f'{{"num_terms": {value}}}',
                                      f'{{"answer": {value}, "expression": "17 + 25"}}']))
        c |= {"payload": request(sid, reference=value.encode(), metadata=((b"entry", entry.encode()),
                                                                           (b"score", b"NaN"))),
              "allowed": OK | INVALID}
    elif kind == "bad_entry_json":
        c["payload"] = request(sid, metadata=((b"entry", draw(st.sampled_from(
            [b"{oops", b"[1, 2]", b"42", b'"text"', b"\x00", b"{" * 5000 + b"}" * 5000])) ),))
    elif kind == "garbage":
        c |= {"payload": draw(st.binary(min_size=1, max_size=512)), "allowed": OK | INVALID}
    elif kind == "truncated":
        full = request(sid)
        c |= {"payload": full[: draw(st.integers(1, len(full) - 1))], "allowed": OK | INVALID}
    elif kind == "wrong_wire_type":  # field 1 as a varint / fixed64: skipped as unknown, so no id
        c["payload"] = draw(st.sampled_from([varint(1 << 3) + varint(7), varint(1 << 3 | 1) + b"\0" * 8])) + request(
            None)
    elif kind == "unknown_fields":  # well-formed unknown fields are skipped: the request is fine
        n = draw(st.integers(7, 2**29 - 1))
        c |= {"payload": request(sid) + field(n, draw(st.binary(max_size=64))) + varint(n << 3) + varint(2**63),
              "allowed": OK}
    elif kind == "nul_and_controls":
        c |= {"payload": request(sid + b"\x00\x01", prompt=b"\x00" * 8, response=b"\x1b[2J\x00" + GOOD.encode()),
              "allowed": OK | INVALID}
    elif kind == "wrong_token":
        c |= {"payload": request(sid), "token": draw(st.sampled_from(["", "Bearer wrong", "Basic x", "Bearer "])),
              "allowed": {"UNAUTHENTICATED"}}
    elif kind == "tiny_deadline":
        c |= {"payload": request(sid), "timeout": 1e-4, "allowed": OK | {"DEADLINE_EXCEEDED"}}
    elif kind.startswith("stream"):
        items = [request(sid + b"-%d" % i) for i in range(draw(st.integers(0, 4)))]
        c |= {"path": STREAM, "items": items, "allowed": OK}
        if kind == "stream_hangs":  # never half-closes: the caller's deadline ends it
            c |= {"hang": True, "slow": True, "timeout": draw(st.floats(0.5, 2.0)), "allowed": {"DEADLINE_EXCEEDED"}}
        elif kind == "stream_garbage_item":  # the bad item gets an error answer, the stream goes on
            c["items"] = [*items, draw(st.sampled_from([b"\xff\xff", request(b"\xff"), b"\x0a\x05ab"]))]
        elif kind == "stream_oversize_item":  # gRPC ends the stream
            c |= {"items": [*items, request(sid, response=b"x" * MAX_MESSAGE)], "allowed": {"RESOURCE_EXHAUSTED"},
                  "slow": True}
    elif kind == "describe_garbage":
        c |= {"path": "/ixt.v1.RewardModel/Describe", "payload": draw(st.sampled_from([b"\xff", b"\x0a\x05a"]))}
    elif kind == "unknown_method":
        c |= {"path": draw(st.sampled_from(["/ixt.v1.RewardModel/Nope", "/nope.Service/Critique", "/"])),
              "payload": request(sid), "allowed": {"UNIMPLEMENTED"}}
    return kind, c


# -- sending ----------------------------------------------------------------------------------------


class Sender:
    """One event loop in a thread with one channel. `send(cases)` runs a batch concurrently; slow
    cases (streams that hang until their deadline, over-size messages: gRPC takes 0.1-0.5 s to
    refuse one) run on in the background (`finish()` collects them), so a batch never waits for one."""

    def __init__(self, address: str, token: str):
        self.address, self.token = address, token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self._run(self._open())
        self.background: list[tuple[dict, asyncio.Task]] = []

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    async def _open(self):
        return grpc.aio.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 1 << 20)])

    def send(self, cases: list[tuple[str, dict]]) -> list[tuple[str, str, str, dict]]:
        """(kind, status name, problem or "", case) for every case that is not slow."""
        async def batch():
            now = [(kind, c) for kind, c in cases if not c.get("slow")]
            self.background += [(c, asyncio.ensure_future(self._one(kind, c))) for kind, c in cases if c.get("slow")]
            answers = await asyncio.gather(*(self._one(kind, c) for kind, c in now))
            return [(*a, c) for a, (_, c) in zip(answers, now, strict=True)]

        return self._run(batch())

    def finish(self) -> list[tuple[str, str, str, dict]]:
        async def wait():
            return [(*await task, c) for c, task in self.background]

        return self._run(wait())

    async def _one(self, kind: str, c: dict) -> tuple[str, str, str]:
        """(kind, status name, problem or "")."""
        given = c.get("token", f"Bearer {self.token}")
        metadata = (("authorization", given),) if given else ()
        timeout = c.get("timeout", 10.0)
        try:
            if c["path"] == STREAM:
                call = self.channel.stream_stream(STREAM)(metadata=metadata, timeout=timeout)
                try:
                    for item in c["items"]:
                        await call.write(item)
                    if not c.get("hang"):
                        await call.done_writing()
                except asyncio.InvalidStateError:
                    pass  # the server already ended the call: its status says why
                answers = [pb.CritiqueResponse.FromString(r) async for r in call]
                wanted = len(c["items"])
                return kind, "OK", "" if len(answers) == wanted else f"{len(answers)} answers for {wanted} items"
            answer = await self.channel.unary_unary(c["path"])(c["payload"], metadata=metadata, timeout=timeout)
            if c["path"] == CRITIQUE:
                resp = pb.CritiqueResponse.FromString(answer)
                if not (resp.sample_id and 0.0 <= resp.score <= 1.0 and math.isfinite(resp.score)):
                    return kind, "OK", f"odd answer {resp}"
            return kind, "OK", ""
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            return kind, e.code().name, "" if details else "no details"

    def close(self) -> None:
        self._run(self.channel.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the test ---------------------------------------------------------------------------------------


def test_ten_thousand_hostile_requests_get_clear_statuses(tmp_path):
    token = "tok-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    seen: Counter[tuple[str, str]] = Counter()
    problems: list[tuple[str, str, str]] = []
    sending = [0.0]

    with reward_process(tmp_path / "run", f"reward.auth_token_file={token_file}", "run.log_level=DEBUG",
                        f"reward.max_message_bytes={MAX_MESSAGE}", f"reward.max_response_bytes={MAX_FIELD}",
                        "reward.grace_s=1") as (address, pid, log):
        rss_before, server_cpu, own_cpu = rss_mb(pid), cpu_s(pid), time.process_time()
        sender = Sender(address, token)

        def check(answers) -> None:
            for kind, status, problem, c in answers:
                seen[kind, status] += 1
                if status not in c["allowed"] or problem:
                    problems.append((kind, status, problem or f"not in {sorted(c['allowed'])}"))

        # no shrinking: a failing batch's problems list says more than a minimal batch would
        @settings(max_examples=BATCHES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.lists(case(), min_size=BATCH, max_size=BATCH))
        def fuzz(cases):
            t = time.perf_counter()
            answers = sender.send(cases)
            sending[0] += time.perf_counter() - t
            check(answers)
            assert not problems, problems[:10]

        t0 = time.perf_counter()
        try:
            fuzz()
            check(sender.finish())
            assert not problems, problems[:10]
        finally:
            sender.close()
        elapsed = time.perf_counter() - t0
        rss_after, server_cpu, own_cpu = rss_mb(pid), cpu_s(pid) - server_cpu, time.process_time() - own_cpu

        # -- a valid request is answered correctly afterwards --------------------------------------
        async def valid():
            async with RewardClient(address, auth_token=token, retries=0) as client:
                from ixt_stream.types import Sample

                fields = dict(prompt="Calculate 17 + 25.", task="basic_arithmetic", reference_answer="42",
                              metadata={"entry": ENTRY})
                good = await client.critique(Sample(sample_id="after-good", response=GOOD, **fields))
                streamed = [r async for r in client.stream(
                    [Sample(sample_id="after-wrong", response=GOOD.replace("42", "41"), **fields)])]
                return good, streamed[0].critique

        good, wrong = asyncio.run(valid())

    total = sum(seen.values())
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, status), n in sorted(seen.items()):
        by_kind.setdefault(kind, {})[status] = n
    print(f"\n{total} hostile requests in {elapsed:.1f} s ({total / elapsed:.0f}/s, {sending[0]:.1f} s of it "
          f"sending, the rest drawing them); CPU: server {server_cpu:.1f} s, test process {own_cpu:.1f} s; "
          f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    for kind, statuses in by_kind.items():
        print(f"  {kind:<26} {statuses}")
    overall: Counter[str] = Counter()
    for (_, status), n in seen.items():
        overall[status] += n
    print("  statuses overall:", dict(overall))
    assert total >= 10_000 and len(by_kind) == 24, (total, sorted(by_kind))
    assert not {s for (_, s) in seen} & {"UNKNOWN", "UNAVAILABLE"}
    assert (good.label, good.score, wrong.label, wrong.score) == (good.label.GOOD, 1.0, good.label.BAD, 0.0)
    assert rss_after - rss_before < 200, (rss_before, rss_after)

    # -- the token never reached the log (DEBUG level, UNAUTHENTICATED calls included) -------------
    text = log.read_text(errors="replace")
    assert "reward service (verifier)" in text
    assert token not in text and "Bearer" not in text
    status = (tmp_path / "run" / "status" / "reward.json").read_text()
    assert token not in status


# -- secrets live in files or the environment, never in config ------------------------------------


def test_configs_hold_no_secrets():
    """Every secret-like config field names a file or an environment variable, and no shipped
    config file sets a value that looks like a credential."""
    import dataclasses
    import re

    from ixt_stream import config

    secretish = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|credentials?)(_|$)", re.IGNORECASE)
    for cls in [c for c in vars(config).values() if dataclasses.is_dataclass(c)]:
        for f in dataclasses.fields(cls):
            if secretish.search(f.name):
                assert f.name.endswith(("_file", "_env")), f"{cls.__name__}.{f.name} would hold a secret in config"
    for path in config.CONFIG_DIR.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if secretish.search(key):
                assert key.endswith(("_file", "_env")), f"{path}: {line.strip()}"
            assert not re.search(r"(sk-|ghp_|hf_)[A-Za-z0-9]{16,}|Bearer\s+\S", line), f"{path}: credential-like"
