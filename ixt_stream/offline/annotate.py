"""`ixt annotate [overrides]`: stream a dataset through the reward service into annotated rows.

Sources (`annotate.source`):
  - file: `annotate.input` (JSONL, Parquet or a `datasets` folder, read by `corpus`) holds
    {"prompt", "response", "task"?, "answer"?, "metadata"?, "id"?} pairs or {"text", "id"?} raw
    documents; `annotate.columns` renames those columns.
  - tasks: reasoning-gym prompts (`task.*`) with `generator.samples_per_prompt` responses each,
    sampled from the policy model with vLLM (`annotate.responses=policy`) or written by
    `synthetic.py` with controlled error types (`annotate.responses=synthetic`).
Every sample goes through `RewardClient.stream` (bounded in flight, retried); each critique is
appended as one JSON line (the sample's fields + the critique's, `corpus.annotated_row`) and
flushed, to `annotate.output` or, for a Parquet output, to its journal until the end.
A rerun resumes: ids already in the output are skipped, and a half-written last line (a kill
mid-write) is cut off first, so after any crash every id ends up in the file exactly once.
A bad input row (not JSON or UTF-8, a null or non-string field, an array) or a prompt too long
for `condition.max_seq_len` is reported as `file:line: reason` (`corpus.Skips`), skipped and
counted, and the run exits 1 at the end with the counts in its summary (`run.bad_input=fail`:
stop at the first).
Left out: sharding over several reward services.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ixt_stream import corpus, logs, progress
from ixt_stream.condition import leak
from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.corpus import BadInput, Skips, annotated_row, prepare_output
from ixt_stream.types import Sample

log = logging.getLogger("ixt.annotate")

# -- sources ----------------------------------------------------------------------------------


def _prompts(cfg: IxtConfig, num_samples: int) -> list[tuple[object, list[int]]]:
    """The task prompts behind `num_samples` samples, each with its sample indices (k, or fewer last)."""
    import itertools

    from ixt_stream import tasks

    k = cfg.generator.samples_per_prompt
    prompts = itertools.islice(tasks.train_prompts(cfg.task), math.ceil(num_samples / k))
    return [(p, [j for j in range(k) if i * k + j < num_samples]) for i, p in enumerate(prompts)]


def _sample(prompt, j: int, response: str, **extra) -> Sample:
    return Sample(sample_id=f"{prompt.prompt_id}-{j}", prompt=prompt.prompt, response=response,
                  task=prompt.task, reference_answer=prompt.answer, prompt_id=prompt.prompt_id,
                  generator_id="annotate", created_at=time.time(),
                  metadata={"entry": prompt.metadata_json, **extra.pop("metadata", {})}, **extra)


def synthetic_task_samples(cfg: IxtConfig, num_samples: int) -> Iterator[Sample]:
    """reasoning-gym prompts with synthetic responses of known error types (deterministic)."""
    from ixt_stream.offline.synthetic import synthetic_response

    for p, js in _prompts(cfg, num_samples):
        for j in js:
            sample_id = f"{p.prompt_id}-{j}"
            kind, text = synthetic_response(p.prompt, p.answer, seed=f"{cfg.run.seed}:{sample_id}")
            yield _sample(p, j, text, metadata={"synthetic": kind})


async def policy_task_samples(cfg: IxtConfig, num_samples: int, done: set[str],
                              skips: Skips) -> AsyncIterator[Sample]:
    """reasoning-gym prompts answered by the policy model on in-process vLLM (k samples each).

    Prompts whose samples are all done are not generated again; generation runs on a worker
    thread so critiques of the previous chunk stream while the next one is sampled. A prompt too
    long for `condition.max_seq_len` is skipped and counted (`prompt_too_long`); an engine error
    ends the stream with that error (the command fails, it never waits).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ixt_stream import models
    from ixt_stream.condition.format import Conditioner
    from ixt_stream.sample.engine import Engine

    k, g = cfg.generator.samples_per_prompt, cfg.generator
    todo = [(p, js) for p, js in _prompts(cfg, num_samples)
            if any(f"{p.prompt_id}-{j}" not in done for j in js)]
    if not todo:
        return
    model_dir = models.resolve(cfg.model)
    cond = Conditioner(models.load_tokenizer(model_dir), mode="none")
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="annotate-vllm") as pool:  # the engine lives on one thread
        engine = await loop.run_in_executor(pool, lambda: Engine(
            model_dir, dtype=g.dtype, max_model_len=cfg.condition.max_seq_len, kv_cache_gib=g.kv_cache_gib,
            threads=g.threads, seed=cfg.run.seed))
        chunk = max(g.prompts_per_request, 1)
        for start in range(0, len(todo), chunk):
            batch, ids = [], []
            for p, js in todo[start:start + chunk]:
                prompt_ids = cond.inference_ids(p.prompt, "none")
                if engine.fits(prompt_ids):
                    batch.append((p, js))
                    ids.append(prompt_ids)
                else:
                    skips.bad(p.prompt_id, "prompt_too_long", f"{len(prompt_ids)} tokens, no room within "
                              f"condition.max_seq_len={cfg.condition.max_seq_len}; {len(js)} samples not made")
            if not batch:
                continue
            outs = await loop.run_in_executor(pool, lambda ids=ids: engine.generate(
                ids, n=k, max_new_tokens=g.sampling.max_new_tokens,
                temperature=g.sampling.temperature, top_p=g.sampling.top_p))
            for (p, js), completions in zip(batch, outs, strict=True):
                for j in js:
                    text = completions[j].text
                    if not text.strip():  # an empty response cannot be critiqued
                        log.info("%s-%d: empty response, not annotated", p.prompt_id, j)
                        continue
                    c = completions[j]
                    yield _sample(p, j, text, num_response_tokens=len(c.token_ids),
                                  response_token_ids=c.token_ids, finish_reason=c.finish_reason)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Stats:
    written: int = 0
    skipped: int = 0
    """Samples already in the output (a resumed run)."""
    failed: int = 0
    leaks: int = 0
    """Critiques that contain the response's answer or the reference (`condition.leak`)."""
    seconds: float = 0.0
    labels: Counter = field(default_factory=Counter)
    bad: Skips = field(default_factory=Skips)
    """Input rows and prompts skipped, by reason."""

    @property
    def critiques_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


async def annotate(samples, client, output: Path, done: set[str], skips: Skips | None = None,
                   total: int | None = None) -> Stats:
    """Critique `samples` (sync or async iterable) not in `done`; append one line per critique.

    `skips` is what the source reports its bad rows to; it becomes `Stats.bad`. An exception
    raised by the source propagates (after the critiques answered before it were written).
    `total`: critiques expected, for the progress bar's ETA."""
    stats = Stats(bad=skips or Skips())

    async def todo() -> AsyncIterator[Sample]:
        async for s in _aiter(samples):
            if s.sample_id in done:
                stats.skipped += 1
            else:
                done.add(s.sample_id)  # a duplicate id in the source is critiqued once
                yield s

    t0 = time.perf_counter()
    with output.open("a") as out, progress.bar(total=total, desc="annotate", unit="sample") as bar:
        async for result in client.stream(todo()):
            bar.update()
            if result.error is not None:
                stats.failed += 1
                log.warning("%s: %s", result.sample.sample_id, result.error)
                continue
            out.write(json.dumps(annotated_row(result.sample, result.critique)) + "\n")
            out.flush()
            stats.written += 1
            stats.labels[result.critique.label.word] += 1
            stats.leaks += bool(leak.find(result.critique.critique, result.sample))
    stats.seconds = time.perf_counter() - t0
    return stats


async def _aiter(samples) -> AsyncIterator[Sample]:
    if hasattr(samples, "__aiter__"):
        async for s in samples:
            yield s
    else:
        for s in samples:
            yield s


def source(cfg: IxtConfig, done: set[str], skips: Skips) -> Iterable[Sample] | AsyncIterator[Sample]:
    a = cfg.annotate
    if a.source in ("file", "jsonl"):
        if not a.input:
            raise ConfigError("annotate.input: source=file needs an input (JSONL, Parquet or a datasets folder)")
        if not Path(a.input).exists():
            raise ConfigError(f"annotate.input: {a.input} does not exist")
        return corpus.read_samples(a.input, a.columns, a.num_samples, "annotate.columns", skips)
    if a.source != "tasks":
        raise ConfigError(f"annotate.source: {a.source!r} is not tasks or file")
    if a.responses == "synthetic":
        return synthetic_task_samples(cfg, a.num_samples)
    if a.responses == "policy":
        return policy_task_samples(cfg, a.num_samples, done, skips)
    raise ConfigError(f"annotate.responses: {a.responses!r} is not policy or synthetic")


async def run_async(cfg: IxtConfig) -> Stats:
    from ixt_stream.critique.client import RewardClient

    a = cfg.annotate
    output = Path(a.output)
    done = prepare_output(output)
    skips = Skips(fail=cfg.run.bad_input == "fail")
    samples = source(cfg, done, skips)
    async with RewardClient.from_config(cfg.client) as client:
        await client.wait_ready(cfg.client.ready_timeout_s)
        card = await client.describe()
        log.info("critic: %s (%s %s); %d samples already in %s", card.name, card.backend, card.model_id,
                 len(done), output)
        wanted = a.num_samples or (corpus.count_rows(a.input) if a.source != "tasks" else 0)
        stats = await annotate(samples, client, corpus.journal(output), done, skips,
                               max(wanted - len(done), 0) or None)
    corpus.finish_output(output)
    return stats


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    """Exit 0 when every input row was critiqued; 1 when any failed or was skipped (summary says
    why), or at the first bad row under `run.bad_input=fail`."""
    logs.setup(cfg.run.log_level, "annotate")
    import uvloop

    try:
        stats = uvloop.run(run_async(cfg))
    except BadInput as e:
        sys.stderr.write(f"annotate: bad input: {e} (run.bad_input=fail)\n")
        return 1
    print(f"annotated {stats.written} samples ({stats.skipped} already done, {stats.failed} failed, "
          f"{stats.bad.total} skipped {dict(stats.bad.reasons)}) in {stats.seconds:.1f} s: "
          f"{stats.critiques_per_s:.1f} critiques/s; labels {dict(stats.labels)}; "
          f"critiques leaking the answer {stats.leaks} -> {cfg.annotate.output}")
    return 1 if stats.failed or stats.bad.total else 0


if __name__ == "__main__":  # the same as `ixt annotate`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["annotate", *sys.argv[1:]]))
