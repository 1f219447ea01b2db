"""Reward backends by name: `reward.backend` -> the function that builds it from the config.

A builder takes the whole `IxtConfig` and returns a `backend.Backend`; the built-in ones are in
`builders`. A new backend is one new module (its class and its builder) plus one line here: the
config's `RewardBackend` choices and the reward role (`server.main`) read this table. Imports
only `lazy`, so the config can read it without torch; a builder's module is imported only to build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ixt_stream import lazy

if TYPE_CHECKING:
    from ixt_stream.config import IxtConfig
    from ixt_stream.critique.backend import Backend

BACKENDS: dict[str, str] = {
    "verifier": "ixt_stream.critique.builders:verifier",
    "vllm": "ixt_stream.critique.builders:vllm",
    "openai": "ixt_stream.critique.builders:openai",
    "hybrid": "ixt_stream.critique.builders:hybrid",
    "sglang": "ixt_stream.critique.builders:sglang",
    "null": "ixt_stream.critique.builders:null",
    "process": "ixt_stream.critique.process:build",
}


def build(cfg: IxtConfig) -> Backend:
    """The critic `reward.backend` names, built from config (the one place that turns the name into
    an object; the server builds it before its port opens)."""
    return lazy.resolve(lazy.choose(BACKENDS, str(cfg.reward.backend), "reward backend"))(cfg)
