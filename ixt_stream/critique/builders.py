"""The built-in reward backends, each built from the config by name (`registry.BACKENDS`).

Constructors take plain parameters; these functions are where config sections meet them. An LLM
critic's model is `reward.llm.model`, or the policy model when that is empty.
Left out: backends of other modules (they carry their own builder; see `registry`).
"""

from __future__ import annotations

import os

from ixt_stream import models
from ixt_stream.config import IxtConfig, ModelConfig
from ixt_stream.critique import completers
from ixt_stream.critique.backend import Backend, NullBackend
from ixt_stream.critique.llm import Completer, LLMBackend
from ixt_stream.critique.verifier import VerifierBackend


def critic_model_dir(cfg: IxtConfig) -> str:
    """`reward.llm.model` ("tiny", "smollm2-135m" or a folder), or the policy model when empty."""
    if not cfg.reward.llm.model:
        return models.resolve(cfg.model)
    return models.resolve(ModelConfig(name=cfg.reward.llm.model, cache_dir=cfg.model.cache_dir,
                                      tiny=cfg.model.tiny, seed=cfg.model.seed))


def null(cfg: IxtConfig) -> Backend:
    return NullBackend()


def verifier(cfg: IxtConfig) -> Backend:
    """In `reward.judge_workers` worker processes (isolated, with a timeout), or on the event loop."""
    r = cfg.reward
    if r.judge_workers:
        from ixt_stream.critique.isolate import IsolatedBackend

        return IsolatedBackend("ixt_stream.critique.verifier:VerifierBackend", {"warm_tasks": list(cfg.task.names)},
                               workers=r.judge_workers, timeout_s=r.judge_timeout_s)
    return VerifierBackend(warm_tasks=cfg.task.names)


def _llm(cfg: IxtConfig, completer: Completer, verify: bool = False) -> Backend:
    verdicts = VerifierBackend(warm_tasks=cfg.task.names) if verify else None
    return LLMBackend(completer, str(cfg.reward.backend), verifier=verdicts,
                      max_critique_chars=cfg.reward.llm.max_critique_chars)


def openai(cfg: IxtConfig) -> Backend:
    llm = cfg.reward.llm
    return _llm(cfg, completers.OpenAICompleter(
        llm.base_url, llm.model, api=llm.api, api_key=os.environ.get(llm.api_key_env, ""),
        max_new_tokens=llm.sampling.max_new_tokens, temperature=llm.sampling.temperature,
        top_p=llm.sampling.top_p, timeout_s=llm.request_timeout_s,
        max_connections=cfg.reward.max_concurrent_requests))


def sglang(cfg: IxtConfig) -> Backend:
    llm = cfg.reward.llm
    return _llm(cfg, completers.SGLangCompleter(
        critic_model_dir(cfg), dtype=str(llm.dtype), max_model_len=llm.max_model_len,
        max_new_tokens=llm.sampling.max_new_tokens, temperature=llm.sampling.temperature,
        top_p=llm.sampling.top_p, seed=cfg.run.seed))


def _vllm(cfg: IxtConfig) -> Completer:
    llm = cfg.reward.llm
    return completers.VLLMCompleter(
        critic_model_dir(cfg), dtype=str(llm.dtype), max_model_len=llm.max_model_len,
        max_new_tokens=llm.sampling.max_new_tokens, temperature=llm.sampling.temperature,
        top_p=llm.sampling.top_p, kv_cache_gib=llm.kv_cache_gib,
        seed=cfg.run.seed, max_batch_size=llm.max_batch_size, batch_wait_ms=llm.batch_wait_ms)


def vllm(cfg: IxtConfig) -> Backend:
    return _llm(cfg, _vllm(cfg))


def hybrid(cfg: IxtConfig) -> Backend:
    """The verifier's verdict (score, label), the LLM's words."""
    return _llm(cfg, _vllm(cfg), verify=True)
