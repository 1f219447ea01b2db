"""sample.engine._copy_plan: when a weight payload maps 1:1 onto an engine's parameters (vLLM's
fused qkv / gate_up filled from their parts), and when it does not (then vLLM's reload runs).

The copy itself, on a real engine, is checked in tests/integration/test_generator.py.
"""

from __future__ import annotations

import torch
from torch import nn

from ixt_stream.sample.engine import _copy_plan


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv_proj = nn.Linear(4, 12, bias=False)
        self.o_proj = nn.Linear(4, 4, bias=False)


class Model(nn.Module):
    """vLLM's shape of a Llama layer: fused q/k/v and the mapping that says so."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.attn = Attn()


def payload(**changes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"embed.weight": torch.randn(10, 4, generator=g), "attn.o_proj.weight": torch.randn(4, 4, generator=g)}
    out.update({f"attn.{p}.weight": torch.randn(4, 4, generator=g) for p in ("q_proj", "k_proj", "v_proj")})
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def test_a_payload_of_parts_maps_onto_fused_parameters_in_order():
    model, tensors = Model(), payload()
    plan = _copy_plan(model, tensors)
    assert plan is not None and len(plan) == 3
    (qkv, parts), = [(p, parts) for p, parts in plan if p is model.attn.qkv_proj.weight]
    assert [t.data_ptr() for t in parts] == [tensors[f"attn.{p}.weight"].data_ptr()
                                            for p in ("q_proj", "k_proj", "v_proj")]


def test_anything_but_a_one_to_one_payload_is_left_to_vllm():
    model = Model()
    assert _copy_plan(model, payload(**{"attn.v_proj.weight": None})) is None  # a part missing
    assert _copy_plan(model, payload(**{"lm_head.weight": torch.zeros(10, 4)})) is None  # an extra tensor
    assert _copy_plan(model, payload(**{"attn.o_proj.weight": torch.zeros(4, 5)})) is None  # a shape
    assert _copy_plan(model, payload(**{"embed.weight": torch.zeros(10, 4, dtype=torch.bfloat16)})) is None
