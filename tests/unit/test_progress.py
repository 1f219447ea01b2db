"""Progress bars: drawn on a terminal (count, rate, ETA), silent in logs and with run.progress=false."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

from ixt_stream import progress

SNIPPET = """
import logging, time
from ixt_stream import progress
logging.basicConfig(level="INFO")
with progress.bar(total=4, desc="work", unit="step") as bar:
    for _ in range(4):
        time.sleep(0.05)
        logging.getLogger("x").info("a log line")
        bar.update()
"""


def _on_a_terminal(env: dict) -> str:
    """Run SNIPPET with stderr on a 120-column pseudo-terminal; returns what it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        subprocess.run([sys.executable, "-c", SNIPPET], stderr=slave, stdout=subprocess.DEVNULL, timeout=60,
                       env=env, check=True)
    finally:
        os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal is closed and drained
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return out.decode(errors="replace")


def test_a_bar_shows_count_rate_and_eta_on_a_terminal():
    drawn = _on_a_terminal({k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"})
    assert "work: 100%" in drawn and "4/4" in drawn and ("step/s" in drawn or "s/step" in drawn)
    assert "work:  25%" in drawn and "<" in drawn  # elapsed<remaining: the ETA
    assert drawn.count("a log line") == 4  # log lines go above the bar, whole


def test_run_progress_false_silences_every_bar():
    drawn = _on_a_terminal({**os.environ, "TQDM_DISABLE": "1"})
    assert "work" not in drawn and drawn.count("a log line") == 4


def test_no_bar_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with progress.bar(total=2, desc="quiet") as bar:
        bar.update(2)
    assert bar.disable and "quiet" not in capsys.readouterr().err
    assert progress.labelled("eval") is False  # vLLM then draws nothing


def test_a_librarys_bar_gets_our_label(monkeypatch):
    monkeypatch.setattr(progress, "enabled", lambda: True)
    drawn = io.StringIO()
    with progress.labelled("eval")(total=3, desc="Processed prompts", file=drawn) as vllm_style:  # as vLLM calls it
        vllm_style.update(3)
    assert "eval: Processed prompts: 100%" in drawn.getvalue()


def test_configure_reaches_subprocesses(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    progress.configure(True)
    assert "TQDM_DISABLE" not in os.environ
    progress.configure(False)
    assert os.environ["TQDM_DISABLE"] == "1"
