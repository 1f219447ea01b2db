"""The generator role (`ixt serve generator generator.index=I`): sample responses under positive
feedback and PUSH them as `Sample`s.

One process, one in-process vLLM engine, one loop:

    apply the newest announced weights (ack) -> take `prompts_per_request` prompts of this
    generator's shard -> positive-conditioned prompt ids -> k samples each -> PUSH each `Sample`
    (with the exact sampled token ids and the finish reason)

The positive prefix is the one the announced weights were trained on (`WeightVersion.
positive_critique`: the critique the learner most often trained with label good at the best
score). The initial weights were trained on no feedback at all, so until the first version
arrives the generator samples without a prefix.

Weights change only between engine calls, so every sample of one call carries the version it was
sampled with. A generator (re)started mid-run applies the version recorded in
`run_dir/weights/LATEST` before its first engine call (PUB does not replay earlier announcements).
A prompt too long for `condition.max_seq_len` is skipped, logged and counted
(`generator/prompts_too_long`); the other prompts go on. Back-pressure: PUSH blocks at the
high-water mark and nothing is dropped; a blocked send wakes every `stream.send_timeout_ms` only
to notice a stop. The generator stops after its share of
`stream.max_samples`, when its prompt shard runs out, or on SIGTERM/SIGINT (after the engine call
in flight), closing its sockets with `stream.linger_ms` to flush what is queued.
Left out: overlapping generation with sending (one call at a time), and resuming the prompt
stream after a restart (a restarted generator walks its shard again, with fresh sample ids).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from pathlib import Path

from ixt_stream import models, tasks
from ixt_stream.config import IxtConfig
from ixt_stream.ledger import Ledger
from ixt_stream.metrics import MetricsSink
from ixt_stream.stream import sockets
from ixt_stream.stream.sockets import send_until_stopped
from ixt_stream.types import Sample

log = logging.getLogger(__name__)


def share(total: int, num_generators: int, index: int) -> int | None:
    """This generator's part of `stream.max_samples` (None = no limit)."""
    if not total:
        return None
    return total // num_generators + (1 if index < total % num_generators else 0)


def run(cfg: IxtConfig, stop: threading.Event) -> int:
    """Generate until done or `stop` is set; returns the number of samples sent."""
    from ixt_stream.condition.format import Conditioner, InferenceFeedback
    from ixt_stream.sample.engine import Engine
    from ixt_stream.weights import apply

    gen, stream, name = cfg.generator, cfg.stream, f"generator-{cfg.generator.index}"
    model_dir = models.resolve(cfg.model)
    engine = Engine(model_dir, dtype=gen.dtype, max_model_len=cfg.condition.max_seq_len,
                    kv_cache_gib=gen.kv_cache_gib, threads=gen.threads, seed=cfg.run.seed + gen.index,
                    gpu_memory_utilization=gen.gpu_memory_utilization,
                    tensor_parallel_size=gen.tensor_parallel_size)
    conditioner = Conditioner.from_config(models.load_tokenizer(model_dir), cfg.condition)
    ledger = Ledger(Path(cfg.run.run_dir) / "ledger.sqlite")
    samples = sockets.sender(stream, "samples", cfg.run.run_id)
    acks = sockets.sender(stream, "acks", cfg.run.run_id)
    weights = apply.applier(stream, cfg.run.run_dir, cfg.run.run_id, name)
    sink = MetricsSink.from_config(cfg, name)

    quota = share(stream.max_samples, gen.num_generators, gen.index)
    prompts = tasks.train_prompts(cfg.task, gen.index, gen.num_generators)
    nonce = uuid.uuid4().hex[:8]  # sample ids stay unique across restarts of this generator
    sent, tokens, call, apply_s, too_long, metrics = 0, 0, 0, 0.0, 0, {}
    started = time.perf_counter()
    try:
        while not stop.is_set() and (quota is None or sent < quota):
            # -- weights: newest pending version, applied between engine calls ----------------
            # (the first poll also reads LATEST, so a restarted generator catches up first)
            if (wv := weights.poll()) is not None:
                ack = weights.apply(wv, engine)
                if ack is not None:
                    apply_s = ack.apply_seconds
                    if wv.positive_critique:  # the prefix these weights were trained to follow
                        conditioner.inference = InferenceFeedback(positive=wv.positive_critique)
                    if not send_until_stopped(acks, ack, stop, stream.send_timeout_ms):
                        break
            # -- generate ---------------------------------------------------------------------
            batch = list(itertools.islice(prompts, gen.prompts_per_request))
            if not batch:
                log.info("%s: prompt shard exhausted", name)
                break
            fitting = []
            condition = conditioner.sampling_condition
            for p in batch:
                prompt_ids = conditioner.inference_ids(p.prompt, condition)
                if engine.fits(prompt_ids):
                    fitting.append((p, prompt_ids))
                else:  # skipped and counted; the other prompts go on
                    too_long += 1
                    log.warning("%s: prompt %s has %d tokens, no room within condition.max_seq_len=%d: skipped",
                                name, p.prompt_id, len(prompt_ids), cfg.condition.max_seq_len)
            if not fitting:
                continue
            batch = [p for p, _ in fitting]
            t0 = time.perf_counter()
            outs = engine.generate([i for _, i in fitting], n=gen.samples_per_prompt,
                                   max_new_tokens=gen.sampling.max_new_tokens,
                                   temperature=gen.sampling.temperature, top_p=gen.sampling.top_p)
            engine_s, now, call = time.perf_counter() - t0, time.time(), call + 1
            call_tokens = sum(len(c.token_ids) for completions in outs for c in completions)
            tokens += call_tokens
            pairs = [(p, c) for p, completions in zip(batch, outs, strict=True) for c in completions]
            fresh = [
                Sample(sample_id=f"{name}-{nonce}-{call}-{j}", prompt=p.prompt, response=c.text, task=p.task,
                       reference_answer=p.answer, prompt_id=p.prompt_id, weight_version=weights.version,
                       generator_id=name, created_at=now, num_response_tokens=len(c.token_ids),
                       metadata={"entry": p.metadata_json}, response_token_ids=c.token_ids,
                       finish_reason=c.finish_reason)
                for j, (p, c) in enumerate(pairs)
            ]
            # -- push (blocks at the high-water mark) -----------------------------------------
            # Ledgered before sending: a crash after the send still leaves the sample accounted.
            fresh = fresh[: None if quota is None else quota - sent]
            ledger.generated(fresh)
            t0 = time.perf_counter()
            for k, sample in enumerate(fresh):
                if not send_until_stopped(samples, sample, stop, stream.send_timeout_ms):
                    ledger.dropped([(s.sample_id, "shutdown") for s in fresh[k:]])
                    break
                sent += 1
            # -- report -----------------------------------------------------------------------
            elapsed = time.perf_counter() - started
            metrics = {
                "generator/samples": sent, "generator/samples_per_s": sent / elapsed,
                "generator/tokens_per_s": call_tokens / engine_s, "generator/engine_s": engine_s,
                "generator/send_blocked_s": time.perf_counter() - t0,
                "weights/version": weights.version, "weights/apply_s": apply_s,
                "weights/refused": sum(weights.refused.values()),
                "generator/prompts_too_long": too_long,
            }
            sink.log(metrics, step=call)
            sink.status(metrics)
        log.info("%s: stopping after %d samples, %d tokens, weights v%d; skipped: %d prompts too long",
                 name, sent, tokens, weights.version, too_long)
        # done: its work is finished (quota or shard), so `ixt status` shows it finished, not dead
        sink.status({**metrics, "generator/samples": sent, "generator/prompts_too_long": too_long,
                     "done": not stop.is_set()})
        return sent
    finally:
        ledger.close()
        sink.close()
        weights.close()
        acks.close()
        samples.close()


def main(cfg: IxtConfig) -> int:
    """The role's entry point: logging, threads, signals -> heavy imports (vLLM) -> generate -> stop on
    SIGTERM/SIGINT after the engine call in flight."""
    from ixt_stream.roles import prepare

    run(cfg, prepare(cfg, f"generator-{cfg.generator.index}", cfg.generator.threads))
    return 0
