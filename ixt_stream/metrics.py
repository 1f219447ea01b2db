"""A tiny metrics sink: flat dicts with `/` keys -> JSONL, TensorBoard, prometheus, W&B, the status
file, and a PNG.

Every role logs `{"loss/ixt": 1.2, "weights/version": 3, ...}` at a step. The JSONL file
(`run_dir/metrics/<role>.jsonl`, one object per call with `step` and `time`) is the record of
truth; TensorBoard scalars (`run_dir/tb/<role>`), a prometheus gauge per key (served on
127.0.0.1 when a port is set) and, with `metrics.wandb=true`, a Weights & Biases run per role
(the same scalars at the same steps, plus the run's config; offline mode writes under
`run_dir/wandb/`) are views of the same numbers. So is the status file
(`run_dir/status/<role>.json`, rewritten atomically by `status`): the few numbers `ixt status` shows
for a running process, read back with `read_status`. `plot_curves` draws the JSONL files into one PNG
at the end of a run. TensorBoard events are written with tensorboard's own writer, so roles that
do not use torch (the orchestrator) do not import it; W&B is imported only when it is on.
Left out: histograms, MLflow, and cross-process aggregation (each process logs its own file and
its own W&B run; W&B groups a run folder's roles).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from prometheus_client import Gauge, start_http_server

from ixt_stream.config import IxtConfig

_gauges: dict[str, Gauge] = {}


def _gauge(key: str) -> Gauge:
    """One process-wide gauge per key: `loss/ixt` -> `ixt_metric_loss_ixt` (a prefix of its own, so
    a logged key never collides with the counters that modules register themselves)."""
    if key not in _gauges:
        name = "ixt_metric_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        _gauges[key] = Gauge(name, f"last logged value of {key}")
    return _gauges[key]


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def write_status(run_dir: str | Path, name: str, status: Mapping[str, object]) -> None:
    """Atomically replace `run_dir/status/<name>.json` (with the writer's pid and the time)."""
    folder = Path(run_dir) / "status"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({**status, "pid": os.getpid(), "time": time.time()}))
    os.replace(tmp, folder / f"{name}.json")


def read_status(run_dir: str | Path, name: str) -> dict:
    """The latest status of process `name`; {} when it wrote none (or it is being replaced)."""
    try:
        return json.loads((Path(run_dir) / "status" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


class MetricsSink:
    """Writes each `log` call to JSONL (+ TensorBoard, + prometheus gauges).

    Args:
        run_dir: the run folder.
        role: file stem and TensorBoard folder, e.g. "learner", "generator-0".
        tensorboard: also write TensorBoard scalars.
        prometheus_port: serve `/metrics` on 127.0.0.1:<port>; 0 = no server.
        wandb_init: keyword arguments of `wandb.init` (project, name, mode, config, ...); None = no
            W&B run.
    """

    def __init__(self, run_dir: str | Path, role: str, tensorboard: bool = True, prometheus_port: int = 0,
                 wandb_init: dict | None = None):
        self.run_dir, self.role = run_dir, role
        self.path = Path(run_dir) / "metrics" / f"{role}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(str(Path(run_dir) / "tb" / role))
        if prometheus_port:
            start_http_server(prometheus_port, addr="127.0.0.1")
        self._wandb = None
        if wandb_init is not None:
            import wandb

            self._wandb = wandb.init(**{"dir": str(run_dir), "reinit": "create_new", **wandb_init})

    @classmethod
    def from_config(cls, cfg: IxtConfig, role: str) -> MetricsSink:
        """The sink `run.*` and `metrics.*` ask for; a W&B run is named after the run folder and role."""
        m, folder = cfg.metrics, Path(cfg.run.run_dir).resolve().name
        wandb_init = None
        if m.wandb:
            wandb_init = {"project": m.wandb_project, "entity": m.wandb_entity or None,
                          "name": f"{m.wandb_name or folder}-{role}", "group": folder, "job_type": role,
                          "config": asdict(cfg), **({"mode": m.wandb_mode} if m.wandb_mode else {})}
        return cls(cfg.run.run_dir, role, cfg.run.tensorboard, cfg.run.metrics_port, wandb_init)

    def log(self, metrics: Mapping[str, object], step: int) -> None:
        """Record one flat dict at `step`; non-numeric values go to the JSONL only."""
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()
        numbers = {k: x for k, v in metrics.items() if (x := _number(v)) is not None}
        for k, x in numbers.items():
            _gauge(k).set(x)
        if self._tb is not None and numbers:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            values = [Summary.Value(tag=k, simple_value=x) for k, x in numbers.items()]
            self._tb.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
            self._tb.flush()
        if self._wandb is not None and numbers:
            self._wandb.log(numbers, step=step)

    def status(self, values: Mapping[str, object]) -> None:
        """Replace this role's status file: what `ixt status` shows (`done: true` = its work is finished)."""
        write_status(self.run_dir, self.role, values)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(paths: list[str | Path], out_png: str | Path, keys: list[str] | None = None) -> Path:
    """One panel per key (default: every numeric key), one line per JSONL file, x = step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {Path(p).stem: read_jsonl(p) for p in paths}
    if keys is None:
        keys = sorted({k for rows in series.values() for r in rows for k, v in r.items()
                       if k not in ("step", "time") and _number(v) is not None})
    cols = min(3, max(len(keys), 1))
    rows_n = max(math.ceil(len(keys) / cols), 1)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for name, rows in series.items():
            pts = [(r["step"], x) for r in rows if (x := _number(r.get(key))) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
