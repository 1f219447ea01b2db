"""Prompts with checkable answers: reasoning-gym datasets, or a JSONL prompt file.

Training prompts and held-out eval prompts come from disjoint seeds of the same procedural
generators. A generator shard `i` of `n` takes every n-th prompt, so a pool never duplicates work.
The entry's metadata travels with each prompt (JSON) so a verifier elsewhere can call reasoning-gym's
own `score_answer` on it.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ixt_stream.config import TaskConfig

INSTRUCTION = (
    "Think step by step in a few short sentences, then give only the final answer inside "
    "<answer></answer> tags."
)


@dataclass
class Prompt:
    prompt_id: str
    task: str
    prompt: str
    """What the model sees: the question plus the answer-format instruction."""
    answer: str = ""
    metadata_json: str = "{}"
    """reasoning-gym entry metadata, JSON-encoded."""


def _json_default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _rg_prompts(cfg: TaskConfig, seed: int, size: int, tag: str) -> Iterator[Prompt]:
    import reasoning_gym

    datasets = {
        n: reasoning_gym.create_dataset(n, seed=seed, size=size, **cfg.dataset_kwargs.get(n, {}))
        for n in cfg.names
    }
    for i in range(size):
        for name, ds in datasets.items():
            entry = ds[i]
            yield Prompt(
                prompt_id=f"{tag}-{name}-{seed}-{i}",
                task=name,
                prompt=f"{entry['question']}\n{INSTRUCTION}",
                answer=str(entry["answer"]),
                metadata_json=json.dumps(entry.get("metadata", {}), default=_json_default),
            )


def _file_prompts(path: str) -> Iterator[Prompt]:
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            yield Prompt(
                prompt_id=str(row.get("id", f"file-{i}")),
                task=row.get("task", ""),
                prompt=row["prompt"],
                answer=str(row.get("answer", "")),
                metadata_json=json.dumps(row.get("metadata", {})),
            )


def train_prompts(cfg: TaskConfig, shard: int = 0, num_shards: int = 1) -> Iterator[Prompt]:
    """The training prompt stream, shard `shard` of `num_shards`."""
    source = _file_prompts(cfg.prompts_file) if cfg.prompts_file else _rg_prompts(cfg, cfg.seed, cfg.size, "train")
    return itertools.islice(source, shard, None, num_shards)


def eval_prompts(cfg: TaskConfig) -> list[Prompt]:
    """Held-out prompts: a seed the training stream never uses."""
    return list(itertools.islice(_rg_prompts(cfg, cfg.eval_seed, cfg.eval_size, "eval"), cfg.eval_size))


def extract_answer(response: str) -> str | None:
    """The text inside the last <answer></answer> tags, or None."""
    from reasoning_gym.utils import extract_answer as rg_extract

    return rg_extract(response)


@functools.cache
def scorer(task: str):
    """reasoning-gym's `score_answer(answer, entry)` for a task, built once (some take ~0.4 s)."""
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(response: str) -> str | None:
    """The tagged answer, else the last number in the response (how weak models answer: "2 + 5 = 7")."""
    tagged = extract_answer(response)
    if tagged is not None:
        return tagged
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def score(task: str, response: str, answer: str, metadata_json: str = "{}", question: str = "",
          strict: bool = False) -> float:
    """reasoning-gym's own score of the response's final answer: the <answer> tags' content, or
    with `strict=False` the last number when there are no tags. 0 when there is no answer."""
    extracted = extract_answer(response) if strict else final_answer(response)
    if extracted is None:
        return 0.0
    entry = {"question": question, "answer": answer, "metadata": json.loads(metadata_json or "{}")}
    return float(scorer(task)(extracted, entry))
