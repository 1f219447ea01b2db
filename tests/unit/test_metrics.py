"""One `log` call lands in JSONL, TensorBoard and prometheus; the PNG is drawn from the JSONL."""

from __future__ import annotations

import urllib.request

from prometheus_client import REGISTRY

from ixt_stream.metrics import MetricsSink, plot_curves, read_jsonl
from tests.conftest import free_port


def test_sink_writes_every_view_and_plots(tmp_path):
    port = free_port()
    sink = MetricsSink(tmp_path, "learner", prometheus_port=port)
    for step in range(1, 4):
        sink.log({"loss/ixt": 1.0 / step, "weights/version": step // 2, "note": "text is kept in JSONL only"}, step)
    sink.close()

    rows = read_jsonl(tmp_path / "metrics" / "learner.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["note"].startswith("text")
    assert REGISTRY.get_sample_value("ixt_metric_loss_ixt") == rows[-1]["loss/ixt"]
    served = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "ixt_metric_weights_version 1.0" in served

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "learner"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss/ixt", "weights/version"]
    assert [e.step for e in events.Scalars("loss/ixt")] == [1, 2, 3]

    png = plot_curves([tmp_path / "metrics" / "learner.jsonl"], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
