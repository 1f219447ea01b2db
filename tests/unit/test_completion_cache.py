"""The eval's completion cache: greedy batches of unchanged weights are read back, nothing else is."""

from __future__ import annotations

import pytest

from ixt_stream.offline.completion_cache import CachedEngine, weights_digest
from ixt_stream.sample.engine import Completion


class CountingEngine:
    """Answers prompt ids with their length; counts its batches (a unit test isolates the cache)."""

    def __init__(self, built: list):
        built.append(self)
        self.batches = 0

    def generate(self, prompts, n=1, max_new_tokens=128, temperature=1.0, top_p=1.0):
        self.batches += 1
        return [[Completion(f"{len(p)}-{temperature}", [len(p)], "stop")] * n for p in prompts]


def _cached(tmp_path, built, identity="w1", max_model_len=8):
    return CachedEngine(lambda: CountingEngine(built), tmp_path / "cache", identity, max_model_len)


@pytest.mark.timeout(30)
def test_a_greedy_batch_is_generated_once_and_read_back_without_an_engine(tmp_path):
    built: list = []
    first = _cached(tmp_path, built).generate([[1, 2], [3]], max_new_tokens=4, temperature=0.0)
    assert len(built) == 1 and built[0].batches == 1
    again = _cached(tmp_path, built)
    assert again.generate([[1, 2], [3]], max_new_tokens=4, temperature=0.0) == first
    assert len(built) == 1 and again.hits == 1  # no second engine was started
    assert first == [[Completion("2-0.0", [2], "stop")], [Completion("1-0.0", [1], "stop")]]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change", ["prompt", "max_new_tokens", "identity"])
def test_anything_that_changes_the_generation_misses(tmp_path, change):
    built: list = []
    _cached(tmp_path, built).generate([[1, 2]], max_new_tokens=4, temperature=0.0)
    prompts, tokens, identity = [[1, 2]], 4, "w1"
    if change == "prompt":
        prompts = [[1, 3]]
    elif change == "max_new_tokens":
        tokens = 5
    else:
        identity = "w2"
    engine = _cached(tmp_path, built, identity)
    engine.generate(prompts, max_new_tokens=tokens, temperature=0.0)
    assert len(built) == 2 and engine.hits == 0


@pytest.mark.timeout(30)
def test_sampled_batches_always_generate(tmp_path):
    built: list = []
    engine = _cached(tmp_path, built)
    engine.generate([[1]], temperature=0.7)
    engine.generate([[1]], temperature=0.7)
    assert built[0].batches == 2 and engine.hits == 0 and not (tmp_path / "cache").exists()


@pytest.mark.timeout(30)
def test_an_unreadable_cache_file_is_generated_again(tmp_path, caplog):
    built: list = []
    _cached(tmp_path, built).generate([[1, 2]], temperature=0.0)
    (path,) = (tmp_path / "cache").iterdir()
    path.write_text("{not json")
    engine = _cached(tmp_path, built)
    assert engine.generate([[1, 2]], temperature=0.0) == [[Completion("2-0.0", [2], "stop")]]
    assert len(built) == 2 and "unreadable completion cache" in caplog.text
    assert _cached(tmp_path, built).generate([[1, 2]], temperature=0.0)[0][0].text == "2-0.0"
    assert len(built) == 2  # the rewritten file reads back


@pytest.mark.timeout(30)
def test_fits_needs_no_engine(tmp_path):
    built: list = []
    engine = _cached(tmp_path, built, max_model_len=3)
    assert [engine.fits(p) for p in ([], [1, 2], [1, 2, 3])] == [False, True, False] and not built


@pytest.mark.timeout(30)
def test_the_weights_digest_follows_every_file_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    before = weights_digest(tmp_path)
    assert weights_digest(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    assert weights_digest(tmp_path) != before
