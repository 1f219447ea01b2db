"""Every shipped reward config builds its backend (or fails with the fix); the serve dispatcher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from ixt_stream import cli
from ixt_stream.config import CONFIG_DIR, load
from ixt_stream.critique import registry
from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.completers import SGLANG_MISSING, OpenAICompleter
from ixt_stream.critique.isolate import IsolatedBackend
from ixt_stream.critique.llm import LLMBackend

SHIPPED = sorted(p.stem for p in (Path(CONFIG_DIR) / "reward").glob("*.yaml"))


def test_every_backend_has_a_config():
    assert SHIPPED == sorted(["hybrid", "null_critic", "openai", "sglang", "verifier", "vllm"])


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in ("vllm", "hybrid")])  # those load vLLM: slow
def test_shipped_configs_build_their_backend(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang", None)
    cfg = load([f"reward={name}"])
    name = cfg.reward.backend  # null_critic.yaml selects backend "null" (a bare `null` is YAML's None)
    if name == "sglang":
        with pytest.raises(RuntimeError, match="GPU nodes only"):
            registry.build(cfg)
        return
    backend = registry.build(cfg)
    expected = {"null": NullBackend, "verifier": IsolatedBackend, "openai": LLMBackend}[name]  # verifier: in workers
    assert isinstance(backend, expected) and backend.card().backend == name
    if name == "openai":
        assert isinstance(backend.completer, OpenAICompleter) and backend.completer.api == "chat"
    asyncio.run(backend.aclose())


def test_sglang_error_names_the_alternatives():
    assert "backend=vllm" in SGLANG_MISSING and "backend=openai" in SGLANG_MISSING


def test_serve_dispatcher_rejects_unknown_roles_and_bad_overrides(capsys):
    assert cli.main(["serve"]) == 2
    assert cli.main(["serve", "no-such-role"]) == 2
    assert "reward" in capsys.readouterr().err
    assert cli.main(["serve", "reward", "reward.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "reward.no_such_key" in err


def test_reward_main_refuses_an_exposed_port_before_loading_anything():
    done = subprocess.run([sys.executable, "-m", "ixt_stream.cli", "serve", "reward", "reward.host=0.0.0.0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "refusing to serve on non-loopback host" in done.stderr
