"""Model -> FX graph, through `torch.export` (non-strict).

Three kinds of model are accepted:

* a Hugging Face causal LM (anything with `config.vocab_size` and `get_input_embeddings`):
  captured as `logits = f(input_ids)` with `use_cache=False`, batch and sequence dynamic;
* a soft-prompted LM (`SoftPromptLM`, or a PEFT prompt-tuning / p-tuning model, unwrapped to
  its base model and prompt): `logits = f(input_ids, soft_prompt)`, the prompt a graph input
  unless `constant_prompt` is set;
* any other `nn.Module`, with `example_inputs`; its first dimension is tried as dynamic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from nvcc_pt.errors import CaptureError, InputError
from nvcc_pt.prompt.soft_prompt import SoftPromptLM, run_with_prompt

WRAPPED = "m"  # attribute the wrapper keeps the user's model under; stripped from module names


@dataclass(frozen=True)
class InputSpec:
    """One graph input: what a caller must pass."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    """Static sizes, None where the dimension is dynamic."""


@dataclass(frozen=True)
class CaptureInfo:
    kind: str
    """`causal-lm`, `soft-prompt-lm` or `module`."""
    model_class: str
    inputs: tuple[InputSpec, ...]
    num_virtual_tokens: int = 0
    constant_prompt: bool = False
    vocab_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptureInfo:
        inputs = tuple(InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in d["inputs"])
        return cls(**{**d, "inputs": inputs})


class _CausalLM(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        setattr(self, WRAPPED, model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return run_with_prompt(getattr(self, WRAPPED), input_ids, None)


class _PromptedLM(nn.Module):
    def __init__(self, model: nn.Module, prompt: torch.Tensor, constant: bool):
        super().__init__()
        setattr(self, WRAPPED, model)
        if constant:
            self.register_buffer("prompt", prompt.detach().clone())
        self.constant = constant

    def forward(self, input_ids: torch.Tensor, soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        return run_with_prompt(getattr(self, WRAPPED), input_ids, self.prompt if self.constant else soft_prompt)


class _Module(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        setattr(self, WRAPPED, model)

    def forward(self, *args):
        out = getattr(self, WRAPPED)(*args)
        return out.logits if hasattr(out, "logits") else out


def is_causal_lm(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "vocab_size") and hasattr(model, "get_input_embeddings")


def unwrap_peft(model: nn.Module) -> tuple[nn.Module, torch.Tensor] | None:
    """(base model, soft prompt `[n_virtual, hidden]`) of a PEFT prompt-tuning / p-tuning model, else None."""
    if type(model).__name__ not in ("PeftModelForCausalLM", "PeftModel"):
        return None
    config = model.peft_config[model.active_adapter]
    kind = str(getattr(config, "peft_type", ""))
    if not any(t in kind for t in ("PROMPT_TUNING", "P_TUNING")):
        raise CaptureError(
            f"PEFT model with adapter type {kind!r} is not a prompt-learning model; merge the adapter "
            "(model.merge_and_unload()) and compile the merged model"
        )
    with torch.no_grad():
        prompt = model.get_prompt_embedding_to_save(model.active_adapter)
    return model.get_base_model(), prompt.detach().float()


def _default_ids(vocab_size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, 8), generator=g).to(device)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def capture(model: nn.Module, example_inputs: tuple | None = None, *, soft_prompt: torch.Tensor | None = None,
            constant_prompt: bool = False) -> tuple[torch.export.ExportedProgram, CaptureInfo]:
    """Export `model` to an `ExportedProgram` and describe its inputs.

    Raises `CaptureError` naming the model class, the failing op or line and what to try.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"compile() takes an nn.Module, got {type(model).__name__}")
    model.eval()
    name = type(model).__name__
    device = _model_device(model)
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)

    peft = unwrap_peft(model)
    if peft is not None:
        base, prompt = peft
        prompt = prompt if soft_prompt is None else soft_prompt
    elif isinstance(model, SoftPromptLM):
        base, prompt = model.model, (model.prompt.detach() if soft_prompt is None else soft_prompt)
        constant_prompt = constant_prompt or model.constant_prompt
    elif soft_prompt is not None and is_causal_lm(model):
        base, prompt = model, soft_prompt
    else:
        base, prompt = model, None

    if is_causal_lm(base):
        vocab = int(base.config.vocab_size)
        ids = example_inputs[0] if example_inputs else _default_ids(vocab, device)
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise InputError(f"example input_ids must be an int64 tensor [batch, seq], got {_describe(ids)}")
        if ids.shape[0] < 2 or ids.shape[1] < 2:
            # torch.export specializes sizes 0 and 1; trace with 2 so batch and sequence stay dynamic.
            ids = ids.repeat(2 if ids.shape[0] < 2 else 1, 2 if ids.shape[1] < 2 else 1)
        # The sequence bound is the model's own context (less the virtual tokens), so positional
        # tables never have to guard against longer inputs.
        context = int(getattr(base.config, "max_position_embeddings", None) or 131072)
        n_virtual = prompt.shape[0] if prompt is not None else 0
        max_seq = max(context - n_virtual, 2)
        if ids.shape[1] > max_seq:
            raise InputError(f"example input_ids have {ids.shape[1]} tokens; {name} takes at most {max_seq} "
                             f"(context {context}, {n_virtual} virtual tokens)")
        seq = {0: Dim("batch", min=1, max=65536), 1: Dim("seq", min=1, max=max_seq)}
        if prompt is None:
            wrapper, args, dynamic = _CausalLM(base), (ids,), {"input_ids": seq}
            specs = (InputSpec("input_ids", "int64", (None, None)),)
            kind, n_virtual = "causal-lm", 0
        else:
            hidden = base.get_input_embeddings().weight.shape[1]
            prompt = prompt.to(device)
            if prompt.dim() != 2 or prompt.shape[1] != hidden:
                raise InputError(f"soft prompt has shape {tuple(prompt.shape)}; expected [n_virtual, {hidden}] for {name}")
            wrapper = _PromptedLM(base, prompt, constant_prompt)
            kind, n_virtual = "soft-prompt-lm", prompt.shape[0]
            if constant_prompt:
                args, dynamic = (ids,), {"input_ids": seq}
                specs = (InputSpec("input_ids", "int64", (None, None)),)
            else:
                args, dynamic = (ids, prompt), {"input_ids": seq, "soft_prompt": None}
                specs = (InputSpec("input_ids", "int64", (None, None)),
                         InputSpec("soft_prompt", str(prompt.dtype).removeprefix("torch."), tuple(prompt.shape)))
        ep = _export(wrapper, args, dynamic, name)
        return ep, CaptureInfo(kind, name, specs, n_virtual, constant_prompt and prompt is not None, vocab)

    if example_inputs is None:
        raise CaptureError(
            f"{name} is not a Hugging Face causal LM, so nvcc_pt cannot make example inputs for it; "
            "pass example_inputs=(tensor, ...) to compile()"
        )
    wrapper = _Module(base)
    tensors = [a for a in example_inputs if isinstance(a, torch.Tensor)]
    if len(tensors) != len(example_inputs):
        raise InputError(f"example_inputs of {name} must all be tensors, got {[type(a).__name__ for a in example_inputs]}")
    batch = Dim("batch", min=1, max=65536)
    dynamic = (tuple({0: batch} if t.dim() > 0 else None for t in tensors),)
    try:
        ep = _export(wrapper, example_inputs, dynamic, name)
        dyn0 = True
    except CaptureError:
        ep = _export(wrapper, example_inputs, None, name)  # the batch dimension is specialized by the model
        dyn0 = False
    specs = tuple(
        InputSpec(f"input_{i}", str(t.dtype).removeprefix("torch."),
                  tuple(None if (d == 0 and dyn0) else s for d, s in enumerate(t.shape)))
        for i, t in enumerate(tensors)
    )
    return ep, CaptureInfo("module", name, specs)


def _as_dynamic(spec: Any) -> Any:
    """The same dynamic-shapes structure with every named `Dim` replaced by `Dim.DYNAMIC`."""
    if isinstance(spec, dict):
        return {k: _as_dynamic(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(_as_dynamic(v) for v in spec)
    return None if spec is None else Dim.DYNAMIC


def _specialized_inputs(ep: torch.export.ExportedProgram) -> bool:
    """True when the first input's batch dimension, always asked to be dynamic, came back constant."""
    first = ep.graph_signature.user_inputs[0]
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == first:
            val = node.meta.get("val")
            return isinstance(val, torch.Tensor) and val.dim() > 0 and isinstance(val.shape[0], int)
    return False


def _export(wrapper: nn.Module, args: tuple, dynamic: Any, name: str) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            try:
                return torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
            except Exception as e:
                if dynamic is None or "Constraints violated" not in str(e):
                    raise
                # Some torch versions cannot prove guards that hold for every size in a named range
                # (e.g. min(64*s, 128*s) == 64*s); unnamed dynamic dims let export keep those guards.
                ep = torch.export.export(wrapper, args, dynamic_shapes=_as_dynamic(dynamic), strict=False)
                if _specialized_inputs(ep):
                    raise  # a dimension asked to be dynamic came back constant: the first error stands
                return ep
    except Exception as e:  # torch.export raises many unrelated types; all mean "not capturable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaptureError(
            f"torch.export could not capture {name}: {type(e).__name__}: {first[:400]}. "
            "Try: example_inputs that the model accepts as they are, removing data-dependent Python control "
            "flow on tensor values from forward(), or compiling the submodule that holds the matrix products."
        ) from e


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def check_inputs(info: CaptureInfo, args: tuple) -> None:
    """Raise `InputError` when `args` do not match the captured inputs in count, dtype or rank."""
    if len(args) != len(info.inputs):
        names = ", ".join(i.name for i in info.inputs)
        raise InputError(f"the compiled {info.model_class} takes {len(info.inputs)} input(s) ({names}), got {len(args)}")
    for spec, arg in zip(info.inputs, args):
        if not isinstance(arg, torch.Tensor):
            raise InputError(f"input {spec.name!r} must be a tensor, got {type(arg).__name__}")
        dtype = str(arg.dtype).removeprefix("torch.")
        ok_dtype = dtype == spec.dtype or (spec.name == "input_ids" and dtype in ("int64", "int32"))
        if not ok_dtype:
            raise InputError(f"input {spec.name!r} has dtype {dtype}; the compiled {info.model_class} expects {spec.dtype}")
        if arg.dim() != len(spec.shape) or any(s is not None and s != a for s, a in zip(spec.shape, arg.shape)):
            want = tuple("dynamic" if s is None else s for s in spec.shape)
            raise InputError(f"input {spec.name!r} has shape {tuple(arg.shape)}; the compiled {info.model_class} expects {want}")
