"""`ixt up` / `status` / `down` over dummy roles: every process, children included, is gone after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ixt_stream import metrics
from ixt_stream.config import load
from ixt_stream.online import supervisor
from ixt_stream.online.supervisor import Service

PY = sys.executable


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its (test-process) parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_for(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def dummies(run_dir: Path) -> list[Service]:
    child_file = run_dir / "grandchild.pid"
    return [
        Service("sleeper", [PY, "-c", "import time; time.sleep(600)"]),
        Service("parent", [PY, "-c", (  # a role that spawns a helper process of its own
            "import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(child_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(600)")]),
        Service("stubborn", [PY, "-c", (  # ignores SIGTERM: needs the SIGKILL
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")]),
        Service("reporter", [PY, "-c", (
            "import time\nfrom ixt_stream.metrics import write_status\n"
            f"write_status({str(run_dir)!r}, 'reporter', {{'step': 3, 'samples_per_s': 1.25}})\n"
            "time.sleep(600)")], threads=2),
    ]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ixt_stream.cli", *args], capture_output=True, text=True, timeout=120)


def test_up_status_down_leaves_no_process_behind(tmp_path):
    run_dir = tmp_path / "run"
    started = supervisor.up(run_dir, dummies(run_dir), settle_s=0.5)
    try:
        assert set(started) == {"sleeper", "parent", "stubborn", "reporter"}
        assert supervisor.up(run_dir, dummies(run_dir), settle_s=0) == {}  # all alive: nothing restarted
        assert wait_for(lambda: (run_dir / "grandchild.pid").exists())
        grandchild = int((run_dir / "grandchild.pid").read_text())
        environ = Path(f"/proc/{started['reporter']}/environ").read_bytes().split(b"\0")
        assert b"OMP_NUM_THREADS=2" in environ
        assert wait_for(lambda: metrics.read_status(run_dir, "reporter").get("step") == 3)

        shown = cli("status", f"run.run_dir={run_dir}")
        assert shown.returncode == 0, shown.stderr
        for name in started:
            assert name in shown.stdout
        assert "step=3" in shown.stdout and "samples_per_s=1.25" in shown.stdout

        stopped = cli("down", f"run.run_dir={run_dir}", "run.stop_grace_s=1")
        assert stopped.returncode == 0, stopped.stderr
        assert "stubborn       killed" in stopped.stdout and "sleeper        stopped" in stopped.stdout
    finally:
        supervisor.down(run_dir, grace_s=1)
    for pid in [*started.values(), grandchild]:
        assert wait_for(lambda pid=pid: gone(pid), 5), f"pid {pid} survived down"
    assert not list((run_dir / "pids").glob("*.json"))
    assert all(not r["alive"] for r in supervisor.status(run_dir))


def test_a_role_that_dies_at_start_is_reported_with_its_log(tmp_path):
    crash = Service("crasher", [PY, "-c", "import sys; print('bad config: boom'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match="(?s)crasher.*bad config: boom"):
        supervisor.up(tmp_path, [crash], settle_s=1.0)
    assert supervisor.status(tmp_path)[0]["alive"] is False
    assert supervisor.down(tmp_path, grace_s=1) == {"crasher": "not running"}


def test_a_recycled_pid_is_never_signalled(tmp_path):
    """A stale pid file naming a live, unrelated process (here: this test) leaves it alone."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "ghost.json").write_text(f'{{"pid": {os.getpid()}, "start": 1, "argv": []}}')
    assert supervisor.status(tmp_path)[0]["alive"] is False
    assert supervisor.down(tmp_path, grace_s=1) == {"ghost": "not running"}


def test_stack_lists_every_role_with_its_own_overrides():
    cfg = load(["generator.num_generators=2", "run.metrics_port=9100", "generator.threads=2"])
    services = supervisor.stack(cfg, ["profile=smoke"])
    assert [s.name for s in services] == ["reward", "learner", "orchestrator", "generator-0", "generator-1"]
    gen1 = services[-1]
    assert gen1.argv[-4:] == ["generator", "profile=smoke", "generator.index=1", "run.metrics_port=9104"]
    assert gen1.threads == 2
    assert len({s.argv[-1] for s in services}) == len(services)  # one prometheus port each
