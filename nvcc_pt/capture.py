"""Model -> FX graph, through `torch.export` (non-strict).

What is accepted, and how it is captured:

* a Hugging Face causal LM (`can_generate()`): `logits = f(input_ids, attention_mask)` with
  `use_cache=False`; positions follow the mask, so a left-padded row gets the logits it gets alone;
* a soft-prompted LM: any model that offers `prompted_parts()` (`PromptedModel`, e.g.
  `nvcc_pt.prompt.SoftPromptLM`) or a PEFT prompt-tuning / p-tuning model, unwrapped to its base
  model and prompt: `f(input_ids, attention_mask, soft_prompt)`, the virtual tokens always attended,
  the prompt `[batch, n_virtual, hidden]` a graph input unless `constant_prompt` is set;
* any other Hugging Face model (encoders through `AutoModel`, classifiers): called with its own
  input names (`input_ids`, `attention_mask`, `token_type_ids`, ...);
* any other `nn.Module`, with `example_inputs`.

Token inputs get a dynamic batch and sequence; other inputs a dynamic first dimension where the
model allows it, or whatever `dynamic_shapes` says (torch.export's own terms, keyed by the model's
argument names or by position). The compiled model returns what the model returns: the graph's
outputs are flat tensors and `CaptureInfo.output` records how to put them back together
(`build_output`), a `ModelOutput` keeping its class and fields.

The core knows nothing of the NVCiM-PT layer: prompted models reach it through `PromptedModel`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.export import Dim

from nvcc_pt.errors import CaptureError, InputError, NvccPtError
from nvcc_pt.generation import generation_defaults

WRAPPED = "m"  # attribute the wrapper keeps the user's model under; stripped from module names
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
"""Integer `[batch, seq]` inputs of token models: they share the dynamic batch and sequence."""
MAX_BATCH = 65536


@runtime_checkable
class PromptedModel(Protocol):
    """A model that prepends virtual tokens (a soft prompt) to a causal LM's input embeddings.

    `prompted_parts()` returns `(causal LM, soft prompt [n_virtual, hidden], constant)`: the compiler
    captures the LM with the prompt as a graph input (or, when `constant` is True, as a constant).
    """

    def prompted_parts(self) -> tuple[nn.Module, torch.Tensor, bool]: ...


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
    """`causal-lm`, `soft-prompt-lm`, `hf-model` (other Hugging Face models) or `module`."""
    model_class: str
    inputs: tuple[InputSpec, ...]
    num_virtual_tokens: int = 0
    constant_prompt: bool = False
    vocab_size: int = 0
    max_tokens: int = 0
    """Longest sequence the model takes (its context less the virtual tokens); 0 when not a token model."""
    output: dict[str, Any] = field(default_factory=lambda: {"type": "tensor"})
    """How the flat graph outputs map back to what the model returns (`build_output`)."""
    generation: dict[str, Any] = field(default_factory=dict)
    """A causal LM's generation settings at capture (`nvcc_pt.generation.generation_defaults`)."""

    def __post_init__(self) -> None:
        # A plan file carries this record: an output structure `build_output` could not follow is refused here.
        out = self.output
        kind = out.get("type") if isinstance(out, dict) else None
        fields = out.get("fields") if kind in ("dict", "model_output") else []
        if kind not in ("tensor", "tuple", "list", "dict", "model_output") or not isinstance(fields, list) \
                or not all(isinstance(f, str) for f in fields) \
                or (kind in ("tuple", "list") and not isinstance(out.get("count"), int)):
            raise ValueError(f"output structure {str(out)[:120]} is not one nvcc_pt writes")

    @property
    def token_model(self) -> bool:
        return self.kind != "module"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptureInfo:
        inputs = tuple(InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in d["inputs"])
        return cls(**{**d, "inputs": inputs})


# -- running a token model ---------------------------------------------------------------------
def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens, as `generate` does for left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def run_causal_lm(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a causal LM with `prompt` (`[n_virtual, hidden]` or `[batch, n_virtual, hidden]`) prepended.

    The virtual tokens are always attended; positions count attended tokens only, so padding on the
    left changes nothing for the other tokens. The logits cover the virtual positions too
    (`[batch, n_virtual + seq, vocab]`), as PEFT returns them.
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    kwargs: dict[str, Any] = {"use_cache": False}
    if prompt is None:
        kwargs["input_ids"] = input_ids
    else:
        embeds = model.get_input_embeddings()(input_ids)
        virtual = prompt.to(embeds.dtype)
        if virtual.dim() == 2:
            virtual = virtual.unsqueeze(0).expand(embeds.shape[0], -1, -1)
        kwargs["inputs_embeds"] = torch.cat([virtual, embeds], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], virtual.shape[1]), mask], dim=1)
    kwargs["attention_mask"] = mask
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = positions_from_mask(mask)
    return model(**kwargs).logits


# -- wrappers that torch.export captures -------------------------------------------------------
def _flatten(out: Any, record: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The tensors of `out` in a fixed order; `record` learns how to rebuild `out` from them."""
    if isinstance(out, torch.Tensor):
        record.update(type="tensor")
        return (out,)
    if _is_model_output(out):
        fields = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        record.update(type="model_output", cls=type(out).__name__, module=type(out).__module__, fields=fields)
        return tuple(out[k] for k in fields)
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        record.update(type="dict", fields=[str(k) for k in out])
        return tuple(out.values())
    if isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out):
        record.update(type=type(out).__name__ if type(out) in (tuple, list) else "tuple", count=len(out))
        return tuple(out)
    raise CaptureError(f"the model returns {type(out).__name__}; nvcc_pt captures models that return a tensor, a "
                       "tuple, list or dict of tensors, or a transformers ModelOutput. Wrap the model in a module "
                       "whose forward returns one of those")


def _is_model_output(out: Any) -> bool:
    try:
        from transformers.utils import ModelOutput
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(out, ModelOutput)


_OUTPUTS: dict[int, dict[str, Any]] = {}
"""Output structure learnt while tracing, by wrapper: torch.export traces a copy of the module, so it cannot be
kept on the wrapper itself."""


class _Wrapper(nn.Module):
    """Calls the user's model with named inputs (and a soft prompt for prompted LMs); returns flat tensors."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], mode: str, prompt: torch.Tensor | None = None):
        super().__init__()
        setattr(self, WRAPPED, model)
        self.names, self.mode = names, mode
        if prompt is not None:
            self.register_buffer("prompt", prompt.detach().clone())
        self.key = id(self)
        _OUTPUTS[self.key] = {}

    @property
    def output(self) -> dict[str, Any]:
        return _OUTPUTS[self.key]

    def learnt_output(self) -> dict[str, Any]:
        """How to rebuild the model's output from the flat graph outputs (known once traced)."""
        return dict(_OUTPUTS.pop(self.key, {}))

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = getattr(self, WRAPPED)
        named = dict(zip(self.names, args))
        if self.mode == "causal-lm":
            prompt = named.get("soft_prompt", getattr(self, "prompt", None))
            logits = run_causal_lm(model, named["input_ids"], named.get("attention_mask"), prompt)
            return _flatten(_causal_output(logits), self.output)
        if self.mode == "hf-model":
            return _flatten(model(**named), self.output)
        return _flatten(model(*args), self.output)


def _causal_output(logits: torch.Tensor):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast(logits=logits)


# -- what kind of model -----------------------------------------------------------------------
def is_hf_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face model that generates text: captured as logits of (input_ids, attention_mask)."""
    can_generate = getattr(model, "can_generate", None)
    return (is_hf_model(model) and hasattr(model, "get_input_embeddings") and callable(can_generate)
            and bool(can_generate()))


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


def prompted_parts(model: nn.Module) -> tuple[nn.Module, torch.Tensor, bool] | None:
    """(causal LM, soft prompt, constant) of a prompted model, else None."""
    peft = unwrap_peft(model)
    if peft is not None:
        return peft[0], peft[1], False
    if isinstance(model, PromptedModel):
        return model.prompted_parts()
    return None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


# -- capture ----------------------------------------------------------------------------------
def capture(model: nn.Module, example_inputs: tuple | dict | torch.Tensor | None = None, *,
            soft_prompt: torch.Tensor | None = None, constant_prompt: bool = False,
            dynamic_shapes: Any = None) -> tuple[torch.export.ExportedProgram, CaptureInfo]:
    """Export `model` to an `ExportedProgram` and describe its inputs and outputs.

    Raises `CaptureError` naming the model class, the failing op or line and what to try.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"compile() takes an nn.Module, got {type(model).__name__}")
    model.eval()
    name = type(model).__name__
    device = _model_device(model)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list, dict)):
        raise InputError(f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors, "
                         f"got {type(example_inputs).__name__}")

    parts = prompted_parts(model)
    if parts is not None:
        base, prompt, constant = parts
        prompt, constant_prompt = (prompt if soft_prompt is None else soft_prompt), constant_prompt or constant
    else:
        base, prompt = model, soft_prompt
    if is_causal_lm(base):
        if dynamic_shapes is not None:
            raise InputError(f"{name} is a causal LM, whose batch and sequence are always dynamic; "
                             "leave dynamic_shapes=None")
        return _capture_causal_lm(base, name, example_inputs, prompt, constant_prompt, device)
    if prompt is not None:
        raise CaptureError(f"a soft prompt needs a Hugging Face causal LM (one whose can_generate() is True); "
                           f"{type(base).__name__} is not one. Drop soft_prompt= or pass the causal LM")
    if is_hf_model(base):
        return _capture_hf(base, name, example_inputs, dynamic_shapes, device)
    return _capture_module(base, name, example_inputs, dynamic_shapes)


def _default_ids(vocab_size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, 8), generator=g).to(device)


def _at_least_two(t: torch.Tensor) -> torch.Tensor:
    """torch.export specializes sizes 0 and 1: trace token inputs with 2 so batch and sequence stay dynamic."""
    if t.dim() == 2 and (t.shape[0] < 2 or t.shape[1] < 2):
        return t.repeat(2 if t.shape[0] < 2 else 1, 2 if t.shape[1] < 2 else 1)
    return t


def _padded_mask(ids: torch.Tensor) -> torch.Tensor:
    """An example mask with one left-padded row, so the trace takes the padding path of the model's masking."""
    mask = torch.ones_like(ids)
    mask[-1, 0] = 0
    return mask


def _context(base: nn.Module) -> int:
    return int(getattr(base.config, "max_position_embeddings", None) or 131072)


def _capture_causal_lm(base, name, example_inputs, prompt, constant_prompt, device):
    vocab = int(base.config.vocab_size)
    given = list(example_inputs.values()) if isinstance(example_inputs, dict) else list(example_inputs or ())
    ids = given[0] if given else _default_ids(vocab, device)
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
        raise InputError(f"example input_ids must be an int64 tensor [batch, seq], got {_describe(ids)}")
    ids = _at_least_two(ids.long())
    n_virtual = int(prompt.shape[-2]) if prompt is not None else 0
    context = _context(base)
    max_seq = max(context - n_virtual, 2)
    if ids.shape[1] > max_seq:
        raise InputError(f"example input_ids have {ids.shape[1]} tokens; {name} takes at most {max_seq} "
                         f"(context {context}, {n_virtual} virtual tokens)")
    # The sequence bound is the model's own context, so positional tables never guard against longer inputs.
    batch, seq = Dim("batch", min=1, max=MAX_BATCH), Dim("seq", min=1, max=max_seq)
    names, args, dyn = ["input_ids", "attention_mask"], [ids, _padded_mask(ids)], [{0: batch, 1: seq}] * 2
    kind = "causal-lm"
    if prompt is not None:
        hidden = base.get_input_embeddings().weight.shape[1]
        prompt = prompt.detach().to(device)
        if prompt.dim() != 2 or prompt.shape[1] != hidden:
            raise InputError(f"soft prompt has shape {tuple(prompt.shape)}; expected [n_virtual, {hidden}] for {name}")
        kind = "soft-prompt-lm"
        if not constant_prompt:
            names.append("soft_prompt")
            args.append(prompt.unsqueeze(0).expand(ids.shape[0], -1, -1).contiguous())
            dyn.append({0: batch})
    wrapper = _Wrapper(base, tuple(names), "causal-lm", prompt if constant_prompt and prompt is not None else None)
    ep = _export(wrapper, tuple(args), (tuple(dyn),), name)
    info = CaptureInfo(kind, name, _input_specs(ep, names), n_virtual, bool(constant_prompt and prompt is not None),
                       vocab, max_seq, wrapper.learnt_output(), generation_defaults(base))
    return ep, info


def _named_inputs(base: nn.Module, name: str, example_inputs) -> dict[str, torch.Tensor]:
    params = [p for p, v in inspect.signature(base.forward).parameters.items()
              if v.kind in (v.POSITIONAL_ONLY, v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    if isinstance(example_inputs, dict):
        named = dict(example_inputs)
        unknown = [k for k in named if k not in params]
        if unknown:
            raise InputError(f"example_inputs name {unknown}, which {name}.forward does not take; it takes {params}")
    else:
        if len(example_inputs) > len(params):
            raise InputError(f"{len(example_inputs)} example inputs for {name}.forward, which takes {params}")
        named = dict(zip(params, example_inputs))
    bad = {k: _describe(v) for k, v in named.items() if not isinstance(v, torch.Tensor)}
    if bad:
        raise InputError(f"example_inputs of {name} must be tensors; got {bad}")
    return named


def _capture_hf(base, name, example_inputs, dynamic_shapes, device):
    vocab = int(getattr(base.config, "vocab_size", 0) or 0)
    if example_inputs is None:
        if not vocab:
            raise CaptureError(f"{name} has no vocabulary to make example inputs from; pass example_inputs=")
        ids = _default_ids(vocab, device)
        named = {"input_ids": ids, "attention_mask": _padded_mask(ids)}
    else:
        named = _named_inputs(base, name, example_inputs)
    names = tuple(named)
    token = {n for n, t in named.items() if n in TOKEN_INPUTS and t.dim() == 2 and not t.is_floating_point()}
    named = {n: _at_least_two(t) if n in token else t for n, t in named.items()}
    max_seq = _context(base)
    if dynamic_shapes is None:
        batch, seq = Dim("batch", min=1, max=MAX_BATCH), Dim("seq", min=1, max=max_seq)
        dyn = [({0: batch, 1: seq} if n in token else {0: batch} if t.dim() else None) for n, t in named.items()]
    else:
        dyn = _user_dynamic(dynamic_shapes, names, name)
    wrapper = _Wrapper(base, names, "hf-model")
    ep = _export(wrapper, tuple(named.values()), (tuple(dyn),), name)
    info = CaptureInfo("hf-model", name, _input_specs(ep, names), 0, False, vocab, max_seq if token else 0,
                       wrapper.learnt_output())
    return ep, info


def _capture_module(base, name, example_inputs, dynamic_shapes):
    if example_inputs is None:
        raise CaptureError(
            f"{name} is not a Hugging Face model, so nvcc_pt cannot make example inputs for it; "
            "pass example_inputs=(tensor, ...) to compile()"
        )
    named = _named_inputs(base, name, example_inputs)
    names, tensors = tuple(named), tuple(named.values())
    _same_device(base, name, named)
    wrapper = _Wrapper(base, names, "module")
    if dynamic_shapes is not None:
        ep = _export(wrapper, tensors, (tuple(_user_dynamic(dynamic_shapes, names, name)),), name)
    else:
        batch = Dim("batch", min=1, max=MAX_BATCH)
        try:
            ep = _export(wrapper, tensors, (tuple({0: batch} if t.dim() > 0 else None for t in tensors),), name)
        except CaptureError:
            ep = _export(wrapper, tensors, None, name)  # the batch dimension is specialized by the model
    return ep, CaptureInfo("module", name, _input_specs(ep, names), output=wrapper.learnt_output())


def _same_device(base: nn.Module, name: str, named: dict[str, torch.Tensor]) -> None:
    """A model on one device traced with example inputs on another fails deep inside torch.export; say so here."""
    device = _model_device(base)
    elsewhere = {k: str(t.device) for k, t in named.items() if t.dim() > 0 and t.device != device}
    if elsewhere:
        raise InputError(f"{name}'s weights are on {device} but its example inputs {elsewhere} are not; move one "
                         f"to the other's device (e.g. example_inputs=(x.to('{device}'),))")


def _user_dynamic(dynamic_shapes: Any, names: tuple[str, ...], name: str) -> list:
    """`dynamic_shapes` in torch.export's terms (by argument name or position) as one entry per input."""
    if isinstance(dynamic_shapes, dict):
        unknown = [k for k in dynamic_shapes if k not in names]
        if unknown:
            raise InputError(f"dynamic_shapes names {unknown}, which are not inputs of {name} ({list(names)})")
        return [dynamic_shapes.get(n) for n in names]
    if isinstance(dynamic_shapes, (tuple, list)) and len(dynamic_shapes) == len(names):
        return list(dynamic_shapes)
    raise InputError(f"dynamic_shapes must be a dict keyed by the inputs {list(names)} or a tuple with one entry per "
                     f"input, in torch.export's terms (e.g. {{'{names[0]}': {{0: torch.export.Dim('batch')}}}}); "
                     f"got {dynamic_shapes!r}")


def _input_specs(ep: torch.export.ExportedProgram, names: list[str] | tuple[str, ...]) -> tuple[InputSpec, ...]:
    """Each user input's dtype and static sizes (None where the captured program left the size dynamic)."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    specs = []
    for name, graph_name in zip(names, ep.graph_signature.user_inputs):
        val = placeholders[graph_name].meta["val"]
        shape = tuple(s if isinstance(s, int) else None for s in val.shape)
        specs.append(InputSpec(name, str(val.dtype).removeprefix("torch."), shape))
    return tuple(specs)


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
    except NvccPtError:
        raise
    except Exception as e:  # torch.export raises many unrelated types; all mean "not capturable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaptureError(
            f"torch.export could not capture {name}: {type(e).__name__}: {first[:400]}. "
            "Try: example_inputs that the model accepts as they are, removing data-dependent Python control "
            "flow on tensor values from forward(), or compiling the submodule that holds the matrix products."
        ) from e
