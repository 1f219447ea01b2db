"""The DeepSpeed learner: one engine, one `train_step(batch)` per optimizer step.

Built from plain parameters, so `ixt train` and the online loop construct it the same way
(`Learner.from_config` is the one bridge from `LearnerConfig`). The API the loops use:

    learner = Learner(model_dir, zero_stage=0, dtype="bf16", lr=1e-5)
    metrics = learner.train_step(collate(group, pad_id))   # flat dict, `train/...` keys
    weights = learner.full_state_dict()                    # every N steps, to publish
    learner.save_hf(folder); learner.save_checkpoint(folder); learner.load_checkpoint(folder)

Choices:
- One process by default. DeepSpeed without a launcher looks for MPI unless RANK, WORLD_SIZE,
  MASTER_ADDR, ... are set; missing ones are filled in for a single rank (MASTER_PORT 0: the
  store picks its own).
  Under torchrun it runs data-parallel: each rank passes its share of the step (`update.ranks`
  splits a group) and `train_step` makes the one-rank update on the whole group (the loss is
  the mean over all ranks' loss tokens, not a mean of per-rank means).
- "bf16" is DeepSpeed's bf16 mode: the module computes in bf16, the optimizer keeps fp32 master
  weights. DeepSpeed casts the module to bf16 before copying the masters, so training starts
  from the bf16-rounded checkpoint. "fp32" is fp32 throughout.
- The optimizer is torch.optim.AdamW (fused=True) handed to DeepSpeed as a client optimizer:
  DeepSpeed's own cpu_adam / FusedAdam would JIT-compile for minutes on first use.
- The learning rate is set by hand each step from `step` (linear warmup, then constant), as
  nanoGPT does: no scheduler object, so resuming needs nothing but the step.
- A step whose loss or gradient norm is NaN/inf changes no weight, optimizer state or learning
  rate; it is counted in `skipped_steps`. The loss is checked before backward. Gradients are
  checked by DeepSpeed's optimizer for bf16 and for every ZeRO stage (`was_step_applied`), and
  here for ZeRO-0 fp32, where DeepSpeed passes them unchecked to the torch optimizer.
- Checkpoints also carry the torch RNG state (DeepSpeed saves none) and a sha256 manifest
  (`checkpoint_integrity`); `load_checkpoint` refuses a corrupt, truncated or unfinished one and
  falls back to the previous intact one.

Left out: gradient accumulation (a step is one token-budget batch), activation checkpointing,
optimizer offload, LoRA, a decaying LR schedule.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import torch

from ixt_stream.batch.collate import IGNORE, TensorBatch
from ixt_stream.config import LearnerConfig
from ixt_stream.update import checkpoint_integrity as integrity
from ixt_stream.update.loss import token_loss

log = logging.getLogger(__name__)


def _single_process_env() -> None:
    """Fill in the launcher's variables for one rank, so DeepSpeed uses gloo instead of MPI.
    Port 0: the rank's own store binds a free port itself; a port picked here and bound later can be
    taken in between by any outgoing connection (seen in CI: EADDRINUSE under ZeroMQ reconnects)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0")):
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


RANK_TIMEOUT = timedelta(hours=2)
"""How long a rank waits in a collective: the other ranks wait in rank 0's scatter while rank 0
waits for samples, which may take long (a generator outage); a dead rank is the launcher's to
notice (torchrun stops the others)."""


def deepspeed_config(zero_stage: int, dtype: str, grad_clip: float) -> dict:
    """The DeepSpeed config: one micro-batch per step (its size varies; DeepSpeed only counts it)."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bf16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class Learner:
    """A causal LM under a DeepSpeed engine, trained with the IXT loss.

    Args:
        model_dir: Hugging Face model folder (weights loaded in fp32).
        zero_stage: 0 | 1 | 2 | 3.
        dtype: "bf16" (bf16 compute, fp32 master weights) | "fp32".
        lr: peak AdamW learning rate, reached after `warmup_steps` (linear from lr / warmup_steps).
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: optimizer steps of linear warmup (0 = constant lr).
        grad_clip: global gradient-norm clip (0 = off).
        threads: torch intra-op threads for this process (0 = leave torch's setting).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        zero_stage: int = 0,
        dtype: str = "bf16",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        grad_clip: float = 1.0,
        threads: int = 1,
    ):
        if dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, not {dtype!r}")
        _single_process_env()
        if threads > 0:
            torch.set_num_threads(threads)
        import deepspeed
        from transformers import AutoModelForCausalLM

        # DeepSpeed's INFO log prints its whole config at every initialize; keep its warnings.
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.model_dir = model_dir
        self.zero_stage = zero_stage
        self.dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        """The compute dtype of the module (master weights are always fp32)."""
        self.peak_lr = lr
        self.warmup_steps = warmup_steps
        self.step = 0
        """Optimizer updates applied so far (skipped steps excluded)."""
        self.skipped_steps = 0
        deepspeed.init_distributed(timeout=RANK_TIMEOUT, verbose=False)
        self.world = int(os.environ["WORLD_SIZE"])
        """Data-parallel ranks; each step's gradient is the mean over every rank's tokens."""
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # fused: one kernel over all tensors (CPU too, torch >= 2.4): 4x faster than the for-loop
        # AdamW on SmolLM2 on this CPU (0.41 s -> 0.1 s a step)
        self._optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=self._optimizer,
            config=deepspeed_config(zero_stage, dtype, grad_clip),
        )
        self._check_grads_here = zero_stage == 0 and dtype == "fp32"

    @classmethod
    def from_config(cls, model_dir: str, cfg: LearnerConfig) -> Learner:
        return cls(model_dir, zero_stage=cfg.zero_stage, dtype=cfg.dtype, lr=cfg.lr,
                   weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                   grad_clip=cfg.grad_clip, threads=cfg.threads)

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding: every token id fed to `train_step` must be below it."""
        return int(self.engine.module.config.vocab_size)

    def lr_at(self, step: int) -> float:
        """Linear warmup over `warmup_steps`, then the peak lr."""
        if step >= self.warmup_steps:
            return self.peak_lr
        return self.peak_lr * (step + 1) / self.warmup_steps

    # -- training ---------------------------------------------------------------------------------

    def train_step(self, batch: TensorBatch | None) -> dict[str, float]:
        """Forward, backward and one optimizer update on `batch`, unless it is not finite.

        With several ranks every rank calls it with its share of the step (None: no share this
        step, when the group had fewer samples than ranks) and the update is the one a single rank
        would make on the whole group: the loss is the mean over all ranks' loss tokens, and so is
        the gradient DeepSpeed averages; the metrics count the whole group.

        Returns flat metrics: train/step (after this call), train/applied (1 or 0),
        train/skipped_steps, train/loss, train/loss_tokens, train/tokens (unpadded),
        train/padded_tokens, train/samples, train/grad_norm, train/lr, train/step_s,
        train/tokens_per_s.
        """
        if batch is None:  # one position, no target: this rank adds zero gradient to the mean
            one = torch.zeros((1, 1), dtype=torch.long)
            batch = TensorBatch(one, torch.ones_like(one), torch.full_like(one, IGNORE), [])
        t0 = time.perf_counter()
        lr = self.lr_at(self.step)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        on_device = batch.to(self.engine.device)
        self.engine.train()
        # The LM head runs only on the columns where some sample has a target: feedback and prompt
        # columns carry no loss, and a 49k-vocab head over them is a fifth of SmolLM2's FLOPs.
        cols = (on_device.targets != IGNORE).any(0).nonzero().squeeze(1)
        if not len(cols):  # an empty share still runs the graph, so its ranks join the reduction
            cols = cols.new_zeros(1)
        # Packed rows carry position ids and no mask: the model then masks attention per sample.
        rows = ({"attention_mask": on_device.attention_mask} if on_device.position_ids is None
                else {"position_ids": on_device.position_ids})
        logits = self.engine(input_ids=on_device.input_ids, use_cache=False, logits_to_keep=cols, **rows).logits
        loss, stats = token_loss(logits, on_device.targets[:, cols])
        del logits
        counts = {"tokens": batch.num_tokens, "padded": batch.num_padded_tokens, "samples": batch.num_samples}
        if self.world > 1:
            loss, stats, counts = self._mean_over_ranks(loss, stats, counts)
        grad_norm = math.nan
        applied = math.isfinite(stats["loss/mean"]) and stats["loss/tokens"] > 0
        if applied:
            self.engine.backward(loss)
            if self._check_grads_here:
                grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm(grads))
                applied = math.isfinite(grad_norm)
            if applied:
                self.engine.step()
                applied = self.engine.was_step_applied()
                norm = self.engine.get_global_grad_norm()
                if not self._check_grads_here and norm is not None:
                    grad_norm = float(norm)
            else:
                self.engine.zero_grad()
        if applied:
            self.step += 1
        else:
            self.skipped_steps += 1
            log.warning("step %d skipped: loss %s, grad norm %s", self.step, stats["loss/mean"], grad_norm)
        seconds = time.perf_counter() - t0
        return {
            "train/step": float(self.step),
            "train/applied": float(applied),
            "train/skipped_steps": float(self.skipped_steps),
            "train/loss": stats["loss/mean"],
            "train/loss_tokens": stats["loss/tokens"],
            "train/tokens": float(counts["tokens"]),
            "train/padded_tokens": float(counts["padded"]),
            "train/samples": float(counts["samples"]),
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/step_s": seconds,
            "train/tokens_per_s": counts["tokens"] / seconds,
        }

    def _mean_over_ranks(self, loss: torch.Tensor, stats: dict[str, float], counts: dict[str, int]):
        """This rank's loss rescaled so that the mean DeepSpeed takes of the ranks' gradients is the
        gradient of the mean over every rank's loss tokens; stats and counts summed over ranks."""
        import torch.distributed as dist

        local_tokens = stats["loss/tokens"]
        total = torch.tensor([stats["loss/mean"] * local_tokens, local_tokens, *counts.values()],
                             dtype=torch.float64, device=self.engine.device)
        dist.all_reduce(total)
        loss_sum, tokens, *summed = total.tolist()
        loss = loss * (local_tokens * self.world / max(tokens, 1.0))
        mean = loss_sum / tokens if tokens else 0.0
        return loss, {"loss/mean": mean, "loss/tokens": tokens}, dict(zip(counts, map(int, summed), strict=True))

    # -- weights out ------------------------------------------------------------------------------

    def full_state_dict(self, dtype: torch.dtype | None = None, copy: bool = True) -> dict[str, torch.Tensor]:
        """Every parameter, whole and on the CPU: the fp32 master weights, cast to `dtype` if given.

        Works for every ZeRO stage; under ZeRO-1/2/3 it is a collective (every rank must call it).
        With `copy` (the default) tensors are copies, safe to hand to another thread while training
        goes on. Without it, ZeRO-0 on the CPU hands out the live tensors where they already are
        what was asked for (the fp32 masters, or the module's bf16 parameters, which DeepSpeed sets
        to the masters rounded to bf16 after every step, so they equal the cast bit for bit): valid
        until the next `train_step`, for a caller that reads them at once (a weight publish).
        Tied weights appear once (e.g. no `lm_head.weight` when it is tied to the embeddings).
        """
        from deepspeed.utils import safe_get_full_fp32_param

        # ZeRO-0 bf16 runs DeepSpeed's unfused mixed-precision optimizer, which keeps the fp32
        # masters in `fp32_groups` (parallel to the module's `fp16_groups`) and has no public
        # accessor; safe_get_full_fp32_param answers None there, as for ZeRO-0 fp32.
        masters = {}
        if self.zero_stage == 0 and self.dtype == torch.bfloat16:
            opt = self.engine.optimizer
            masters = {id(lp): hp for lps, hps in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                       for lp, hp in zip(lps, hps, strict=True)}
        want = dtype or torch.float32
        out = {}
        for name, param in self.engine.module.named_parameters():
            if not copy and self.zero_stage == 0 and param.device.type == "cpu" and param.dtype == want:
                out[name] = param.detach()  # bf16 compute copy == cast masters; fp32 ZeRO-0: the masters
                continue
            full = safe_get_full_fp32_param(param)
            if full is None:  # ZeRO-0: the optimizer's master copy, or (fp32) the module itself
                full = masters.get(id(param), param).detach()
            out[name] = full if not copy and full.dtype == want and full.device.type == "cpu" else full.to(
                device="cpu", dtype=want, copy=True)
        return out

    def save_hf(self, folder: str | Path) -> Path:
        """Write an HF folder (config, generation config, tokenizer, fp32 safetensors) that
        transformers and vLLM load. Collective under ZeRO-1/2/3; rank 0 writes."""
        from safetensors.torch import save_file
        from transformers import AutoTokenizer

        folder = Path(folder)
        state = self.full_state_dict()
        if self.engine.global_rank != 0:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        module = self.engine.module
        module.config.save_pretrained(folder)
        if module.generation_config is not None:
            module.generation_config.save_pretrained(folder)
        AutoTokenizer.from_pretrained(self.model_dir).save_pretrained(folder)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    # -- resume -----------------------------------------------------------------------------------

    def save_checkpoint(self, folder: str | Path) -> Path:
        """DeepSpeed checkpoint (weights, optimizer state, step counters, torch RNG) under
        `folder/step-N`, then its sha256 manifest (`checkpoint_integrity`). Returns the tag folder."""
        tag_dir = Path(folder) / f"step-{self.step}"
        integrity.remove_manifest(tag_dir)  # a re-save of this tag is unfinished until the end
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        self.engine.save_checkpoint(
            str(folder), tag=tag_dir.name,
            # Own key names: DeepSpeed stores (and strips on load) its own `skipped_steps`, which
            # misses the steps skipped here before backward. DeepSpeed saves no RNG state itself.
            client_state={"ixt_step": self.step, "ixt_skipped_steps": self.skipped_steps, "ixt_rng": rng},
        )
        if self.engine.global_rank == 0:  # DeepSpeed's save ends with a barrier: every rank's files exist
            integrity.write_manifest(tag_dir)
        return tag_dir

    def load_checkpoint(self, folder: str | Path) -> int:
        """Restore the newest intact checkpoint in `folder`; returns the step it resumes at.

        Each tag is verified against its manifest first: a corrupt, truncated or unfinished one is
        logged (naming the file) and the next older one is tried. Raises FileNotFoundError when
        `folder` holds no checkpoint, integrity.CorruptCheckpoint when none is intact.
        """
        candidates = integrity.tags(folder)
        if not candidates:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder}")
        refused = []
        for tag_dir in candidates:
            try:
                integrity.verify(tag_dir)
            except integrity.CorruptCheckpoint as e:
                log.error("%s; trying an older checkpoint", e)
                refused.append(str(e))
                continue
            path, client = self.engine.load_checkpoint(str(folder), tag=tag_dir.name)
            if path is None:
                raise FileNotFoundError(f"DeepSpeed could not load {tag_dir}")
            self.step = int(client["ixt_step"])
            self.skipped_steps = int(client["ixt_skipped_steps"])
            rng = client.get("ixt_rng", {})
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            if refused:
                log.warning("resumed from %s, an older checkpoint: %d newer ones refused", tag_dir, len(refused))
            return self.step
        raise integrity.CorruptCheckpoint(folder, "no intact checkpoint: " + "; ".join(refused))
