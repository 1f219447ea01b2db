"""The reward-model service: `ixt serve reward [overrides]` or `python -m services.reward.main [overrides]`.

parse config -> logging -> heavy imports -> build the critic -> serve under uvloop -> clean up.
The backend is built before the port opens, so health says SERVING exactly when critiques can be
answered (an LLM critic takes seconds to load; clients wait on health). This is the only place
that turns `reward.backend` into an object.
"""

from __future__ import annotations

import logging
import os
import sys

from ixt_stream.config import ConfigError, IxtConfig, ModelConfig, load_or_exit

log = logging.getLogger("ixt.reward")


def critic_model_dir(cfg: IxtConfig) -> str:
    """`reward.llm.model` ("tiny", "smollm2-135m" or a folder), or the policy model when empty."""
    from ixt_stream import models

    if not cfg.reward.llm.model:
        return models.resolve(cfg.model)
    return models.resolve(ModelConfig(name=cfg.reward.llm.model, cache_dir=cfg.model.cache_dir,
                                      tiny=cfg.model.tiny, seed=cfg.model.seed))


def build_backend(cfg: IxtConfig):
    """The critic named by `reward.backend`, built from config (the one place that does so)."""
    from ixt_stream.critique import completers
    from ixt_stream.critique.backend import NullBackend
    from ixt_stream.critique.llm import LLMBackend
    from ixt_stream.critique.verifier import VerifierBackend

    r, llm = cfg.reward, cfg.reward.llm
    if r.backend == "null":
        return NullBackend()
    if r.backend == "verifier" and r.judge_workers:
        from ixt_stream.critique.isolate import IsolatedBackend

        return IsolatedBackend("ixt_stream.critique.verifier:VerifierBackend", {"warm_tasks": list(cfg.task.names)},
                               workers=r.judge_workers, timeout_s=r.judge_timeout_s)
    if r.backend == "verifier":
        return VerifierBackend(warm_tasks=cfg.task.names)
    if r.backend == "openai":
        completer = completers.OpenAICompleter(
            llm.base_url, llm.model, api=llm.api, api_key=os.environ.get(llm.api_key_env, ""),
            max_new_tokens=llm.max_new_tokens, temperature=llm.temperature, timeout_s=llm.request_timeout_s,
            max_connections=r.max_concurrent_requests)
    elif r.backend == "sglang":
        completer = completers.SGLangCompleter(
            critic_model_dir(cfg), dtype=llm.dtype, max_model_len=llm.max_model_len,
            max_new_tokens=llm.max_new_tokens, temperature=llm.temperature, seed=cfg.run.seed)
    elif r.backend in ("vllm", "hybrid"):
        completer = completers.VLLMCompleter(
            critic_model_dir(cfg), dtype=llm.dtype, max_model_len=llm.max_model_len,
            max_new_tokens=llm.max_new_tokens, temperature=llm.temperature, kv_cache_gib=llm.kv_cache_gib,
            seed=cfg.run.seed, max_batch_size=llm.max_batch_size, batch_wait_ms=llm.batch_wait_ms)
    else:
        raise ConfigError(f"reward.backend: unknown backend {r.backend!r}")
    verifier = VerifierBackend(warm_tasks=cfg.task.names) if r.backend == "hybrid" else None
    return LLMBackend(completer, r.backend, verifier=verifier, max_critique_chars=llm.max_critique_chars)


def run(cfg: IxtConfig) -> int:
    logging.basicConfig(level=cfg.run.log_level,
                        format="%(asctime)s %(levelname)s reward %(name)s: %(message)s")
    import prometheus_client
    import uvloop

    from ixt_stream.critique.security import check_exposure, read_secret
    from ixt_stream.critique.server import serve
    from ixt_stream.online.supervisor import write_status

    # fail before a model loads
    check_exposure(cfg.reward.host, read_secret(cfg.reward.auth_token_file, "reward.auth_token_file"))
    if cfg.run.metrics_port:
        prometheus_client.start_http_server(cfg.run.metrics_port, addr="127.0.0.1")
    log.info("building the %s critic", cfg.reward.backend)
    backend = build_backend(cfg)
    uvloop.run(serve(backend, cfg.reward, status=lambda s: write_status(cfg.run.run_dir, "reward", s)))
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = load_or_exit(argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
