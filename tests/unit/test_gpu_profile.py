"""The GPU profile composes, and `ixt up` turns it into the right per-process GPUs and argv (no GPU needed)."""

from __future__ import annotations

import re
import sys

import pytest

from ixt_stream.config import ConfigError, load
from ixt_stream.online import supervisor


def by_name(services) -> dict[str, supervisor.Service]:
    return {s.name: s for s in services}


def test_gpu_profile_composes():
    cfg = load(["profile=gpu"])
    assert cfg.stream.weight_transport == "collective" and cfg.stream.weight_dtype == "bfloat16"
    assert cfg.reward.backend == "sglang"
    assert (cfg.learner.zero_stage, cfg.learner.dtype, cfg.learner.num_gpus) == (3, "bf16", 2)
    assert cfg.generator.dtype == "bfloat16" and 0 < cfg.generator.gpu_memory_utilization < 1
    assert cfg.generator.tensor_parallel_size == 1
    used = [i for ids in cfg.run.gpus.values() for i in ids]
    assert sorted(used) == list(range(8)), "one 8-GPU node, every GPU used once"


def test_stack_gives_every_service_its_own_gpus():
    overrides = ["profile=gpu"]
    services = by_name(supervisor.stack(load(overrides), overrides))
    assert list(services) == ["reward", "learner", "orchestrator", *(f"generator-{i}" for i in range(5))]
    assert services["reward"].env == {"CUDA_VISIBLE_DEVICES": "2"}
    assert services["learner"].env == {"CUDA_VISIBLE_DEVICES": "0,1", "DS_ACCELERATOR": "cuda"}
    assert services["orchestrator"].env == {}  # no GPU: inherits the environment
    for i in range(5):
        g = services[f"generator-{i}"]
        assert g.env == {"CUDA_VISIBLE_DEVICES": str(3 + i)} and g.threads == 4
        assert g.argv[-1] == f"generator.index={i}"
    learner = services["learner"]  # two ranks under torchrun
    assert learner.argv[2:6] == ["torch.distributed.run", "--nnodes=1", "--node-rank=0", "--nproc-per-node=2"]
    assert learner.argv[-len(overrides) - 3:] == ["ixt_stream.cli", "serve", "learner", *overrides]
    assert learner.threads == 8


def test_tensor_parallel_generators_get_consecutive_slices():
    overrides = ["profile=gpu", "generator.num_generators=2", "generator.tensor_parallel_size=2"]
    services = by_name(supervisor.stack(load(overrides), overrides))
    assert [services[f"generator-{i}"].env["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["3,4", "5,6"]


def test_a_multi_gpu_learner_runs_under_torchrun():
    overrides = ["profile=gpu", "learner.num_gpus=4", "run.gpus.learner=[0,1,2,3]", "run.gpus.reward=[4]",
                 "run.gpus.generator=[5,6,7]", "generator.num_generators=3", "learner.master_port=29611"]
    learner = by_name(supervisor.stack(load(overrides), overrides))["learner"]
    assert learner.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "DS_ACCELERATOR": "cuda"}
    assert learner.argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--node-rank=0",
                            "--nproc-per-node=4", "--master-addr=127.0.0.1", "--master-port=29611",
                            "--max-restarts=0", "-m", "ixt_stream.cli", "serve", "learner", *overrides]
    # no GPU list for the learner, but a GPU layout: the node's first num_gpus GPUs, on CUDA
    overrides = ["profile=gpu", "learner.num_gpus=2", "~run.gpus.learner"]
    learner = by_name(supervisor.stack(load(overrides), overrides))["learner"]
    assert learner.env == {"DS_ACCELERATOR": "cuda"}
    assert learner.argv[5] == "--nproc-per-node=2"
    # no GPU layout at all (CPU): N gloo ranks, the accelerator left to the environment
    overrides = ["profile=smoke", "learner.num_gpus=2"]
    learner = by_name(supervisor.stack(load(overrides), overrides))["learner"]
    assert learner.env == {} and learner.argv[2] == "torch.distributed.run"


@pytest.mark.parametrize("overrides, message", [
    (["generator.num_generators=6"], "run.gpus.generator: lists 5 GPUs"),
    (["learner.num_gpus=4"], "run.gpus.learner: lists 2 GPUs, learner.num_gpus=4 needs 4"),
    (["+run.gpus.trainer=[0]"], "run.gpus: unknown role(s) ['trainer']"),
])
def test_a_layout_that_does_not_fit_names_the_field(overrides, message):
    overrides = ["profile=gpu", *overrides]
    with pytest.raises(ConfigError, match=re.escape(message)):
        supervisor.stack(load(overrides), overrides)


def test_run_roles_starts_part_of_the_stack_on_this_node():
    overrides = ["profile=gpu", "run.roles=[generator]", "generator.num_generators=8",
                 "run.gpus.generator=[0,1,2,3,4,5,6,7]", "stream.host=10.0.0.1", "stream.curve_keys_dir=/keys"]
    services = by_name(supervisor.stack(load(overrides), overrides))
    assert list(services) == [f"generator-{i}" for i in range(8)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in services.values()] == [str(i) for i in range(8)]
    with pytest.raises(ConfigError, match=re.escape("run.roles: unknown role(s) ['generators']")):
        supervisor.stack(load(["run.roles=[generators]"]), [])


def test_the_cpu_default_sets_no_gpu():
    services = supervisor.stack(load([]), [])
    assert all(s.env == {} for s in services)
