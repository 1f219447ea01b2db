"""Small things a user meets (issue 13, item 11): one line naming the setting instead of a
traceback, `ixt status` telling a finished service from a dead one, and the README's grpcurl
health command on an authenticated server."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
import zmq

from ixt_stream import metrics
from ixt_stream.config import ConfigError, StreamConfig, load
from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.server import RewardServer
from ixt_stream.online import launch, supervisor
from ixt_stream.stream import sockets
from tests.conftest import free_port
from tests.integration.test_annotate import ENV
from tests.integration.test_reward_service import _grpcurl

pytestmark = pytest.mark.timeout(120)


def ixt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ixt_stream.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=90)


def test_a_refused_bind_or_a_bad_token_file_is_one_line_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = ixt("serve", "reward", "reward=null_critic", f"reward.port={port}", f"run.run_dir={tmp_path}")
    missing = ixt("serve", "reward", f"reward.auth_token_file={tmp_path / 'nope.txt'}", f"run.run_dir={tmp_path}")
    (tmp_path / "empty.txt").write_text("\n")
    empty = ixt("annotate", f"client.auth_token_file={tmp_path / 'empty.txt'}", "annotate.responses=synthetic")
    for done, setting in ((busy, "reward.host/reward.port"), (missing, "reward.auth_token_file"),
                          (empty, "client.auth_token_file")):
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and f"config error: {setting}: " in done.stderr, done.stderr[-2000:]


def test_a_zeromq_port_in_use_names_its_setting():
    cfg = StreamConfig(samples_port=free_port())
    first = sockets.receiver(cfg, "samples", "r")
    try:
        with pytest.raises(ConfigError, match=rf"stream.samples_port: cannot bind tcp://127.0.0.1:{cfg.samples_port}"):
            sockets.receiver(cfg, "samples", "r", ctx=zmq.Context.instance())
    finally:
        first.close()


def test_status_shows_a_service_that_finished_as_finished_not_dead(tmp_path, capsys):
    run_dir = tmp_path / "run"
    for name, done in (("learner", True), ("generator-0", True)):
        proc = subprocess.Popen(["true"], start_new_session=True)
        proc.wait()
        (run_dir / "pids").mkdir(parents=True, exist_ok=True)
        (run_dir / "pids" / f"{name}.json").write_text(json.dumps({"pid": proc.pid, "start": 0, "argv": []}))
        metrics.write_status(run_dir, name, {"steps": 12, "done": done})
    assert launch.status_main(load([f"run.run_dir={run_dir}"]), []) == 0
    out = capsys.readouterr().out
    assert out.count("finished") == 2 and "DEAD" not in out

    metrics.write_status(run_dir, "learner", {"steps": 5, "done": False})  # died mid-run
    assert launch.status_main(load([f"run.run_dir={run_dir}"]), []) == 1
    assert "DEAD" in capsys.readouterr().out


def test_readme_grpcurl_health_command_works_on_an_authenticated_server(tmp_path):
    readme = (supervisor.Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert 'grpcurl -plaintext -H "authorization: Bearer $(cat token.txt)"' in readme
    (tmp_path / "token.txt").write_text("s3cret\n")
    grpcurl = _grpcurl()

    async def main():
        server = RewardServer(NullBackend(), port=0, auth_token="s3cret")
        port = await server.start()
        try:
            results = []
            for header in ([], ["-H", "authorization: Bearer s3cret"]):
                proc = await asyncio.create_subprocess_exec(
                    grpcurl, "-plaintext", *header, f"127.0.0.1:{port}", "grpc.health.v1.Health/Check",
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                results.append((proc.returncode, out.decode()))
            return results
        finally:
            await server.stop()

    t0 = time.monotonic()
    (plain_rc, plain_out), (auth_rc, auth_out) = asyncio.run(main())
    assert plain_rc != 0 and "Unauthenticated" in plain_out  # why the README shows the header
    assert auth_rc == 0 and json.loads(auth_out)["status"] == "SERVING", auth_out
    assert time.monotonic() - t0 < 60
