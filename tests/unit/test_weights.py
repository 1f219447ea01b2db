"""Weight versions: publish -> announce -> verify -> apply, with a fake engine (logic isolation).

The real engine path (vLLM reload_weights) is covered by tests/integration/test_generator.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from ixt_stream.config import FilesystemTransportConfig, StreamConfig
from ixt_stream.types import WeightVersion
from ixt_stream.weights import apply, base, filesystem, publish
from tests.conftest import free_port

RUN = "run-w"


class FakeEngine:
    """Records what it was asked to load."""

    def __init__(self):
        self.loaded: list[dict] = []

    def reload_weights(self, weights_path=None, state_dict=None) -> float:
        self.loaded.append(state_dict)
        return 0.0


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(32, 8, generator=g)
    up = torch.randn(16, 8, generator=g)
    return {"model.embed_tokens.weight": embed, "model.layers.0.mlp.up_proj.weight": up,
            "lm_head.weight": embed}  # tied, as in SmolLM2


@pytest.fixture
def ends(tmp_path):
    """A publisher (learner) and an applier (generator) on a fresh weights port."""
    cfg = StreamConfig(weights_port=free_port(), linger_ms=0, filesystem=FilesystemTransportConfig(keep_versions=2))
    pub = publish.publisher(cfg, str(tmp_path), RUN)
    app = apply.applier(cfg, str(tmp_path), RUN, "generator-0")
    assert app.poll() is None  # nothing recorded yet; this first poll consumed the LATEST check
    time.sleep(0.3)  # let the SUB subscription reach the PUB (slow joiner)
    yield cfg, pub, app
    app.close()
    pub.close()


def wait_poll(app: apply.WeightApplier, timeout_s: float = 5.0) -> WeightVersion | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (wv := app.poll()) is not None:
            return wv
        time.sleep(0.02)
    return None


def test_publish_apply_round_trip(ends):
    _, pub, app = ends
    sd = state_dict()
    wv = pub.publish(sd, version=1, step=2)
    assert Path(wv.uri, filesystem.WEIGHTS_FILE).stat().st_size == wv.num_bytes and len(wv.digest) == 64

    got = wait_poll(app)
    assert got == wv
    engine = FakeEngine()
    ack = app.apply(got, engine)
    assert ack.version == 1 and ack.generator_id == "generator-0" and ack.apply_seconds > 0
    assert app.version == 1 and app.poll() is None
    (loaded,) = engine.loaded
    assert set(loaded) == {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"}  # tie dropped
    for name, t in loaded.items():
        assert torch.equal(t, sd[name])


def test_only_the_newest_pending_version_is_kept_and_old_ones_pruned(ends, tmp_path):
    _, pub, app = ends
    for v in (1, 2, 3):
        pub.publish(state_dict(v), version=v, step=2 * v)
    time.sleep(0.2)
    assert wait_poll(app).version == 3
    assert app.poll() is None  # v1 and v2 were dropped, not queued behind v3
    assert sorted(p.name for p in (tmp_path / "weights").glob("v*")) == ["v2", "v3"]


def test_a_restarted_generator_starts_from_latest(ends, tmp_path):
    cfg, pub, _ = ends
    pub.publish(state_dict(), version=4, step=8)
    late = apply.applier(cfg, str(tmp_path), RUN, "generator-1")
    try:
        wv = late.poll()
        assert wv is not None and wv.version == 4 and wv.step == 8
        assert late.apply(wv, FakeEngine()).version == 4
    finally:
        late.close()


def test_weight_dtype_cast(tmp_path):
    writer = filesystem.FilesystemWriter(tmp_path, dtype=torch.bfloat16)
    uri, sha, n = writer.write(state_dict(), version=1)
    wv = WeightVersion(version=1, step=1, uri=uri, digest=sha, num_bytes=n)
    assert {t.dtype for t in filesystem.FilesystemReader(tmp_path).read(wv).values()} == {torch.bfloat16}


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage, reason", [
    (corrupt, "digest_mismatch"),
    (truncate, "truncated"),
    (Path.unlink, "missing"),
])
def test_damaged_payload_is_refused_and_never_applied(ends, damage, reason):
    _, pub, app = ends
    wv = pub.publish(state_dict(), version=1, step=2)
    damage(Path(wv.uri) / filesystem.WEIGHTS_FILE)
    before = REGISTRY.get_sample_value("ixt_weights_refused_total", {"reason": reason}) or 0.0

    engine = FakeEngine()
    assert app.apply(wait_poll(app), engine) is None
    assert engine.loaded == [] and app.version == 0 and app.refused == {reason: 1}
    assert REGISTRY.get_sample_value("ixt_weights_refused_total", {"reason": reason}) == before + 1


def test_uri_outside_the_weights_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    uri, sha, n = filesystem.FilesystemWriter(outside).write(state_dict(), version=1)
    reader = filesystem.FilesystemReader(tmp_path / "weights")
    with pytest.raises(base.WeightRefused, match="outside_root"):
        reader.read(WeightVersion(version=1, step=1, uri=uri, digest=sha, num_bytes=n))
