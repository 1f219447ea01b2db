"""`ixt annotate`: JSONL in -> annotated JSONL out, resumable after a real kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ixt_stream.corpus import Skips, prepare_output, read_annotated, read_samples
from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.client import RewardClient
from ixt_stream.critique.server import RewardServer
from ixt_stream.offline.annotate import annotate
from ixt_stream.types import Label, Sample
from tests.conftest import free_port

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_prepare_output_cuts_a_half_written_line(tmp_path):
    out = tmp_path / "a.jsonl"
    out.write_text('{"sample_id": "a"}\n{"sample_id": "b"}\n{"sample_id": "c", "crit')
    assert prepare_output(out) == {"a", "b"}
    assert out.read_text() == '{"sample_id": "a"}\n{"sample_id": "b"}\n'
    assert prepare_output(tmp_path / "new" / "b.jsonl") == set()  # and makes the folder


def test_jsonl_pairs_and_documents_are_annotated_once(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": "p1", "prompt": "Say hi.", "response": "hi", "metadata": {"entry": {"k": 1}}},
            {"text": "A raw document about rivers."},
            {"id": "p1", "prompt": "Say hi.", "response": "duplicate id"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"

    async def main():
        server = RewardServer(NullBackend(), port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}") as client:
                first = await annotate(read_samples(src), client, out, prepare_output(out))
                again = await annotate(read_samples(src), client, out, prepare_output(out))
        finally:
            await server.stop()
        return first, again

    first, again = asyncio.run(main())
    assert (first.written, first.skipped) == (2, 1) and (again.written, again.skipped) == (0, 3)
    pairs = dict((s.sample_id, (s, c)) for s, c in read_annotated(out))
    assert set(pairs) == {"p1", "in-1"}
    doc, crit = pairs["in-1"]
    assert doc.is_document and doc.response == "A raw document about rivers."
    assert crit.label == Label.MIXED and crit.critique == NullBackend.CRITIQUE and crit.model_id == "null"
    assert pairs["p1"][0].metadata == {"entry": '{"k": 1}'}
    assert set(json.loads(out.read_text().splitlines()[0])) >= {"prompt", "response", "critique", "score", "label"}


def start_reward(tmp_path: Path, port: int, *overrides: str) -> subprocess.Popen:
    log = open(tmp_path / "reward.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ixt_stream.cli", "serve", "reward", f"reward.port={port}",
                             f"run.run_dir={tmp_path / 'run'}", *overrides],
                            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def annotate_cmd(port: int, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "ixt_stream.cli", "annotate", f"client.address=127.0.0.1:{port}",
            f"annotate.output={out}", "annotate.source=tasks", *overrides]


def ids_in(out: Path) -> list[str]:
    return [json.loads(line)["sample_id"] for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_annotate_resumes_after_kill_9(tmp_path):
    port, out, n = free_port(), tmp_path / "annotated.jsonl", 16_000
    reward = start_reward(tmp_path, port)
    cmd = annotate_cmd(port, out, "annotate.responses=synthetic", f"annotate.num_samples={n}",
                       "generator.samples_per_prompt=4", "task=mixed")
    try:
        victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 120
        while not out.exists() or out.stat().st_size < 400_000:  # ~1,000 lines
            assert victim.poll() is None, victim.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "reward.log").read_text()[-3000:]
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        partial = len(out.read_bytes().splitlines())
        assert 0 < partial < n
        with out.open("a") as f:  # and as if the kill had landed mid-line
            f.write('{"sample_id": "train-chain_sum-0-3-0", "critique": "half a li')

        rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert "critiques/s" in rerun.stdout and "already done" in rerun.stdout
        print(rerun.stdout.strip().splitlines()[-1])
    finally:
        reward.send_signal(signal.SIGTERM)
        assert reward.wait(30) == 0, (tmp_path / "reward.log").read_text()[-3000:]

    ids = ids_in(out)
    counts = Counter(ids)
    assert len(ids) == n and max(counts.values()) == 1  # every id, exactly once
    assert all(json.loads(line)["label"] in ("good", "mixed", "bad") for line in out.read_text().splitlines())
    status = json.loads((tmp_path / "run" / "status" / "reward.json").read_text())
    assert status["backend"] == "verifier" and status["critiques"] >= n


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_annotate_policy_samples_from_tiny_model(tmp_path):
    port, out = free_port(), tmp_path / "policy.jsonl"
    reward = start_reward(tmp_path, port)
    try:
        cmd = annotate_cmd(port, out, "model=tiny", "annotate.responses=policy", "annotate.num_samples=10",
                           "generator.samples_per_prompt=4", "generator.sampling.max_new_tokens=24",
                           "generator.dtype=float32")
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        print(done.stdout.strip().splitlines()[-1])
    finally:
        reward.send_signal(signal.SIGTERM)
        reward.wait(30)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10
    assert len({r["prompt_id"] for r in rows}) == 3 and all(r["num_response_tokens"] > 0 for r in rows)
    assert all(r["task"] == "basic_arithmetic" and json.loads(r["metadata"]["entry"]) for r in rows)
    assert all(r["model_id"] == "verifier" and 0.0 <= r["score"] <= 1.0 for r in rows)


# -- bad inputs (issue 13, items 3 and 5) -----------------------------------------------------

BAD_LINES = [
    b'{"id": "trunc", "prompt": "Say hi.", "respon\n',  # truncated
    b'{"id": "bytes", "prompt": "Say hi.", "response": "caf\xe9"}\n',  # latin-1, not UTF-8
    b'{"id": "null", "prompt": "Say hi.", "response": null}\n',
    b'["an", "array"]\n',
    b'{"id": "nested", "prompt": "x", "response": "y", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
    b'{"id": "number", "prompt": 7, "response": "hi"}\n',
    b'{"id": "nothing", "prompt": "Say hi."}\n',
]
BAD_REASONS = {"not_json": 1, "not_utf8": 1, "bad_field": 3, "not_object": 1, "too_deep": 1}


def corpus(path: Path) -> Path:
    good = [json.dumps({"id": f"ok-{i}", "prompt": "Say hi.", "response": f"hi {i}"}).encode() + b"\n"
            for i in range(3)]
    path.write_bytes(good[0] + b"".join(BAD_LINES) + good[1] + b"\n" + good[2])
    return path


@pytest.mark.timeout(30)
def test_bad_corpus_lines_are_reported_skipped_and_counted(tmp_path, caplog):
    src, out = corpus(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"

    async def main():
        server = RewardServer(NullBackend(), port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}") as client:
                skips = Skips()
                return await annotate(read_samples(src, skips=skips), client, out, prepare_output(out), skips)
        finally:
            await server.stop()

    stats = asyncio.run(main())
    assert stats.written == 3 and sorted(ids_in(out)) == ["ok-0", "ok-1", "ok-2"]
    assert dict(stats.bad.reasons) == BAD_REASONS and stats.bad.total == len(BAD_LINES)
    for line in range(2, 2 + len(BAD_LINES)):  # each named as file:line
        assert f"{src}:{line}: " in caplog.text
    assert "'response' is null, not a str" in caplog.text


@pytest.mark.timeout(30)
def test_a_failing_source_reaches_the_caller_and_nothing_hangs(tmp_path):
    """The root cause of the hangs: an exception in the sample source of `RewardClient.stream`."""
    out = tmp_path / "out.jsonl"

    async def broken_engine():  # what a crashing vLLM call looks like from the stream
        yield Sample(sample_id="a", prompt="p", response="r")
        yield Sample(sample_id="b", prompt="p", response="r")
        raise RuntimeError("CPU Generator does not use offset")

    def broken_file():
        yield Sample(sample_id="c", prompt="p", response="r")
        raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")

    async def main():
        server = RewardServer(NullBackend(), port=0)
        port = await server.start()
        try:
            async with RewardClient(f"127.0.0.1:{port}") as client:
                with pytest.raises(RuntimeError, match="does not use offset"):
                    await annotate(broken_engine(), client, out, set())
                with pytest.raises(UnicodeDecodeError):
                    await annotate(broken_file(), client, out, set())
                # a sample whose fields cannot even be encoded is one failed item, the stream goes on
                odd = Sample(sample_id="d", prompt="p", response=None)  # type: ignore[arg-type]
                return [r async for r in client.stream([odd, Sample(sample_id="e", prompt="p", response="r")])]
        finally:
            await server.stop()

    results = asyncio.run(main())
    assert {r.sample.sample_id: (r.error.code if r.error else "OK") for r in results} == {
        "d": "INVALID_ARGUMENT", "e": "OK"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ixt_annotate_on_a_bad_corpus_ends_with_a_summary_and_exit_1(tmp_path):
    port, src, out = free_port(), corpus(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    reward = start_reward(tmp_path, port, "reward=null_critic")
    try:
        cmd = annotate_cmd(port, out, "annotate.source=jsonl", f"annotate.input={src}", "annotate.num_samples=0")
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        summary = done.stdout.strip().splitlines()[-1]
        assert "annotated 3 samples" in summary and f"{len(BAD_LINES)} skipped" in summary, summary
        assert all(f"'{k}': {v}" in summary for k, v in BAD_REASONS.items()), summary
        assert f"{src}:2: not_json" in done.stderr and f"{src}:3: not_utf8" in done.stderr

        strict = subprocess.run([*cmd, f"annotate.output={tmp_path / 'strict.jsonl'}", "run.bad_input=fail"],
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert strict.returncode == 1 and f"bad input: {src}:2: not_json" in strict.stderr, strict.stderr[-3000:]
        assert "Traceback" not in strict.stderr
    finally:
        reward.send_signal(signal.SIGTERM)
        reward.wait(30)
