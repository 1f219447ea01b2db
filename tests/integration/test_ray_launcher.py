"""`ixt up launcher.kind=ray` (issue 16): the smoke stack placed on a local Ray cluster, with a
2-rank gloo learner and 2 generators, holds the end-to-end test's invariants; a generator killed
with -9 is started again by the next `up`, alone; `down` leaves no process and no actor."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

from ixt_stream.config import load
from ixt_stream.ledger import Ledger
from ixt_stream.online import ray_launcher
from ixt_stream.online.main_job import wait_for_learner
from tests.conftest import free_port
from tests.integration.test_online_faults import _wait
from tests.integration.test_online_loop import _live_processes_mentioning, _overrides

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_ray_places_the_stack_with_a_two_rank_learner(tmp_path, tiny_model_dir):
    ray = pytest.importorskip("ray", reason="never skipped in CI: `make setup` installs the [ray] extra")
    run_dir = tmp_path / "run"
    overrides = [*_overrides(run_dir), "launcher.kind=ray", "launcher.cpus_per_role=0.2", "learner.num_gpus=2",
                 f"learner.master_port={free_port()}"]
    cfg = load(overrides)
    ray.init(num_cpus=2, namespace=ray_launcher.namespace(cfg), include_dashboard=False, log_to_driver=False)
    try:
        started = ray_launcher.up(cfg, overrides)
        assert started == ["reward", "learner", "orchestrator", "generator-0", "generator-1"]
        rows = {r["name"]: r for r in ray_launcher.status(cfg)}
        assert set(rows) == set(started) and all(r["alive"] for r in rows.values())
        assert {r["node"] for r in rows.values()} == {ray.util.get_node_ip_address()}

        # -- a role that dies is started again by the next `up`, and only it (early: a restarted -----
        # generator loads vLLM again and must still see 3 versions of an 8-step run)
        os.killpg(rows["generator-1"]["pid"], signal.SIGKILL)
        _wait(lambda: not {r["name"]: r for r in ray_launcher.status(cfg)}["generator-1"]["alive"], 10, "no death")
        assert ray_launcher.up(cfg, overrides) == ["generator-1"]
        summary = wait_for_learner(cfg, overrides, poll_s=2.0)
        time.sleep(3)  # let generators apply the last push and ack it
    finally:
        outcome = ray_launcher.down(cfg)
        actors = ray.util.list_named_actors(all_namespaces=True)
        ray.shutdown()
    # -- down: every role stopped, no process and no actor left -----------------------------------
    assert set(outcome) >= {"reward", "learner", "orchestrator", "generator-0", "generator-1"}, outcome
    assert _live_processes_mentioning(f"run.run_dir={cfg.run.run_dir}") == [], outcome
    assert [a for a in actors if a["namespace"] == ray_launcher.namespace(cfg)] == []

    # -- the e2e invariants: >= 3 versions at every generator, ledger conserved, none trained twice -
    assert summary["steps"] == 8 and summary["versions_pushed"] == 4
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    newest = dict(db.execute("SELECT generator_id, MAX(weight_version) FROM samples GROUP BY generator_id"))
    assert set(newest) == {"generator-0", "generator-1"} and all(v >= 3 for v in newest.values()), newest
    ledger = Ledger(run_dir / "ledger.sqlite").summary()
    assert ledger["conserved"] and ledger["trained_twice"] == 0, ledger
    assert ledger["trained"] == summary["samples_trained"] > 0
    assert (run_dir / "final" / "model.safetensors").exists()
