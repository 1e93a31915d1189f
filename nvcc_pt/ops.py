"""The one custom op that mapped products lower to, and the module that holds its state.

`nvcc_pt::cim_linear(x, weight, bias, state, config) -> y` computes `y = x @ W^T + b` the way
the crossbars would at the fidelity named in `config` (a JSON string). `weight` is the
effective dense weight `[N, K]` the fast paths use; `state` holds what the slower paths
need (`CimState.STATE`). The simulator target registers the implementation; this module
only declares the schema, a shape function, and the gradient a compiled model is trained through.

Gradient rule (every fidelity; docs/training.md): straight-through within range, zero outside a
clipping ADC's range. The backward is that of `y = x @ W_eff^T + b` with `W_eff` the programmed
effective weight (`CimState.weight`): the input quantizer, the DAC, the weight quantizer, device
variation, read noise and the ADC's rounding pass the gradient as the identity. At `adc` and
`bit-serial` the forward records, per row tile r, input row m and output n, whether any ADC read
that makes up tile r's partial sum for output n (any input cycle, slice, or sign phase) fell
outside the ADC's codes (`round(v/step)` below its lowest or above its highest code); such a
(tile, output) pair passes no gradient to the tile's inputs or weights, as a clipped quantizer
does. The bias is added digitally after the ADC and always gets the plain gradient. The mask costs
a compare per partial sum and is only recorded when an input of the op requires a gradient.

    >>> y = cm(x); y.sum().backward(); x.grad      # a compiled model trains like the model
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

import torch
from torch import nn

FIDELITIES = ("exact", "quantized", "noisy", "adc", "bit-serial")

torch.library.define(
    "nvcc_pt::cim_linear",
    "(Tensor x, Tensor weight, Tensor? bias, Tensor[] state, str config) -> Tensor",
)


@torch.library.register_fake("nvcc_pt::cim_linear")
def _cim_linear_shape(x, weight, bias, state, config):
    return x.new_empty((*x.shape[:-1], weight.shape[-2]))


CLIPPED: dict[str, torch.Tensor] = {}
"""Per op name, the clip mask of its latest forward at `adc`/`bit-serial` with gradients wanted: `[R, M, N]` bool,
True where row tile r's partial sum for output n of input row m was clipped by an ADC in any of its reads (any
input cycle, slice or sign phase). The simulator writes it during the forward; the op's autograd takes it."""


def _setup_context(ctx, inputs, output):
    x, weight, bias, state, config = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.n_state = len(state)
    ctx.clipped = CLIPPED.pop(parse_config(config)["op"], None)
    ctx.rows = parse_config(config).get("rows", 0)
    ctx.chip = getattr(state[1], CHIP_ATTR, None) if len(state) > 1 else None
    if ctx.chip is not None:  # the weight input is the source: the gradient's W_eff is regenerated
        ctx.scale, ctx.config = state[0], parse_config(config)


def _backward(ctx, grad):
    """Straight-through: the backward of `F.linear(x, W_eff, b)`, with every (row tile, output) partial sum that an
    ADC clipped passing no gradient (a clipped quantizer's rule). `W_eff` is the programmed effective weight, so
    the input gradient sees the chip's weights; the weight gradient is that of `W_eff` (quantizers and device
    variation are the identity to it) and is returned only when the weight input requires it."""
    x, weight = ctx.saved_tensors
    if ctx.chip is not None:
        from nvcc_pt.targets.simulator import columns_weight

        columns = ctx.chip.columns(weight.detach(), ctx.scale, ctx.config)
        weight = columns_weight(columns, ctx.scale, ctx.config, weight.shape[1]).to(weight.dtype)
    w = (weight if weight.dim() == 3 else weight[None]).to(grad.dtype)  # [I, N, K]: stacked instances or one
    inst, n, k = w.shape
    g = grad.reshape(inst, -1, n)
    xs = x.reshape(inst, -1, k).to(grad.dtype)
    want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x = grad_w = None
    if ctx.clipped is None:
        grad_x = torch.bmm(g, w) if want_x else None
        grad_w = torch.bmm(g.transpose(1, 2), xs) if want_w else None
    else:
        keep = ~ctx.clipped.reshape(ctx.clipped.shape[0], inst, -1, n)
        grad_x = g.new_zeros(inst, g.shape[1], k) if want_x else None
        grad_w = g.new_zeros(inst, n, k) if want_w else None
        for r in range(keep.shape[0]):
            cols = slice(r * ctx.rows, min((r + 1) * ctx.rows, k))
            gr = g * keep[r]
            if want_x:
                grad_x[..., cols] = torch.bmm(gr, w[..., cols])
            if want_w:
                grad_w[..., cols] = torch.bmm(gr.transpose(1, 2), xs[..., cols])
    if grad_x is not None:
        grad_x = grad_x.reshape(x.shape).to(x.dtype)
    if grad_w is not None:
        grad_w = (grad_w if weight.dim() == 3 else grad_w[0]).to(weight.dtype)
    grad_b = grad.reshape(-1, n).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b, [None] * ctx.n_state, None


torch.library.register_autograd("nvcc_pt::cim_linear", _backward, setup_context=_setup_context)


@lru_cache(maxsize=4096)
def parse_config(config: str) -> dict[str, Any]:
    return json.loads(config)


class ReadStream:
    """Where one op's read noise comes from: the plan's seed, the op's index in the plan, and the calls so far.

    Call `n`'s read noise is block `n` of the keyed generator's `READ` stream for (seed, op) (`targets.philox`),
    so a sequence of calls after `cm.program(seed)` repeats exactly, on every device, whatever torch's global
    generator holds. `state` holds the stream's Philox seed and the calls so far as an int64 pair on the op's
    device, where the draws read them, so a CUDA graph's replay draws the next call's noise.
    """

    def __init__(self, seed: int, op_index: int, device: torch.device | str | None = None):
        self.state = torch.empty(2, dtype=torch.int64, device=device)
        self.restart(seed, op_index)

    def restart(self, seed: int, op_index: int) -> None:
        """Calls from 0 again, for (seed, op), in the same buffer (filled from the host's numbers: no copy, so
        programming a model on a GPU does not wait for the device)."""
        from nvcc_pt.targets.philox import READ, write_stream_seeds

        self.seed, self.op_index = int(seed), int(op_index)
        write_stream_seeds(self.state[:1], self.seed, self.op_index, (READ,))
        self.state[1].zero_()

    @property
    def calls(self) -> int:
        """The calls drawn so far (a read from the device where the state is on one)."""
        return int(self.state[1])

    @calls.setter
    def calls(self, value: int) -> None:
        self.state[1] = int(value)

    def next_call(self, device: torch.device) -> torch.Tensor:
        """Count one more call; the state, on `device` (moved there if it is not), for the call's draws."""
        if self.state.device != device:
            self.state = self.state.to(device)
        self.state[1:].add_(1)
        return self.state


READ_STREAM_ATTR = "_nvcc_read_stream"
"""The attribute of an op's `scale` buffer that holds its `ReadStream`: the op sees its state only as tensors."""
CHIP_ATTR = "_nvcc_keyed_chip"
"""The attribute of an op's (empty) `levels` buffer that holds its `simulator.KeyedChip` where the levels are
regenerated per call instead of stored; the op's `weight` is then the source weight they are programmed from."""


class CimState(nn.Module):
    """The programmed state of one mapped op.

    `source` is the original float weight `[N, K]` (a view, not saved); `weight` the effective
    weight the fast paths multiply by; `STATE` names what the crossbar-level paths need.

    Re-programming writes new values into the same buffers where the shapes allow, so CUDA graphs
    recorded against them stay valid; copy a buffer to keep an instance's values.

    `nvcc_pt.montecarlo` may stack several programmed instances: `weight` `[I, N, K]` and
    `levels` `[I, ...]`. The op then reads the leading dimension of its input as I equal
    blocks, instance-major, and runs block i on instance i.
    """

    STATE = ("scale", "levels", "adc_range")

    def __init__(self, source: torch.Tensor, config: dict[str, Any]):
        super().__init__()
        self.register_buffer("source", source.detach(), persistent=False)
        self.register_buffer("weight", source.detach())
        for name in self.STATE:
            self.register_buffer(name, torch.empty(0, device=source.device))
        self.config = dict(config)

    def _apply(self, fn, recurse=True):
        # A per-op ADC range is two numbers the host reads on every call: it stays on the CPU, so reading it costs
        # no device sync (and a CUDA graph can capture the op). Per-column ranges move with the levels.
        adc_range = self.adc_range
        stream = getattr(self.scale, READ_STREAM_ATTR, None)
        chip = getattr(self.levels, CHIP_ATTR, None)
        if chip is not None and fn(self.levels).device.type != self.levels.device.type:
            # a regenerated chip moving to another kind of device is stored first: the two kinds' draws round their
            # log and cosine a unit apart
            from nvcc_pt.targets.simulator import store_chip

            store_chip(self)
            chip = None
        super()._apply(fn, recurse)
        if adc_range.numel() <= 2:
            self.adc_range = adc_range
        if stream is not None:  # a moved buffer is a new tensor: the read-noise stream goes with it
            stream.state = fn(stream.state)
            setattr(self.scale, READ_STREAM_ATTR, stream)
        if chip is not None:  # so does a regenerated chip, with its seeds where the kernel reads them
            if chip.seeds is not None:
                chip = dataclasses.replace(chip, seeds=fn(chip.seeds))
            setattr(self.levels, CHIP_ATTR, chip)
        return self

    def stored_chip(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective weight and the levels as a stored chip holds them (`weight` and `levels`, or for levels
        regenerated per call, `CHIP_ATTR`, both from one regeneration)."""
        from nvcc_pt.targets.simulator import stored_chip

        return stored_chip(self)

    def effective_weight(self) -> torch.Tensor:
        """The weight `[N, K]` the programmed chip multiplies by (`stored_chip`)."""
        return self.stored_chip()[0]

    def stored_levels(self) -> torch.Tensor:
        """The programmed levels as stored (`stored_chip`)."""
        return self.stored_chip()[1]

    def start_read_stream(self, seed: int, op_index: int) -> None:
        """Restart this op's read noise for a programmed instance (`ReadStream`), in place where it has one."""
        stream = getattr(self.scale, READ_STREAM_ATTR, None)
        if stream is not None:
            stream.restart(seed, op_index)
        else:
            setattr(self.scale, READ_STREAM_ATTR, ReadStream(seed, op_index, self.scale.device))

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    def programmed_bytes(self) -> int:
        """Bytes the programmed state adds to the model: its buffers, less any that share the source's storage.

        Example:
            >>> sum(state.programmed_bytes() for _, state in cm.plan.states())
        """
        source = self.source.untyped_storage().data_ptr() if self.source.numel() else None
        held = [self.weight, *(getattr(self, name) for name in self.STATE)]
        return sum(t.numel() * t.element_size() for t in held
                   if t.numel() and t.untyped_storage().data_ptr() != source)


# `nvcc_pt::cim_matmul(a, b, state, config) -> a @ b` with `b` (k^T or v of attention, batched over batch and
# heads) written into crossbar cells on every call. `state` is the op's `WriteState.key` (each write-noise stream's
# seed and the calls made, `philox.BlockKey`): the op counts the call in it and draws the call's block of each
# stream where the state lives, so runs replay from a seed.
torch.library.define("nvcc_pt::cim_matmul", "(Tensor a, Tensor b, Tensor state, str config) -> Tensor")


@torch.library.register_fake("nvcc_pt::cim_matmul")
def _cim_matmul_shape(a, b, state, config):
    return torch.matmul(a, b)


def _matmul_setup_context(ctx, inputs, output):
    a, b, _state, _config = inputs
    ctx.save_for_backward(a, b)


def _matmul_backward(ctx, grad):
    a, b = ctx.saved_tensors
    # Straight-through, as cim_linear: quantizers, write noise and ADCs pass the gradient of `a @ b`.
    grad_a = grad @ b.transpose(-2, -1).to(grad.dtype)
    grad_b = a.transpose(-2, -1).to(grad.dtype) @ grad
    return _unbroadcast(grad_a, a.shape), _unbroadcast(grad_b, b.shape), None, None


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1]
    return grad.sum(dims, keepdim=True) if dims else grad


torch.library.register_autograd("nvcc_pt::cim_matmul", _matmul_backward, setup_context=_matmul_setup_context)


class WriteState(nn.Module):
    """What a mapped dynamic product keeps between calls: `key`, its write noise's `philox.BlockKey` state (each
    stream's seed for (seed, op), and the calls so far), on the op's device.

    The write noise of call `c` is block `c` of the op's streams, so the same seed and the same sequence of inputs
    give the same numbers on every device, and a CUDA graph's replay draws the next call's; `reseed` starts the
    count again.

    Example:
        >>> state = WriteState(seed=0, config={"op_index": 2}); state.reseed(3); state.calls
        0
    """

    def __init__(self, seed: int, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = dict(config or {})
        self.register_buffer("key", torch.empty(3, 2, dtype=torch.int64), persistent=False)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        from nvcc_pt.targets.philox import BlockKey

        BlockKey.start(int(seed), int(self.config.get("op_index", 0)), state=self.key)

    @property
    def calls(self) -> int:
        """The calls written so far (a read from the device where the key is on one)."""
        return int(self.key[0, 1])

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)
