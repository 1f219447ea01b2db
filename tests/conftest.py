"""Shared fixtures: offline model folders (built once per machine, cached), free ports, and teardown."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from ixt_stream import models
    from ixt_stream.config import ModelConfig

    return models.resolve(ModelConfig())


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    from ixt_stream import models
    from ixt_stream.config import ModelConfig

    return models.resolve(ModelConfig(name="tiny"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from ixt_stream import models

    return models.load_tokenizer(smollm2_dir)


_HANDED_OUT: set[int] = set()
_PICK = random.Random(os.getpid())


def free_port() -> int:
    """A port that binds now, below the kernel's ephemeral range (32768+): a port the kernel hands
    out for bind(0) can be taken by any outgoing connection (a ZeroMQ reconnect) before the
    service it was meant for binds it (CI saw torchrun's store fail with EADDRINUSE that way)."""
    while True:
        port = _PICK.randrange(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


@pytest.fixture
def port() -> int:
    return free_port()


def reap(proc: subprocess.Popen) -> None:
    """Kill what is left of a subprocess started in its own session (its whole group) and wait."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def teardown():
    """An ExitStack unwound after the test, pass or fail (last registered, first undone): register
    sockets and publishers (`teardown.callback(end.close)`) and processes (`teardown.callback(reap,
    proc)`) as they are made, instead of a try/finally in every test."""
    with contextlib.ExitStack() as stack:
        yield stack
