"""A thin vLLM wrapper: token-id prompts in, completions out, weights swapped in place.

Prompts are token ids (built by `condition.Conditioner.inference_ids`) so generation sees exactly
the prefix the learner trained on. The engine runs in-process (no engine subprocess): it starts in
seconds on CPU and `reload_weights` needs no pickling across processes. Because in-process vLLM
takes over torch's thread settings, never share a process with the learner.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass
class Completion:
    text: str
    token_ids: list[int]


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
    ):
        _cpu_env(kv_cache_gib, threads)
        from vllm import LLM

        self.model_dir = model_dir
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
                                 use_tqdm=False)
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
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def tokenizer(self):
        return self.llm.get_tokenizer()
