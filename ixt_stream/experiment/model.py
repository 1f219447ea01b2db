"""The experiment's models: a Llama built from a size config (random init, no download) and its EMA.

Tied embeddings, so the non-embedding parameters are everything but the one embedding matrix;
`Shape` carries what the FLOPs formula (`analysis.flops`) needs. The loss computes the LM head on
loss positions only, as the FLOPs formula charges it.
Left out: dropout, weight tying options and any other architecture.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ixt_stream.config import ExperimentSizeConfig
from ixt_stream.experiment.analysis import Shape

MAX_POSITIONS = 512


def build(size: ExperimentSizeConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
                         num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
                         num_key_value_heads=size.num_heads, max_position_embeddings=MAX_POSITIONS,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).float()


def shape(model: LlamaForCausalLM) -> Shape:
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    embedding = model.get_input_embeddings().weight.numel()
    c = model.config
    return Shape(non_embedding=total - embedding, embedding=embedding, layers=c.num_hidden_layers,
                 hidden=c.hidden_size, vocab=c.vocab_size)


def loss(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Next-token cross-entropy on the tokens `mask` marks, the LM head applied there only.

    Args:
        ids, mask: [B, T]; rows padded on the right (a causal model never attends to later pads).
    Returns:
        the mean over marked tokens, or (reduce=False) [B] each row's mean.
    """
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    logits = model.lm_head(hidden[keep])
    token_loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")
    if reduce:
        return token_loss.mean()
    rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(keep)[keep]
    return torch.zeros(ids.shape[0]).index_add_(0, rows, token_loss.detach()) / keep.sum(1).clamp(min=1)


class EMA:
    """Exponential moving average of the weights, warmed up (decay min(ema, (1+t)/(10+t)))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
