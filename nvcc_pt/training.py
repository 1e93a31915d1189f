"""Hardware-aware training through the plan: gradients to the mapped weights, and `train()`.

The plan's ops pass straight-through gradients (`nvcc_pt.ops`, docs/training.md). `weight_leaves`
ties every mapped op's effective weight `W_eff` (what the crossbars hold) to the model parameter it
was programmed from, so `loss.backward()` fills that parameter's `.grad` with `dL/dW_eff`.

`train` fine-tunes a copy of a model through its plan: at every step the chip is programmed again
from the current weights, with device variation drawn from the target's own device model (a new
draw every `redraw_every` steps; Gaussian, or right-censored Gaussian as Yan et al., ICCAD 2023,
train for the k-th-percentile performance), drift at `time_s` for devices that drift, and the ADC
in the loop at `adc`/`bit-serial`. The trained weights are the copy's own parameters; the result
carries that `nn.Module` and a plan compiled again from it.

Example:
    >>> result = nvcc_pt.train(model, "rram4-128x128", batches, steps=100, lr=1e-3, example_inputs=(x,))
    >>> result.model                   # an ordinary nn.Module with the trained weights
    >>> result.compiled(x)             # the plan programmed from them
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nvcc_pt.errors import InputError
from nvcc_pt.ops import CimState


@dataclass(frozen=True)
class WeightLeaf:
    """How one op's effective weight reaches the parameter it was programmed from."""

    state: CimState
    param: nn.Parameter
    """The model parameter whose storage the op's source weight views."""
    view: tuple[tuple[int, ...], tuple[int, ...], int]
    """(size, stride, storage offset) of the source weight within `param`'s storage."""


def weight_leaves(cm) -> list[WeightLeaf]:
    """Each mapped op's source weight as a view of its parameter in the plan's graph (the model's own).

    Raises `InputError` for a plan loaded from files (no model behind it) or a weight that is no parameter.
    """
    if cm.loaded_from is not None:
        raise InputError(f"the plan was loaded from {cm.loaded_from}: it holds programmed weights but no model whose "
                         "weights could be trained; compile the model again with nvcc_pt.compile(model, ...) to "
                         "train its weights (inputs and soft prompts of a loaded plan do get gradients)")
    params = {}
    for p in cm.graph_module.parameters():
        params.setdefault(p.untyped_storage().data_ptr(), p)
    leaves = []
    for name, state in cm.plan.states():
        src = state.source
        param = params.get(src.untyped_storage().data_ptr())
        if param is None:
            raise InputError(f"mapped op {name!r} multiplies by a constant, not a model parameter, so its weight "
                             "cannot be trained; map only layers with parameters (a MappingPolicy exclude pattern)")
        leaves.append(WeightLeaf(state, param, (tuple(src.shape), tuple(src.stride()), src.storage_offset())))
    return leaves


@contextmanager
def bound_weights(leaves: Sequence[WeightLeaf]):
    """Within the block each op multiplies by `W_eff + (W - W.detach())`: `W_eff` in value, and a gradient path to
    the parameter `W` it was programmed from (straight-through)."""
    saved = [leaf.state.weight for leaf in leaves]
    try:
        for leaf, eff in zip(leaves, saved):
            live = leaf.param.as_strided(*leaf.view)
            leaf.state.weight = eff.detach() + (live - live.detach()).to(eff.dtype)
        yield
    finally:
        for leaf, eff in zip(leaves, saved):
            leaf.state.weight = eff


def reprogram(cm, seed: int, censor: float | None = None) -> None:
    """Program `cm` again from its current weights, as `cm.program(seed)` does, with `censor` (right-censored)."""
    from nvcc_pt import meta
    from nvcc_pt.targets.simulator import program_state

    if censor is None:
        cm.program(seed)
        return
    time_s = cm.plan.results.get("time_s")
    for i, (name, state) in enumerate(cm.plan.states()):
        program_state(state, cm.plan.records[name][meta.NOISE], cm.fidelity, seed, i, time_s, cm.target.device,
                      censor=censor)
    cm.plan.seed = seed
    cm._state_replaced()


@dataclass
class TrainResult:
    """What `train` returns."""

    model: nn.Module
    """A trained copy of the model: an ordinary `nn.Module`."""
    compiled: object
    """The trained model compiled again for the same target, fidelity and seed (a `CompiledModel`)."""
    losses: list[float] = field(default_factory=list)
    """Training loss per step."""


def _positive(name: str, value, integer: bool = False):
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer and int(value) != value:
        ok = False
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise InputError(f"train: {name}={value!r} must be {kind}")
    return int(value) if integer else float(value)


def _default_loss(out, target: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if target.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return F.mse_loss(logits, target)


def _save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a reader sees the old checkpoint or the new one, never half of one


def train(model: nn.Module, target, batches: Sequence[tuple[tuple, torch.Tensor]], *, steps: int, lr: float,
          example_inputs: tuple | torch.Tensor | None = None, fidelity: str = "noisy", seed: int = 0,
          loss_fn: Callable | None = None, redraw_every: int = 1, censor: float | None = None,
          time_s: float | None = None, train_biases: bool = True, checkpoint: str | Path | None = None,
          checkpoint_every: int = 10, progress: bool = True, **compile_kwargs) -> TrainResult:
    """Fine-tune a copy of `model`'s mapped weights through its plan on `target` (hardware-aware training).

    Args:
        batches: `(inputs, target)` pairs, `inputs` a tuple of the model's inputs; step i uses `batches[i % len]`.
        steps, lr: Adam steps and step size (positive).
        fidelity: the plan's fidelity in the loop ("noisy": device variation; "adc"/"bit-serial": the ADC too;
            "exact": plain training through the plan, equal to training the model itself).
        seed: seeds the chip draws (step i draws with seed `seed * 1_000_003 + i // redraw_every`) and read noise.
        loss_fn: `(output, target) -> loss`; default cross-entropy for integer targets, else MSE, on `.logits`
            where the output has them.
        redraw_every: steps between fresh draws of device variation (weights are re-programmed every step).
        censor: right-censor the Gaussian variation at this many standard deviations (Yan et al., ICCAD 2023).
        time_s: seconds since programming, for devices that drift (PCM).
        train_biases: train the biases of mapped ops too (added digitally, plain gradients).
        checkpoint: a file written atomically every `checkpoint_every` steps and at the end; if it exists, training
            resumes from it (same result as an uninterrupted run).
        compile_kwargs: passed to `nvcc_pt.compile` (policy, precision, ...).

    Example:
        >>> res = nvcc_pt.train(mlp, "rram4-128x128", [((x,), y)], steps=50, lr=1e-2, example_inputs=(x,))
        >>> res.losses[-1] < res.losses[0]
        True
    """
    import nvcc_pt

    steps = _positive("steps", steps, integer=True)
    lr = _positive("lr", lr)
    redraw_every = _positive("redraw_every", redraw_every, integer=True)
    checkpoint_every = _positive("checkpoint_every", checkpoint_every, integer=True)
    if censor is not None:
        censor = _positive("censor", censor)
    if not batches:
        raise InputError("train: no batches; pass a sequence of (inputs, target) pairs")
    loss_fn = loss_fn or _default_loss
    model = copy.deepcopy(model)
    cm = nvcc_pt.compile(model, target, example_inputs=example_inputs, fidelity=fidelity, seed=seed, **compile_kwargs)
    if time_s is not None:
        cm.program(seed, time_s=time_s)
    leaves = cm.train_weights()._weight_leaves
    params = list({id(leaf.param): leaf.param for leaf in leaves}.values())
    if train_biases:
        params += _mapped_biases(cm, {id(p) for p in params})
    chosen = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in cm.graph_module.parameters()]
    for p, _ in flags:  # the rest stays as it is: no gradients computed for it
        p.requires_grad_(id(p) in chosen)
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    torch.manual_seed(seed)
    if path is not None and path.exists():
        state = torch.load(path, weights_only=True)
        if state.get("steps") != steps or len(state["params"]) != len(params):
            raise InputError(f"checkpoint {path} is of another run ({state.get('steps')} steps, {len(state['params'])} "
                             f"tensors; this run has {steps} and {len(params)}); delete it or pass another path")
        with torch.no_grad():
            for p, v in zip(params, state["params"]):
                p.copy_(v)
        opt.load_state_dict(state["optimizer"])
        losses, start = list(state["losses"]), int(state["step"])
        torch.set_rng_state(state["rng"])

    def save(step: int) -> None:
        if path is not None:
            _save_checkpoint(path, {"steps": steps, "step": step, "params": [p.detach().clone() for p in params],
                                    "optimizer": opt.state_dict(), "losses": losses, "rng": torch.get_rng_state()})

    for step in tqdm(range(start, steps), desc="hardware-aware training", disable=not progress, leave=False,
                     initial=start, total=steps):
        reprogram(cm, seed * 1_000_003 + step // redraw_every, censor)  # weights changed: program them again
        inputs, tgt = batches[step % len(batches)]
        loss = loss_fn(cm(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,))), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save(step + 1)
    for p, flag in flags:
        p.requires_grad_(flag)
    model.eval()
    compiled = nvcc_pt.compile(model, target, example_inputs=example_inputs, fidelity=fidelity, seed=seed,
                               **compile_kwargs)
    return TrainResult(model, compiled, losses)


def _mapped_biases(cm, seen: set[int]) -> list[nn.Parameter]:
    """The parameters the plan's `cim_linear` calls add as biases."""
    out = []
    gm = cm.graph_module
    for node in gm.graph.nodes:
        if node.target is torch.ops.nvcc_pt.cim_linear.default and getattr(node.args[2], "op", None) == "get_attr":
            value = gm.get_parameter(node.args[2].target) if _is_param(gm, node.args[2].target) else None
            if value is not None and id(value) not in seen:
                seen.add(id(value))
                out.append(value)
    return out


def _is_param(gm: nn.Module, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False
