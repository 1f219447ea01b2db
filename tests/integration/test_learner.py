"""update.learner: real DeepSpeed on the tiny model: loss falls, bad steps are skipped, weights
leave whole (HF folder that transformers and vLLM load), and checkpoints resume exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from ixt_stream.batch.collate import IGNORE, TensorBatch, collate
from ixt_stream.condition.format import Conditioner
from ixt_stream.models import load_tokenizer
from ixt_stream.types import Critique, Label, Sample
from ixt_stream.update.learner import Learner


@pytest.fixture(scope="module")
def batch(tiny_model_dir) -> TensorBatch:
    tok = load_tokenizer(tiny_model_dir)
    cond = Conditioner(tok, mode="critique")
    rows = [(Sample(str(i), f"What is {i} + {i}?", f"{i} + {i} = {2 * i}. <answer>{2 * i}</answer>"),
             Critique(str(i), "Correct.", 1.0, Label.GOOD)) for i in range(6)]
    return collate([cond.condition(s, c) for s, c in rows], pad_id=tok.pad_token_id)


def _disk_weights(folder: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {k: v.detach() for k, v in model.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zero_stage,dtype", [(0, "bf16"), (0, "fp32"), (2, "bf16")])
def test_loss_falls(tiny_model_dir, batch, zero_stage, dtype):
    learner = Learner(tiny_model_dir, zero_stage=zero_stage, dtype=dtype, lr=3e-3)
    assert learner._optimizer.defaults["fused"]  # the fused AdamW kernel, under DeepSpeed's wrapper
    # Gathered whole. DeepSpeed casts the module to bf16 before it copies the fp32 masters, so
    # under bf16 training starts from the bf16-rounded checkpoint.
    start = {k: v.to(learner.dtype).float() for k, v in _disk_weights(tiny_model_dir).items()}
    assert _same(learner.full_state_dict(), start)
    losses = [learner.train_step(batch)["train/loss"] for _ in range(8)]
    assert learner.step == 8 and learner.skipped_steps == 0
    assert losses[-1] < losses[0] - 1.0, losses
    state = learner.full_state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    if dtype == "bf16":  # the fp32 masters, not the bf16 module weights
        w = state["model.layers.0.mlp.up_proj.weight"]
        assert not torch.equal(w, w.bfloat16().float())


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_uncopied_state_dict_equals_the_cast_masters(tiny_model_dir, batch, dtype):
    """What a publish reads without a copy (live tensors) is bit for bit the cast of the masters."""
    learner = Learner(tiny_model_dir, zero_stage=0, dtype=dtype, lr=3e-3)
    for _ in range(2):
        learner.train_step(batch)
    for want in (torch.bfloat16, torch.float32):
        copied, live = learner.full_state_dict(want), learner.full_state_dict(want, copy=False)
        assert _same(copied, live) and all(v.dtype == want for v in live.values())
        if learner.dtype == want:  # the module's own parameters, handed out as they are
            assert all(v.data_ptr() == p.data_ptr() for v, p in zip(
                live.values(), learner.engine.module.parameters(), strict=True))


def test_packed_rows_keep_samples_apart_and_give_the_padded_loss(tiny_model_dir, tokenizer_tiny_batch):
    """Packed rows (several samples per row, position ids restarting, no mask) are block-diagonal:
    each sample's logits are those it gets alone, and the learner's loss equals the padded one."""
    from transformers import AutoModelForCausalLM

    samples, pad = tokenizer_tiny_batch
    padded, packed = collate(samples, pad), collate(samples, pad, row_tokens=2 * max(s.num_tokens for s in samples))
    assert packed.input_ids.shape[0] < len(samples) and packed.position_ids is not None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        alone = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask, use_cache=False).logits
        # no cache, as in the learner: with one, transformers does not look for packed sequences
        together = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
    starts = (packed.position_ids == 0) & packed.attention_mask.bool()
    found = 0
    for b, t in starts.nonzero().tolist():  # each sample: where it starts in the packed rows
        n = next(k for k in range(1, packed.input_ids.shape[1] - t + 1)
                 if t + k == packed.input_ids.shape[1] or packed.position_ids[b, t + k] == 0)
        (i,) = [i for i, s in enumerate(samples) if s.input_ids == packed.input_ids[b, t:t + n].tolist()]
        torch.testing.assert_close(together[b, t:t + n], alone[i, :n], rtol=1e-4, atol=1e-4)
        found += 1
    assert found == len(samples)
    losses = [Learner(tiny_model_dir, zero_stage=0, dtype="fp32", lr=0.0).train_step(b)["train/loss"]
              for b in (padded, packed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.fixture(scope="module")
def tokenizer_tiny_batch(tiny_model_dir):
    """Conditioned samples of different lengths, and the pad id."""
    tok = load_tokenizer(tiny_model_dir)
    cond = Conditioner(tok, mode="critique")
    rows = [(Sample(str(i), f"What is {i} + {i * 7}?", f"{i} + {i * 7} = {8 * i}. " * (1 + i % 3)
                    + f"<answer>{8 * i}</answer>"), Critique(str(i), "Correct." * (1 + i % 2), 1.0, Label.GOOD))
            for i in range(6)]
    return [cond.condition(s, c) for s, c in rows], tok.pad_token_id


def test_loss_matches_full_logits(tiny_model_dir, batch):
    """The learner runs its LM head on loss columns only; the loss must equal the full-logits one."""
    from transformers import AutoModelForCausalLM

    from ixt_stream.update.loss import token_loss

    assert (batch.targets == IGNORE).all(0).any(), "the batch must have columns with no target"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    want, _ = token_loss(logits, batch.targets)
    got = Learner(tiny_model_dir, zero_stage=0, dtype="fp32", lr=0.0).train_step(batch)["train/loss"]
    assert got == pytest.approx(float(want), rel=1e-5)


def _nan_forward(learner: Learner):
    return learner.engine.module.model.embed_tokens.register_forward_hook(
        lambda module, args, out: out * float("nan"))


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_nan_loss_is_skipped_and_counted(tiny_model_dir, batch, zero_stage):
    learner = Learner(tiny_model_dir, zero_stage=zero_stage, dtype="bf16", lr=3e-3)
    learner.train_step(batch)
    before = learner.full_state_dict()
    hook = _nan_forward(learner)
    m = learner.train_step(batch)
    hook.remove()
    assert m["train/applied"] == 0.0 and m["train/skipped_steps"] == 1.0
    assert learner.step == 1 and learner.skipped_steps == 1
    assert _same(learner.full_state_dict(), before)
    assert learner.train_step(batch)["train/applied"] == 1.0
    assert not _same(learner.full_state_dict(), before)


@pytest.mark.parametrize("zero_stage,dtype", [(0, "fp32"), (0, "bf16"), (2, "bf16"), (3, "bf16")])
def test_inf_gradient_is_skipped_and_counted(tiny_model_dir, batch, zero_stage, dtype):
    """A finite loss with an inf gradient: DeepSpeed's optimizer catches it for bf16 and ZeRO,
    the learner itself for ZeRO-0 fp32. Either way nothing is applied and the next step works."""
    learner = Learner(tiny_model_dir, zero_stage=zero_stage, dtype=dtype, lr=3e-3, warmup_steps=4)
    learner.train_step(batch)
    before = learner.full_state_dict()
    param = learner.engine.module.model.norm.weight
    hook = param.register_hook(lambda g: torch.full_like(g, float("inf")))
    m = learner.train_step(batch)
    hook.remove()
    assert m["train/applied"] == 0.0 and learner.skipped_steps == 1 and learner.step == 1
    skipped_lr = m["train/lr"]
    assert _same(learner.full_state_dict(), before)
    m = learner.train_step(batch)
    assert m["train/applied"] == 1.0 and torch.isfinite(torch.tensor(m["train/grad_norm"]))
    assert m["train/lr"] == skipped_lr  # the skipped step did not advance the warmup
    assert all(torch.isfinite(v).all() for v in learner.full_state_dict().values())


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_checkpoint_resumes_exact_step_and_weights(tiny_model_dir, batch, tmp_path, zero_stage):
    kw = dict(zero_stage=zero_stage, dtype="bf16", lr=3e-3, warmup_steps=4)
    a = Learner(tiny_model_dir, **kw)
    a.train_step(batch)
    hook = _nan_forward(a)
    a.train_step(batch)
    hook.remove()
    a.train_step(batch)
    a.save_checkpoint(tmp_path)
    at_save = a.full_state_dict()
    next_metrics = a.train_step(batch)
    after = a.full_state_dict()

    b = Learner(tiny_model_dir, **kw)
    assert b.load_checkpoint(tmp_path) == 2 and b.skipped_steps == 1
    assert _same(b.full_state_dict(), at_save)
    m = b.train_step(batch)
    assert (m["train/lr"], m["train/loss"]) == (next_metrics["train/lr"], next_metrics["train/loss"])
    assert _same(b.full_state_dict(), after)  # optimizer state came back too


def test_load_checkpoint_from_empty_folder_fails(tiny_model_dir, tmp_path):
    learner = Learner(tiny_model_dir, zero_stage=0, dtype="fp32")
    with pytest.raises(FileNotFoundError):
        learner.load_checkpoint(tmp_path)


VLLM_GREEDY = textwrap.dedent("""
    import json, sys
    from ixt_stream.sample.engine import Engine
    engine = Engine(sys.argv[1], dtype="float32", max_model_len=256)
    out = engine.generate([json.loads(sys.argv[2])], n=1, max_new_tokens=4, temperature=0.0)
    print("IDS", json.dumps(out[0][0].token_ids))
""")


@pytest.mark.slow
def test_saved_folder_loads_in_transformers_and_vllm(tiny_model_dir, batch, tmp_path):
    from transformers import AutoModelForCausalLM

    learner = Learner(tiny_model_dir, zero_stage=0, dtype="bf16", lr=3e-3)
    for _ in range(3):
        learner.train_step(batch)
    folder = learner.save_hf(tmp_path / "hf")
    state = learner.full_state_dict()
    assert _same(_disk_weights(str(folder)), state)
    assert load_tokenizer(str(folder)).pad_token_id is not None

    prompt = batch.input_ids[0, : int(batch.attention_mask[0].sum()) - 8].tolist()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0, len(prompt):]
    run = subprocess.run([sys.executable, "-c", VLLM_GREEDY, str(folder), json.dumps(prompt)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("IDS"))[4:])
    assert got == expected.tolist()
