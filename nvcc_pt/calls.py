"""What a call of a compiled model takes and returns.

`prepare_inputs` turns `cm(*args, **kwargs)` into the captured graph's inputs, checked, with the
defaults a Hugging Face user expects (a missing attention mask attends to everything, one soft
prompt serves every row); `build_output` turns the graph's flat outputs back into what the model
returns (a `ModelOutput` keeps its class and fields).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import torch

from nvcc_pt.capture import TOKEN_INPUTS, CaptureInfo, _describe
from nvcc_pt.errors import InputError


def build_output(info: CaptureInfo, flat: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Any:
    """What the captured model returns, rebuilt from the graph's flat outputs."""
    out = info.output
    kind = out.get("type")
    if kind == "tensor":
        return flat[0]
    if kind in ("tuple", "list"):
        return tuple(flat) if kind == "tuple" else list(flat)
    if kind == "dict":
        return dict(zip(out["fields"], flat))
    values = dict(zip(out["fields"], flat))
    cls = _model_output_class(out.get("module", ""), out.get("cls", ""))
    return cls(**values) if cls is not None else values


_OUTPUT_MODULE = re.compile(r"transformers\.(modeling_outputs|models\.[a-z0-9_]+\.modeling_[a-z0-9_]+)")


def _model_output_class(module: str, name: str):
    """The transformers ModelOutput class by name. A plan file names it, so only transformers' own output
    modules are imported (`transformers.modeling_outputs`, `transformers.models.<m>.modeling_<m>`)."""
    if not isinstance(module, str) or not _OUTPUT_MODULE.fullmatch(module) or not str(name).isidentifier():
        return None
    from transformers.utils import ModelOutput

    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, ModelOutput) else None


def prepare_inputs(info: CaptureInfo, args: tuple, kwargs: dict[str, Any],
                   default_prompt: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The graph inputs for a call `cm(*args, **kwargs)`, checked, in capture order.

    Token models take their inputs by position or name; a missing attention mask attends to every
    token, a missing soft prompt is `default_prompt`, and a `[n_virtual, hidden]` prompt serves every row.
    Raises `InputError` naming the input, what it is and what the compiled model expects.
    """
    names = [s.name for s in info.inputs]
    if len(args) > len(names):
        raise InputError(f"the compiled {info.model_class} takes {len(names)} input(s) ({', '.join(names)}), "
                         f"got {len(args)} positional arguments")
    named = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            hint = (" compile a SoftPromptLM (or pass soft_prompt= to compile) to swap prompts at run time;"
                    if key == "soft_prompt" else "")
            raise InputError(f"the compiled {info.model_class} has no input {key!r};{hint} it takes {names}")
        if key in named:
            raise InputError(f"input {key!r} was passed both by position and by name")
        named[key] = value
    named = {k: v for k, v in named.items() if v is not None}
    if info.token_model:
        _fill_token_inputs(info, named, default_prompt)
    missing = [n for n in names if n not in named]
    if missing:
        raise InputError(f"the compiled {info.model_class} needs input(s) {missing}; it takes {names}")
    out = tuple(named[n] for n in names)
    check_inputs(info, out)
    return out


def _fill_token_inputs(info: CaptureInfo, named: dict[str, Any], default_prompt: torch.Tensor | None) -> None:
    ids = named.get("input_ids")
    if ids is None:
        return
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input_ids must be an int64 tensor [batch, seq], got {_describe(ids)}")
    if ids.numel() == 0:
        raise InputError(f"input_ids has shape {tuple(ids.shape)}: an empty batch or sequence; pass at least one token")
    ids = named["input_ids"] = ids.long()
    if info.vocab_size:
        low, high = torch.stack([ids.min(), ids.max()]).tolist()  # one read-back, not two, on a GPU
        if low < 0 or high >= info.vocab_size:
            raise InputError(f"input_ids holds token id {low if low < 0 else high}, outside the vocabulary "
                             f"[0, {info.vocab_size}) of {info.model_class}; check the tokenizer matches the model")
    if info.max_tokens and ids.shape[1] > info.max_tokens:
        raise InputError(f"input_ids has {ids.shape[1]} tokens; {info.model_class} takes at most {info.max_tokens} "
                         f"(its context less {info.num_virtual_tokens} virtual tokens); truncate the input")
    names = {s.name for s in info.inputs}
    if "attention_mask" in names:
        mask = named.get("attention_mask")
        if mask is None:
            named["attention_mask"] = torch.ones_like(ids)
        else:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
                raise InputError(f"attention_mask must be a tensor of the input_ids' shape {tuple(ids.shape)}, got "
                                 f"{_describe(mask)}")
            if mask.is_floating_point() or mask.is_complex():
                raise InputError(f"attention_mask has dtype {mask.dtype}; pass 1 for tokens to attend and 0 for "
                                 "padding, as integers or booleans")
            if mask.device == ids.device and ((mask != 0) & (mask != 1)).any():
                raise InputError("attention_mask holds values other than 0 and 1; pass 1 for tokens to attend and "
                                 "0 for padding")
            named["attention_mask"] = mask.to(torch.int64)
    if "token_type_ids" in names and "token_type_ids" not in named:
        named["token_type_ids"] = torch.zeros_like(ids)
    if "soft_prompt" in names:
        prompt = named.get("soft_prompt", default_prompt)
        if prompt is None:
            raise InputError("this compiled model takes a soft prompt; pass soft_prompt=[n_virtual, hidden] or "
                             "[batch, n_virtual, hidden]")
        spec = next(s for s in info.inputs if s.name == "soft_prompt")
        if not isinstance(prompt, torch.Tensor) or prompt.dim() not in (2, 3) or tuple(prompt.shape[-2:]) != spec.shape[-2:]:
            raise InputError(f"soft_prompt must be [{spec.shape[-2]}, {spec.shape[-1]}] or [batch, {spec.shape[-2]}, "
                             f"{spec.shape[-1]}], got {_describe(prompt)}")
        if prompt.dim() == 2 or prompt.shape[0] == 1:
            prompt = prompt.reshape(1, *spec.shape[-2:]).expand(ids.shape[0], -1, -1)
        elif prompt.shape[0] != ids.shape[0]:
            raise InputError(f"soft_prompt has {prompt.shape[0]} rows but input_ids has a batch of {ids.shape[0]}; "
                             "pass one prompt per row, or one [n_virtual, hidden] prompt for all")
        named["soft_prompt"] = prompt


def check_inputs(info: CaptureInfo, args: tuple) -> None:
    """Raise `InputError` when `args` do not match the captured inputs in count, dtype or rank."""
    if len(args) != len(info.inputs):
        names = ", ".join(i.name for i in info.inputs)
        raise InputError(f"the compiled {info.model_class} takes {len(info.inputs)} input(s) ({names}), got {len(args)}")
    for spec, arg in zip(info.inputs, args):
        if not isinstance(arg, torch.Tensor):
            raise InputError(f"input {spec.name!r} must be a tensor, got {type(arg).__name__}")
        dtype = str(arg.dtype).removeprefix("torch.")
        ok_dtype = dtype == spec.dtype or (spec.name in TOKEN_INPUTS and dtype in ("int64", "int32"))
        if not ok_dtype:
            raise InputError(f"input {spec.name!r} has dtype {dtype}; the compiled {info.model_class} expects {spec.dtype}")
        if arg.dim() != len(spec.shape) or any(s is not None and s != a for s, a in zip(spec.shape, arg.shape)):
            want = tuple("dynamic" if s is None else s for s in spec.shape)
            raise InputError(f"input {spec.name!r} has shape {tuple(arg.shape)}; the compiled {info.model_class} expects {want}")
