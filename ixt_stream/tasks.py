"""Prompts with checkable answers: reasoning-gym datasets, or a JSONL prompt file.

Held-out eval problems are distinct and disjoint *by problem* from the training stream (each
task has its own seed; the training stream skips every eval problem). A generator shard `i` of `n`
takes every n-th prompt, so a pool never duplicates work. The entry's metadata travels with each
prompt (JSON) so a verifier elsewhere can call reasoning-gym's own `score_answer` on it.

Answers are compared here too (`score_answer`): numbers as numbers after normalising what does not
change a value (Unicode minus, `+7`, `7.0`, `7.`, `1,234`, `$7$`, `\\boxed{7}`); a wrong number is
wrong whatever digits it shares with the reference. Eval accuracy is exact (1 or 0).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

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

    @property
    def problem(self) -> str:
        """What makes two prompts the same problem: the expression when the task has one
        ("Calculate 3 + 4." and "What is 3 + 4?" are one problem), else the prompt text."""
        expression = json.loads(self.metadata_json or "{}").get("expression")
        return "".join(expression.split()) if isinstance(expression, str) else self.prompt


def _json_default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def task_seed(name: str, seed: int) -> int:
    """A seed of its own per task: reasoning-gym tasks built from one seed draw the same numbers
    (basic_arithmetic and chain_sum gave the same problems)."""
    return (seed + zlib.crc32(name.encode())) % 2**31


def _rg_prompts(cfg: TaskConfig, seed: int, size: int, tag: str) -> Iterator[Prompt]:
    import reasoning_gym

    datasets = {
        n: reasoning_gym.create_dataset(n, seed=task_seed(n, seed), size=size, **cfg.dataset_kwargs.get(n, {}))
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
    """The training prompt stream, shard `shard` of `num_shards`, without any held-out problem.

    The eval set is drawn first and every training prompt of the same problem is skipped, so the
    two are disjoint by problem, not just by seed (small procedural spaces repeat problems)."""
    if cfg.prompts_file:
        source = _file_prompts(cfg.prompts_file)
    else:
        held_out = {p.problem for p in eval_prompts(cfg)}
        source = (p for p in _rg_prompts(cfg, cfg.seed, cfg.size, "train") if p.problem not in held_out)
    return itertools.islice(source, shard, None, num_shards)


_EVAL_SETS: dict[str, tuple[Prompt, ...]] = {}


def _distinct_eval_prompts(cfg: TaskConfig) -> tuple[Prompt, ...]:
    seen: set[str] = set()
    out: list[Prompt] = []
    # procedural spaces repeat problems: draw up to 4x the wanted number to collect distinct ones
    for p in _rg_prompts(cfg, cfg.eval_seed, 4 * cfg.eval_size, "eval"):
        if p.problem in seen:
            continue
        seen.add(p.problem)
        out.append(p)
        if len(out) == cfg.eval_size:
            break
    return tuple(out)


def eval_prompts(cfg: TaskConfig) -> list[Prompt]:
    """`cfg.eval_size` distinct held-out problems (fewer only if the task's space is smaller),
    drawn from a seed the training stream does not use; `train_prompts` skips every one of them."""
    key = json.dumps([cfg.names, cfg.eval_seed, cfg.eval_size, cfg.dataset_kwargs], sort_keys=True, default=str)
    if key not in _EVAL_SETS:
        _EVAL_SETS[key] = _distinct_eval_prompts(cfg)
    return list(_EVAL_SETS[key])


_OPEN, _CLOSE = "<answer>", "</answer>"


def extract_answer(response: str) -> str | None:
    """The text inside the last <answer></answer> pair, or None.

    Linear time (two `rfind`s): reasoning-gym's lazy regex is quadratic on inputs such as
    "<answer> " repeated thousands of times, and the reward service parses untrusted text.
    """
    end = response.rfind(_CLOSE)
    if end < 0:
        return None
    start = response.rfind(_OPEN, 0, end)
    if start < 0:
        return None
    return response[start + len(_OPEN):end].strip()


@functools.cache
def scorer(task: str):
    """reasoning-gym's `score_answer(answer, entry)` for a task, built once (some take ~0.4 s)."""
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


_NUMBER = re.compile(r"[-\u2212]?\d+(?:\.\d+)?")
_NUMERIC = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_MINUS = str.maketrans({c: "-" for c in "\u2212\u2012\u2013\u2014\ufe63\uff0d"})
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("\\boxed{", "}"), ("\\text{", "}"),
             ("\\mathrm{", "}"), ("**", "**"), ("`", "`"))


def normalize_answer(answer: str) -> str:
    """The answer without what does not change its value: Unicode minus signs, simple LaTeX and
    Markdown wrappers ($7$, \\boxed{7}), surrounding spaces and a trailing period."""
    text = answer.strip().translate(_MINUS)
    changed = True
    while changed and text:
        changed = False
        for open_, close in _WRAPPERS:
            if text.startswith(open_) and text.endswith(close) and len(text) >= len(open_) + len(close):
                text, changed = text[len(open_):len(text) - len(close)].strip(), True
        if text.endswith(".") and _NUMERIC.fullmatch(text[:-1].strip()):
            text, changed = text[:-1].strip(), True
    return text


def as_number(text: str) -> Decimal | None:
    """The value of a plain number ("-7", "+7", "7.0", "1,234", "−7"), else None."""
    text = normalize_answer(text).replace(" ", "")
    if not _NUMERIC.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def score_answer(task: str, answer: str | None, reference: str, entry: dict) -> float:
    """How right `answer` is. A numeric reference is compared as a number: 1 when equal after
    normalisation, else 0, whatever digits the answer shares with it (reasoning-gym's default
    gives partial credit to "17" for 7). Other answers go to reasoning-gym's own scorer,
    normalised first; a scorer that raises on odd input scores 0."""
    if answer is None or not answer.strip():
        return 0.0
    want = as_number(reference)
    if want is not None:
        got = as_number(answer)
        return 1.0 if got is not None and got == want else 0.0
    try:
        value = float(scorer(task)(normalize_answer(answer), entry))
    except Exception:  # noqa: BLE001 - a scorer choking on odd input means: not right
        return 0.0
    return min(max(value, 0.0), 1.0)


def final_answer(response: str) -> str | None:
    """The tagged answer, else the last number in the response (how weak models answer: "2 + 5 = 7")."""
    tagged = extract_answer(response)
    if tagged is not None:
        return tagged
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def score(task: str, response: str, answer: str, metadata_json: str = "{}", question: str = "",
          strict: bool = False) -> float:
    """Exact accuracy of the response's final answer (1 or 0): the <answer> tags' content, or with
    `strict=False` the last number when there are no tags. Partial credit counts as wrong."""
    extracted = extract_answer(response) if strict else final_answer(response)
    entry = {"question": question, "answer": answer, "metadata": json.loads(metadata_json or "{}")}
    return 1.0 if score_answer(task, extracted, answer, entry) >= 1.0 else 0.0
