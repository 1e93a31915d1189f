"""The one custom op that mapped products lower to, and the module that holds its state.

`nvcc_pt::cim_linear(x, weight, bias, state, config) -> y` computes `y = x @ W^T + b` the way
the crossbars would at the fidelity named in `config` (a JSON string). `weight` is the
effective dense weight `[N, K]` the fast paths use; `state` holds what the slower paths
need (`CimState.STATE`). The simulator target registers the implementation; this module
only declares the schema, a shape function, and a straight-through gradient so a compiled
model can be trained through (noise-aware prompt training does that).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


def _setup_context(ctx, inputs, output):
    x, weight, bias, _state, _config = inputs
    ctx.save_for_backward(weight)
    ctx.has_bias = bias is not None
    ctx.x_shape = x.shape


def _backward(ctx, grad):
    (weight,) = ctx.saved_tensors
    # Straight-through: quantizers and ADCs pass the gradient as if they were the identity.
    if weight.dim() == 3:  # stacked instances, folded into the leading dimension (see `CimState`)
        grad_x = (grad.reshape(weight.shape[0], -1, grad.shape[-1]) @ weight.to(grad.dtype)).reshape(ctx.x_shape)
    else:
        grad_x = grad @ weight.to(grad.dtype)
    grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
    return grad_x, None, grad_b, None, None


torch.library.register_autograd("nvcc_pt::cim_linear", _backward, setup_context=_setup_context)


@lru_cache(maxsize=4096)
def parse_config(config: str) -> dict[str, Any]:
    return json.loads(config)


@dataclass
class ReadStream:
    """Where one op's read noise comes from: the plan's seed, the op's index in the plan, and the calls so far.

    Read noise is drawn per call from a generator seeded by (seed, op, call), so a sequence of calls after
    `cm.program(seed)` repeats exactly, whatever torch's global generator holds. `program` resets `calls`.
    """

    seed: int
    op_index: int
    calls: int = 0

    def next_seed(self) -> int:
        """The seed of the next call's draws (a hash of the three numbers, so no two (op, call) pairs collide)."""
        self.calls += 1
        key = f"{self.seed}:{self.op_index}:{self.calls}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


READ_STREAM_ATTR = "_nvcc_read_stream"
"""The attribute of an op's `scale` buffer that holds its `ReadStream`: the op sees its state only as tensors."""


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
        # The ADC range is two numbers the host reads on every call: it stays on the CPU, so reading it costs no
        # device sync (and a CUDA graph can capture the op).
        adc_range = self.adc_range
        stream = getattr(self.scale, READ_STREAM_ATTR, None)
        super()._apply(fn, recurse)
        self.adc_range = adc_range
        if stream is not None:  # a moved buffer is a new tensor: the read-noise stream goes with it
            setattr(self.scale, READ_STREAM_ATTR, stream)
        return self

    def start_read_stream(self, seed: int, op_index: int) -> None:
        """Restart this op's read noise for a programmed instance (`ReadStream`)."""
        setattr(self.scale, READ_STREAM_ATTR, ReadStream(seed, op_index))

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


# `nvcc_pt::cim_matmul(a, b, state, config) -> a @ b` with `b` (k^T or v of attention, batched over batch and
# heads) written into crossbar cells on every call. `state` is the op's `WriteState.key`, (seed, calls made):
# the op reads it to seed this call's write noise and counts the call in it, so runs replay from a seed.
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
    """What a mapped dynamic product keeps between calls: `key` = (seed, calls so far), on the CPU.

    The write noise of call `c` is drawn from a generator keyed by (seed, op index, c), so the same
    seed and the same sequence of inputs give the same numbers; `reseed` starts the count again.

    Example:
        >>> state = WriteState(seed=0); state.reseed(3); state.key.tolist()
        [3, 0]
    """

    def __init__(self, seed: int, config: dict[str, Any] | None = None):
        super().__init__()
        self.register_buffer("key", torch.tensor([int(seed), 0], dtype=torch.int64), persistent=False)
        self.config = dict(config or {})

    def reseed(self, seed: int) -> None:
        self.key.copy_(torch.tensor([int(seed), 0]))

    def _apply(self, fn, recurse=True):
        # The key is read and bumped on the host every call: it stays on the CPU (no device sync per op).
        key = self.key
        super()._apply(fn, recurse)
        self.key = key
        return self

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)
