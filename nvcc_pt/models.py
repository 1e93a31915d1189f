"""Built-in tiny models (`builtin:NAME`), built from configs so nothing is downloaded.

Sizes are deliberately odd (hidden 36, MLP 37, vocab 101) so arrays end in partial tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nvcc_pt.errors import InputError


def _llama():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


def _qwen2():
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


def _mistral():
    from transformers import MistralConfig
    return MistralConfig(vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, sliding_window=None)


def _gemma():
    from transformers import GemmaConfig
    return GemmaConfig(vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=18, max_position_embeddings=256)


def _phi():
    # hidden 40: Phi rotates half of each 20-wide head, and rotary widths must be even
    from transformers import PhiConfig
    return PhiConfig(vocab_size=101, hidden_size=40, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=256)


def _gpt2():
    from transformers import GPT2Config
    return GPT2Config(vocab_size=101, n_embd=36, n_layer=2, n_head=2, n_positions=256, bos_token_id=0, eos_token_id=0)


def _opt():
    from transformers import OPTConfig
    return OPTConfig(vocab_size=101, hidden_size=36, ffn_dim=37, num_hidden_layers=2, num_attention_heads=2,
                     word_embed_proj_dim=36, max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=1)


BUILTIN: dict[str, Callable] = {
    "tiny-llama": _llama, "tiny-qwen2": _qwen2, "tiny-mistral": _mistral, "tiny-gemma": _gemma,
    "tiny-phi": _phi, "tiny-gpt2": _gpt2, "tiny-opt": _opt,
}


def builtin_config(name: str):
    if name not in BUILTIN:
        raise InputError(f"unknown built-in model {name!r}; choose one of {sorted(BUILTIN)}")
    return BUILTIN[name]()


def build_model(spec: str, *, seed: int = 0) -> nn.Module:
    """`builtin:NAME` (seeded random weights) or a local Hugging Face model directory."""
    from transformers import AutoModelForCausalLM

    from nvcc_pt import validate as check

    check.text("model", spec, where="build_model")
    check.seed("seed", seed, where="build_model")

    if spec.startswith("builtin:"):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(builtin_config(spec.removeprefix("builtin:"))).eval()
    path = Path(spec)
    if not path.is_dir():
        raise InputError(f"model {spec!r} is neither 'builtin:NAME' ({sorted(BUILTIN)}) nor a local model directory")
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load a causal LM from {path}: {e}") from e
