"""Each role is handed only the config sections its `roles.ROLES` line declares: the sections exist,
anything else is an AttributeError, the role's module reads no other section, and the config reads
a role does on start (its metrics sink, the reward role's backend) work on its sections alone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ixt_stream import roles
from ixt_stream.config import IxtConfig, load

SECTIONS = {f.name for f in dataclasses.fields(IxtConfig)}


@pytest.mark.parametrize("role", list(roles.ROLES))
def test_declared_sections_are_config_sections(role):
    declared = roles.ROLES[role].sections
    assert set(declared) <= SECTIONS and len(set(declared)) == len(declared)
    assert "run" in declared  # every role logs under run.log_level and writes under run.run_dir


def test_a_role_is_handed_only_its_sections():
    cfg = load(["reward.port=50999"])
    view = roles.sections(cfg, "reward")
    assert [f.name for f in dataclasses.fields(view)] == list(roles.ROLES["reward"].sections)
    assert view.reward is cfg.reward and view.reward.port == 50999
    with pytest.raises(AttributeError, match="learner"):
        view.learner  # noqa: B018


@pytest.mark.parametrize("role", list(roles.ROLES))
def test_a_role_module_reads_only_its_sections(role):
    """`cfg.<section>` anywhere in the role's module (its entry point, its loop, their helpers)."""
    module = roles.ROLES[role].entry.partition(":")[0]
    source = Path(__file__).resolve().parents[2].joinpath(*module.split(".")).with_suffix(".py").read_text()
    read = set(re.findall(r"\bcfg\.(\w+)", source)) & SECTIONS
    assert read, f"{module}: no cfg.<section> read found (the pattern no longer matches the code)"
    declared = set(roles.ROLES[role].sections)
    assert read <= declared, f"{role} reads undeclared {sorted(read - declared)}"


@pytest.mark.parametrize("role", [r for r in roles.ROLES if "metrics" in roles.ROLES[r].sections])
def test_the_metrics_sink_starts_on_a_roles_sections(role, tmp_path):
    from ixt_stream.metrics import MetricsSink

    sink = MetricsSink.from_config(roles.sections(load([f"run.run_dir={tmp_path}", "run.tensorboard=false"]), role),
                                   role)
    sink.log({"x": 1.0}, step=1)
    sink.close()
    assert '"x": 1.0' in (tmp_path / "metrics" / f"{role}.jsonl").read_text()


@pytest.mark.parametrize("backend", ["verifier", "null"])
def test_the_reward_role_builds_its_backend_on_its_sections(backend):
    from ixt_stream.critique import registry
    from ixt_stream.critique.server import check_exposure, read_secret

    view = roles.sections(load([f"reward={'null_critic' if backend == 'null' else backend}",
                                "reward.judge_workers=0", "task.names=[basic_arithmetic]"]), "reward")
    check_exposure(view.reward.host, read_secret(view.reward.auth_token_file, "reward.auth_token_file"))
    assert type(registry.build(view)).__name__ == {"verifier": "VerifierBackend", "null": "NullBackend"}[backend]
