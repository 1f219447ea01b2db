"""The reward service under 10x more concurrent streams than `reward.max_concurrent_requests`
admits, as a real process (`ixt serve reward`, openai backend) in front of a slow
OpenAI-compatible endpoint (the critic's real bottleneck: an LLM server): it never runs more
critiques at once than it admits, answers the rest RESOURCE_EXHAUSTED at once, pushes back on
streams whose caller stops reading (HTTP/2 flow control) instead of buffering their answers, keeps
its memory (RSS via /proc) bounded, and serves normally again once the load drops."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from ixt_stream.critique.client import RewardClient
from ixt_stream.types import Sample
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from tests.conftest import free_port
from tests.integration.test_reward_fuzz import STREAM, request, reward_process, rss_mb

pytestmark = pytest.mark.slow

ADMITTED = 8
STREAMS = 10 * ADMITTED
DELAY_S = 0.1
FLOOD = 2000


class SlowCritic(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint that answers every completion after DELAY_S; records the most
    requests it ever had in flight at once."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.in_flight = self.peak = self.served = 0


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"data": [{"id": "slow-critic"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        s: SlowCritic = self.server
        with s.lock:
            s.in_flight += 1
            s.peak = max(s.peak, s.in_flight)
        time.sleep(DELAY_S)
        with s.lock:
            s.in_flight -= 1
            s.served += 1
        text = "<think>checked</think>\nCritique: The answer is right.\nScore: 1\nLabel: good"
        self._reply({"choices": [{"message": {"content": text}}]})


async def _stream(channel, tag: str, items: int) -> Counter:
    """One stream of `items` requests that reads every answer: per-item outcome counts."""
    call = channel.stream_stream(STREAM)(timeout=60)
    for i in range(items):
        await call.write(request(f"{tag}-{i}".encode()))
    await call.done_writing()
    got = Counter()
    async for raw in call:
        resp = pb.CritiqueResponse.FromString(raw)
        got[resp.error.code if resp.HasField("error") else "OK"] += 1
    return got


async def _flood(channel, tag: str, items: int):
    """A stream that writes `items` requests and never reads an answer; returns the open call."""
    call = channel.stream_stream(STREAM)(timeout=120)
    for i in range(items):  # gRPC queues them on the caller's side once the server stops reading
        await call.write(request(f"{tag}-{i}".encode()))
    return call


def _items_read(metrics_port: int) -> int:
    """Stream items the service has read and answered so far (its prometheus counters)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ixt_reward_answered_total{") and 'rpc="CritiqueStream"' in line))


class RssPeak(threading.Thread):
    """The peak RSS of a process, sampled every 50 ms until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))


def test_ten_times_more_streams_than_admitted(tmp_path):
    critic = SlowCritic()
    threading.Thread(target=critic.serve_forever, daemon=True).start()
    metrics_port = free_port()
    overrides = [f"run.metrics_port={metrics_port}", "reward.backend=openai", f"reward.llm.base_url=http://127.0.0.1:{critic.server_port}/v1",
                 f"reward.max_concurrent_requests={ADMITTED}", "reward.llm.request_timeout_s=30"]
    try:
        with reward_process(tmp_path / "run", *overrides) as (address, pid, _log):
            async def main():
                # BDP probing off: the 64 KB HTTP/2 windows stay small, so a caller that does not read
                # fills them after a few hundred answers (with probing they grow to MBs first)
                async with grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
                    await _stream(channel, "warm", 4)
                    rss = {"before": rss_mb(pid)}
                    # -- 80 streams that read: the admitted ones are judged, the rest refused now --
                    t0 = time.monotonic()
                    counts = await asyncio.gather(*[_stream(channel, f"r{k}", 10) for k in range(STREAMS)])
                    read_s = time.monotonic() - t0
                    rss["reading"] = rss_mb(pid)
                    # -- 80 streams that never read: the server stops reading them, not buffering ----
                    read_before, sampler = _items_read(metrics_port), RssPeak(pid)
                    sampler.start()
                    calls = await asyncio.gather(*[_flood(channel, f"f{k}", FLOOD) for k in range(STREAMS)])
                    seen, deadline = [-1, _items_read(metrics_port)], time.monotonic() + 15
                    while seen[-1] != seen[-2] and time.monotonic() < deadline:  # until it stops reading
                        await asyncio.sleep(0.5)
                        seen.append(_items_read(metrics_port))
                    flood_read = seen[-1] - read_before
                    sampler.halt.set()
                    sampler.join()
                    rss["flooded_peak"] = sampler.peak
                    for call in calls:
                        call.cancel()
                await asyncio.sleep(1.0)  # the cancelled streams' in-flight critiques finish
                # -- load gone: a client with retries is served in full -----------------------------
                async with RewardClient(address, max_in_flight=ADMITTED) as client:
                    t0 = time.monotonic()
                    samples = [Sample(f"after-{i}", "Calculate 17 + 25.", "<answer>42</answer>") for i in range(40)]
                    after = [r async for r in client.stream(samples)]
                    after_s = time.monotonic() - t0
                rss["after"] = rss_mb(pid)
                return counts, read_s, flood_read, rss, after, after_s

            counts, read_s, flood_read, rss, after, after_s = asyncio.run(main())
    finally:
        critic.shutdown()

    total = sum(counts, Counter())
    print(f"\n{STREAMS} reading streams x 10 items in {read_s:.1f} s: {dict(total)}; critic peak in flight "
          f"{critic.peak} (admitted {ADMITTED}); {STREAMS} non-reading streams wrote {FLOOD} items each, the "
          f"server read {flood_read} of {STREAMS * FLOOD}; RSS MB {rss}; "
          f"afterwards 40 items in {after_s:.1f} s")
    # never more critiques at once than admitted; the excess refused with a clear status
    assert critic.peak <= ADMITTED
    assert set(total) == {"OK", "RESOURCE_EXHAUSTED"} and total["RESOURCE_EXHAUSTED"] > total["OK"] > 0
    assert sum(total.values()) == STREAMS * 10
    # pushed back: the server read a fraction of what callers that never read answers sent it
    assert flood_read < STREAMS * FLOOD / 2, flood_read
    # memory: bounded, a few tens of MB over idle (the server that read everything: ~100 MB)
    assert rss["flooded_peak"] - rss["before"] < 60, rss
    # recovery: everything answered, none refused any more
    assert len(after) == 40 and all(r.critique is not None and r.critique.score == 1.0 for r in after)
