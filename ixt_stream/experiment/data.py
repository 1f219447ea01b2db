"""The experiment's data: one annotated pool per response source, and the order every arm reads it.

A pool is `num_prompts` training prompts x `samples_per_prompt` responses of mixed quality:
synthetic ones with controlled error types (offline/synthetic.py) for from-scratch scales, the
scale's own samples (vLLM, temperature `policy_temperature`), or both for the same prompts (a
fine-tuned SmolLM2-135M almost never answers right in the asked format, so its own samples alone
leave nothing for the filtered arm and no good feedback for IXT). Every sample is
critiqued by the *real* reward service: `ixt serve reward` is started as a subprocess on a free
port (any `reward.*` backend the overrides choose) and `offline.annotate` streams the pool
through it with `RewardClient` into resumable JSONL. A finished pool gets a `.done` marker.

`arm_stream` is the one place an arm's training order is decided: epoch e shuffles the *whole*
pool with (seed, e); the filtered arm then drops every sample the critic did not score 1, so
it reads the same order minus the rest. Epochs repeat until the caller's token budget is spent.

Left out: generating fresh responses as training goes (that is the online loop, `ixt run`) and
de-duplicating near-identical responses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ixt_stream import corpus, logs
from ixt_stream.config import ExperimentConfig, ExperimentScaleConfig, IxtConfig

log = logging.getLogger("ixt.experiment")

ARM_MODES = {"baseline": "none", "filtered": "none", "ixt": "critique", "label": "label", "ixt_dropout": "critique"}
"""Arm -> `condition.mode` it trains (and is evaluated) under."""

WORKER_ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def worker_env() -> dict[str, str]:
    return {**os.environ, **WORKER_ENV}


def fingerprint(e: ExperimentConfig, scale: ExperimentScaleConfig) -> str:
    """What a run's result depends on besides (arm, seed): a rerun with another budget, lr, shape,
    batch size, task or pool is not mistaken for a finished run."""
    import hashlib
    from dataclasses import asdict

    scale_keys = {k: v for k, v in asdict(scale).items() if k != "seeds"}
    keys = {"scale": scale_keys, "task": asdict(e.task), "k": e.samples_per_prompt, "dtype": e.dtype,
            "batch": [e.tokens_per_batch, e.max_samples_per_batch], "dropout": e.feedback_dropout,
            "policy": [e.policy_temperature, e.policy_max_new_tokens]}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_name(e: ExperimentConfig, scale: ExperimentScaleConfig) -> str:
    """File stem of a scale's data pool; from-scratch scales with equal sizes share one."""
    source = "synthetic" if scale.responses == "synthetic" else f"{scale.responses}-{Path(scale.model).name}"
    return f"{source}-{scale.num_prompts}x{e.samples_per_prompt}"


# -- building a pool (in a worker process) ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_reward_service(overrides: list[str], task_names: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """`ixt serve reward` on a free loopback port; returns (process, "host:port")."""
    port = _free_port()
    names = "[" + ",".join(task_names) + "]"
    cmd = [sys.executable, "-m", "ixt_stream.cli", "serve", "reward", *overrides, "reward.host=127.0.0.1",
           f"reward.port={port}", f"task.names={names}", f"run.run_dir={log_path.parent / 'reward'}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log_path.open("a"), stderr=subprocess.STDOUT, env=worker_env())
    return proc, f"127.0.0.1:{port}"


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _annotate(cfg: IxtConfig, scale: ExperimentScaleConfig, responses: str, output: Path, address: str) -> dict:
    """One `offline.annotate` run (policy or synthetic responses) into `output`; resumes a partial file."""
    import dataclasses

    import uvloop

    from ixt_stream.offline.annotate import run_async

    e = cfg.experiment
    k = e.samples_per_prompt
    cfg = dataclasses.replace(
        cfg, task=e.task,
        model=dataclasses.replace(cfg.model, name=scale.model, tiny=scale.tiny),
        client=dataclasses.replace(cfg.client, address=address),
        generator=dataclasses.replace(cfg.generator, samples_per_prompt=k, prompts_per_request=16, threads=1,
                                      sampling=dataclasses.replace(cfg.generator.sampling,
                                                                   temperature=e.policy_temperature,
                                                                   max_new_tokens=e.policy_max_new_tokens)),
        annotate=dataclasses.replace(cfg.annotate, source="tasks", responses=responses,
                                     output=str(output), num_samples=scale.num_prompts * k))
    stats = uvloop.run(run_async(cfg))
    if stats.failed:
        raise RuntimeError(f"{stats.failed} samples failed annotation; rerun to resume")
    return {"written": stats.written, "skipped": stats.skipped, "labels": dict(stats.labels),
            "seconds": stats.seconds}


def build_pool(cfg: IxtConfig, scale: ExperimentScaleConfig, output: Path, address: str) -> dict:
    """Annotate one pool through the reward service at `address`, then mark it done.

    "policy+synthetic" annotates both kinds for the same prompts into part files and joins them;
    synthetic sample ids get a `syn-` prefix (both sources number a prompt's samples 0..k-1).
    """
    if scale.responses != "policy+synthetic":
        summary = _annotate(cfg, scale, scale.responses, output, address)
    else:
        summary, lines = {}, []
        for part in ("policy", "synthetic"):
            path = output.with_name(f"{output.stem}.{part}.jsonl")
            summary[part] = _annotate(cfg, scale, part, path, address)
            for sample, critique in corpus.read_annotated(path):
                if part == "synthetic":
                    sample = dataclasses.replace(sample, sample_id=f"syn-{sample.sample_id}")
                lines.append(json.dumps(corpus.annotated_row(sample, critique)) + "\n")
        output.write_text("".join(lines))
    Path(f"{output}.done").write_text(json.dumps(summary))
    return summary


def main(argv: list[str]) -> int:
    """`python -m ixt_stream.experiment.data <spec.json>`: start the critic, build the pools, stop it."""
    from ixt_stream.config import load

    spec = json.loads(Path(argv[0]).read_text())
    logs.setup("INFO", "data")
    cfg = load(spec["overrides"])
    stem = Path(next(iter(spec["pools"].values()))).stem
    proc, address = start_reward_service(spec["overrides"], cfg.experiment.task.names,
                                         Path(spec["log_dir"]) / f"reward-{stem}.log")
    try:
        for name, output in spec["pools"].items():
            t0 = time.perf_counter()
            summary = build_pool(cfg, cfg.experiment.scales[name], Path(output), address)
            print(f"pool {Path(output).name}: {summary} ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        stop(proc)
    return 0


# -- reading a pool in an arm's order -----------------------------------------------------------


def read_pool(path: Path):
    """(Sample, Critique) pairs of a finished pool, in file order sorted by sample id (the file
    order depends on which critiques came back first)."""
    return sorted(corpus.read_annotated(path), key=lambda row: row[0].sample_id)


def keeps(arm: str, critique) -> bool:
    """Whether an arm trains on a sample: the filtered arm keeps only what the critic scored 1."""
    return arm != "filtered" or (critique is not None and critique.score >= 1.0)


def arm_stream(rows: list, arm: str, seed: int) -> Iterator[tuple[int, object, object]]:
    """(epoch, sample, critique) forever: the pool shuffled per (seed, epoch), filtered per arm."""
    if not any(keeps(arm, c) for _, c in rows):
        raise ValueError(f"arm {arm}: the critic scored no sample 1, nothing to train on")
    epoch = 0
    while True:
        order = list(range(len(rows)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        for i in order:
            sample, critique = rows[i]
            if keeps(arm, critique):
                yield epoch, sample, critique
        epoch += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
