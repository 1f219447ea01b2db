"""Shared fixtures: offline model folders (built once per machine, cached), free ports, and teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest

from ixt_stream import net

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


free_port = net.free_port


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
