"""A thin vLLM wrapper: token-id prompts in, completions out, weights swapped in place.

Prompts are token ids (built by `condition.Conditioner.inference_ids`) so generation sees exactly
the prefix the learner trained on. The engine runs in-process (no engine subprocess): it starts in
seconds on CPU and `reload_weights` needs no pickling across processes. Because in-process vLLM
takes over torch's thread settings, never share a process with the learner.

vLLM-CPU caveat, handled here: at load it packs every linear weight into a oneDNN / sgl-kernel
handle and frees the weight. `reload_weights` re-runs that packing layer by layer for every layer
whose weights it loads (121 of SmolLM2's 122 handles), but not for a tied LM head: its weight is
the embedding's, which the reload fills without touching the head's handle, so the head keeps
scoring with the old weights (greedy tokens then differ from a fresh engine on the same weights).
On CPU the engine therefore keeps the linear weights after packing (the reload copies into them)
and, after each reload, repacks exactly the handles the reload did not rebuild
(`_reload_and_repack`).

Faster, and taken first on CPU: a payload that maps 1:1 onto the engine's parameters (every
transport sends HF names with ties dropped; vLLM's fused qkv / gate_up are filled from their
parts) is copied straight into them and every handle is repacked (`_copy_and_repack`): the floor
of a weight swap, a memcpy and a repack, where `reload_weights` rebuilds each layer on the side
and copies it back (~2x as long for SmolLM2 here). `tests/integration/test_generator.py` checks
both paths against a fresh engine.

Two more rules keep one bad input from killing a caller. Sampling is seeded once, by the engine
seed: vLLM-CPU crashes on per-request seeds when it splits a batch ("CPU Generator does not use
offset"), so `generate` takes none. A prompt that leaves no room for a new token within
`max_model_len` is refused before vLLM sees it (`fits`): callers skip and count such prompts.
Left out: the direct copy on GPU or with tensor parallelism (`reload_weights` shards and places).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ixt_stream import progress


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str = ""
    """"stop" (end-of-turn or a stop string) | "length" (cut at max_new_tokens)."""


def fits(prompt: list[int], max_model_len: int) -> bool:
    """Whether a token-id prompt is non-empty and leaves room for one new token (vLLM refuses others)."""
    return 0 < len(prompt) < max_model_len


_PACK = None
"""vLLM's own `dispatch_cpu_unquantized_gemm`, once `_keep_cpu_linear_weights` has wrapped it."""


def _keep_cpu_linear_weights() -> None:
    """Make vLLM's CPU linear layers keep their weight after packing it (see the module docstring)."""
    global _PACK
    if _PACK is not None:
        return
    import vllm.model_executor.layers.utils as layer_utils

    _PACK = layer_utils.dispatch_cpu_unquantized_gemm
    layer_utils.dispatch_cpu_unquantized_gemm = lambda layer, remove_weight: _PACK(layer, remove_weight=False)


def _packable(module) -> bool:
    weight = getattr(module, "weight", None)
    return hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel() > 0


def _reload_and_repack(worker, weights_iterator=None, weights_path=None) -> dict:
    """Reload, then repack every CPU linear handle the reload left as it was; runs in the worker.

    A handle counts as rebuilt when the layer's `cpu_linear` is a new object after the reload.
    Returns {"load_s", "repack_s", "repacked"}.
    """
    model = worker.model_runner.get_model()
    before = {id(m): id(m.cpu_linear) for m in model.modules() if hasattr(m, "cpu_linear")}
    t0 = time.perf_counter()
    worker.reload_weights(weights_iterator=weights_iterator, weights_path=weights_path)
    t1 = time.perf_counter()
    stale = [m for m in model.modules() if _packable(m) and before.get(id(m)) == id(m.cpu_linear)]
    for module in stale:
        _PACK(module, remove_weight=False)
    return {"load_s": t1 - t0, "repack_s": time.perf_counter() - t1, "repacked": len(stale)}


def _copy_plan(model, tensors: dict) -> list | None:
    """(parameter, [source tensors]) covering every parameter and every tensor exactly once, with
    vLLM's fused parameters (qkv_proj, gate_up_proj) filled from their parts in order; None when
    the payload does not map 1:1 (another layout, sharded or padded parameters)."""
    fused = getattr(model, "packed_modules_mapping", {})
    plan, used = [], set()
    for name, param in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        parent, _, last = module.rpartition(".")
        names = [name] if name in tensors else [f"{parent}.{part}.{leaf}" for part in fused.get(last, ())]
        parts = [tensors.get(n) for n in names]
        if not parts or any(t is None or t.dtype != param.dtype or t.shape[1:] != param.shape[1:] for t in parts) \
                or sum(t.shape[0] for t in parts) != param.shape[0]:
            return None
        plan.append((param, parts))
        used.update(names)
    return plan if used == set(tensors) else None


def _copy_and_repack(worker, tensors: dict) -> dict | None:
    """Copy a payload straight into the engine's parameters, then repack every CPU linear handle:
    the floor (a memcpy and a repack), without the layer-by-layer rebuild of `reload_weights`.
    None (nothing touched) when the payload does not map 1:1 onto the parameters."""
    import torch

    model = worker.model_runner.get_model()
    plan = _copy_plan(model, tensors)
    if plan is None:
        return None
    t0 = time.perf_counter()
    with torch.no_grad():
        for param, parts in plan:
            at = 0
            for t in parts:
                param.data[at:at + t.shape[0]].copy_(t)
                at += t.shape[0]
    split = _repack_all(worker)
    return {"load_s": time.perf_counter() - t0 - split["repack_s"], **split}


def _repack_all(worker) -> dict:
    """Repack every CPU linear handle (what a full repack costs: half the weight-push floor)."""
    t0 = time.perf_counter()
    modules = [m for m in worker.model_runner.get_model().modules() if _packable(m)]
    for module in modules:
        _PACK(module, remove_weight=False)
    return {"repack_s": time.perf_counter() - t0, "repacked": len(modules)}


def _cpu_env(kv_cache_gib: int, threads: int) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


class Engine:
    """One vLLM `LLM`, created from a HF folder.

    Args:
        model_dir: Hugging Face model folder.
        dtype: "bfloat16" | "float32" | "auto".
        max_model_len: context length (prompt + completion).
        kv_cache_gib: CPU KV-cache size; on GPU `gpu_memory_utilization` applies instead.
        progress: label of a progress bar over each `generate` call's prompts ("" = none).
    """

    def __init__(
        self,
        model_dir: str,
        dtype: str = "bfloat16",
        max_model_len: int = 1024,
        kv_cache_gib: int = 1,
        threads: int = 1,
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        progress: str = "",
    ):
        _cpu_env(kv_cache_gib, threads)
        from vllm import LLM
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            _keep_cpu_linear_weights()
        self.model_dir = model_dir
        self.max_model_len = max_model_len
        self.last_reload: dict = {}
        """The last reload's split: load_s (copy into the engine, rebuilding handles), repack_s, repacked."""
        self.progress = progress
        self.llm = LLM(
            model=model_dir,
            dtype=str(dtype),  # a plain str: vLLM validates it against a Literal
            max_model_len=max_model_len,
            enforce_eager=True,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
        )

    def fits(self, prompt: list[int]) -> bool:
        return fits(prompt, self.max_model_len)

    def generate(
        self,
        prompts: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[Completion]]:
        """`n` completions for each token-id prompt, in prompt order (the engine seed applies).

        Raises ValueError, before any generation, when a prompt does not `fit`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if too_long := [i for i, p in enumerate(prompts) if not self.fits(p)]:
            raise ValueError(f"prompts {too_long} have {[len(prompts[i]) for i in too_long]} tokens: no room "
                             f"for a new token within max_model_len={self.max_model_len}")
        params = SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=bool(self.progress) and progress.labelled(self.progress))
        return [[Completion(c.text, list(c.token_ids), c.finish_reason or "") for c in o.outputs] for o in outs]

    def reload_weights(self, weights_path: str | None = None, state_dict: dict | None = None) -> float:
        """Swap in new weights without restarting; returns seconds spent (split in `last_reload`).

        From a folder of safetensors (`weights_path`) or from memory (`state_dict`).
        """
        t0 = time.perf_counter()
        source = {"weights_iterator": iter(state_dict.items())} if state_dict is not None else {
            "weights_path": weights_path}
        direct = None
        if self.on_cpu and state_dict is not None:
            (direct,) = self.llm.collective_rpc(_copy_and_repack, args=(state_dict,))
        if direct is not None:
            self.last_reload = direct
        elif self.on_cpu:
            (self.last_reload,) = self.llm.collective_rpc(_reload_and_repack, kwargs=source)
        else:
            self.llm.collective_rpc("reload_weights", kwargs=source)
            self.last_reload = {"load_s": time.perf_counter() - t0, "repack_s": 0.0, "repacked": 0}
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def tokenizer(self):
        return self.llm.get_tokenizer()
