"""The sample ledger: conservation, double-training detection, and durability across processes."""

from __future__ import annotations

import subprocess
import sys

from ixt_stream.ledger import Ledger
from ixt_stream.types import Sample


def _samples(n, gen="g0", version=0):
    return [Sample(f"{gen}-{i}", "p", "r", generator_id=gen, weight_version=version) for i in range(n)]


def test_life_cycle_and_conservation(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.generated(_samples(10))
    led.generated(_samples(3))  # re-announcing the same ids adds nothing
    led.critiqued([f"g0-{i}" for i in range(8)])
    led.trained([f"g0-{i}" for i in range(5)], step=1)
    led.dropped([("g0-5", "stale"), ("g0-6", "stale"), ("g0-0", "stale")])  # g0-0 is trained: stays
    s = led.summary()
    assert (s["generated"], s["trained"], s["dropped"], s["in_flight"]) == (10, 5, 2, 3)
    assert s["dropped_by_reason"] == {"stale": 2}
    assert s["conserved"] and s["trained_twice"] == 0
    assert led.trained_ids(["g0-1", "g0-7", "nope"]) == {"g0-1"}


def test_training_twice_is_detected(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.generated(_samples(2))
    led.trained(["g0-0"], step=1)
    led.trained(["g0-0"], step=2)
    s = led.summary()
    assert s["trained_twice"] == 1 and not s["conserved"]


def test_untrain_after_a_resume(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.generated(_samples(4))
    led.trained(["g0-0", "g0-1"], step=1)
    led.trained(["g0-2"], step=2)
    assert led.untrain_after(1) == 1
    assert led.trained_ids(["g0-0", "g0-2"]) == {"g0-0"}
    assert led.summary()["in_flight"] == 2


def test_committed_rows_survive_a_killed_writer(tmp_path):
    path = tmp_path / "ledger.sqlite"
    code = (
        "import os, sys\n"
        "from ixt_stream.ledger import Ledger\n"
        "from ixt_stream.types import Sample\n"
        f"led = Ledger({str(path)!r})\n"
        "led.generated([Sample(f'k-{i}', 'p', 'r') for i in range(50)])\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert Ledger(path).summary()["generated"] == 50
