"""A keyed counter-based generator: a chip is a function of (seed, op, cell).

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
maps a 64-bit key and a 128-bit counter to four 32-bit words. Here the key is derived from
(seed, op, call, stream) (`ChipKey.stream_seed`) and the counter is a cell's flat index, so any
cell's draw can be computed alone, in any order, on any device: the words are integer arithmetic
(torch int64 tensors holding 32-bit values), identical on CPU and CUDA.

The layout is Triton's (`triton.language.random`): `randint4x(seed, offset)` runs Philox on the
counter `(offset_lo, offset_hi, 0, 0)` with the key `(seed_lo, seed_hi)`; `rand` turns each of the four
words into a float in [0, 1) the way Triton does (`tl.rand4x`), `randn` the two pairs into four normals by
Box-Muller (`tl.randn4x`): cell `i` takes component `i % 4` of counter `i // 4`. A Triton kernel given
`stream_seed(...)` draws the same numbers, uniforms bit for bit and normals to the float rounding of the
transcendental functions (about 1e-6), so it can regenerate a cell's deviation instead of reading a
stored one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

VARIATION, DRIFT, FAULT, READ = 0, 1, 2, 3
"""The streams of one op's chip: programming variation, drift exponents, stuck-at faults, and read noise (a block
of draws per call, `simulator.read_normals`)."""

_MASK = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_CHUNK = 2**21
"""Counters per chunk: the int64 words of a chunk (about ten live at once) stay within a few hundred MB."""
COMPILED_CPU = True
"""Draw on the CPU with the compiled kernel (`philox_cpu`) where Numba is installed; False keeps the torch ops
(the reference the compiled draws are tested against)."""
_UNIFORM_SCALE = 4.6566127342e-10
"""Triton's scale from a non-negative int32 to [0, 1): the largest with `(2^31 - 1) * scale < 1` in float32."""
_TINY_UNIFORM, _TWO_PI = 1.0e-7, 6.283185307179586
"""Box-Muller's floor on its first uniform (Triton's, so that the log stays finite) and 2 pi, as `tl.randn4x` has them."""


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int,
               k1: int) -> tuple[torch.Tensor, ...]:
    """Ten rounds of Philox4x32 on counters (int64 tensors holding values in [0, 2^32)) under key (k0, k1).

    The 32x32-bit products are taken in int64: they wrap modulo 2^64, and masking keeps the right bits of
    the high and the low word whatever the sign bit became. `c2` is overwritten.

    Example:
        >>> zero = torch.zeros(1, dtype=torch.int64)
        >>> [hex(int(w)) for w in philox4x32(zero, zero, zero.clone(), zero, 0, 0)]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    for _ in range(_ROUNDS):
        prod_b = c2.mul_(_ROUND_B)
        prod_a = c0 * _ROUND_A
        lo_b, lo_a = prod_b & _MASK, prod_a & _MASK
        hi_b = prod_b.bitwise_right_shift_(32).bitwise_and_(_MASK).bitwise_xor_(c1).bitwise_xor_(k0)
        hi_a = prod_a.bitwise_right_shift_(32).bitwise_and_(_MASK).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = hi_b, lo_b, hi_a, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK, (k1 + _KEY_B) & _MASK
    return c0, c1, c2, c3


def randint4x(seed: int, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Four 32-bit words (int64 tensors) per offset, as Triton's `tl.randint4x(seed, offsets)` for int64 offsets."""
    offsets = offsets.to(torch.int64)
    zero = torch.zeros_like(offsets)
    return philox4x32(offsets & _MASK, (offsets >> 32) & _MASK, zero.clone(), zero, seed & _MASK,
                      (seed >> 32) & _MASK)


def _uniform(word: torch.Tensor) -> torch.Tensor:
    """Triton's `uint_to_uniform_float` of 32-bit words: read as int32, negative ones complemented, times the scale."""
    signed = torch.where(word >= 2**31, word - 2**32, word)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=word.device)


def _chunks(count: int, start: int, device: torch.device):
    for at in range(0, count, _CHUNK):
        yield torch.arange(start + at, start + min(count, at + _CHUNK), device=device, dtype=torch.int64)


def _kernel(device: torch.device):
    """The compiled draws for `device`: the Triton kernel module (`philox_triton`) on a GPU with Triton installed,
    the Numba one (`philox_cpu`) on the CPU with Numba installed; None where neither is (the torch ops here)."""
    try:
        if device.type == "cuda":
            from nvcc_pt.targets import philox_triton as kernel
        elif device.type == "cpu" and COMPILED_CPU:
            from nvcc_pt.targets import philox_cpu as kernel
        else:
            return None
    except (ImportError, RuntimeError):  # not installed, or (Numba) no writable cache for its compiled code
        return None
    return kernel


def _uniform4(words: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [_uniform(w) for w in words]


def _normal4(words: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Triton's `randn4x` from four words: Box-Muller on (u1, u2) and on (u3, u4), cosine and sine branches."""
    u = _uniform4(words)
    out = []
    for first, second in ((u[0], u[1]), (u[2], u[3])):
        radius = torch.log(first.clamp_(min=_TINY_UNIFORM)).mul_(-2.0).sqrt_()
        theta = second.mul_(_TWO_PI)
        out += [radius * torch.cos(theta), radius.mul_(torch.sin(theta))]
    return out


def _draws(seed: int, count: int, start: int, device: torch.device, four) -> torch.Tensor:
    """Draws `start .. start+count-1` of a stream: draw `i` is component `i % 4` of counter `i // 4`."""
    first = start // 4
    counters = (start + count + 3) // 4 - first if count else 0
    parts = [torch.stack(four(randint4x(seed, at)), 1).reshape(-1) for at in _chunks(counters, first, device)]
    if not parts:
        return torch.empty(0, device=device)
    flat = torch.cat(parts) if len(parts) > 1 else parts[0]
    return flat[start - 4 * first:start - 4 * first + count]


def rand(seed: int, count: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Uniform floats in [0, 1), draws `start .. start+count-1`: draw `i` is `tl.rand4x(seed, i // 4)[i % 4]`
    (compiled where `_kernel` finds a kernel for `device`, else the torch ops)."""
    device = torch.device(device)
    if (kernel := _kernel(device)) is not None:
        return kernel.draw(seed, count, device, start, normal=False)
    return _draws(seed, count, start, device, _uniform4)


def randn(seed: int, count: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Standard normals, draws `start .. start+count-1`: draw `i` is `tl.randn4x(seed, i // 4)[i % 4]` (four
    normals per Philox call; compiled where `_kernel` finds a kernel for `device`, else the torch ops)."""
    device = torch.device(device)
    if (kernel := _kernel(device)) is not None:
        return kernel.draw(seed, count, device, start, normal=True)
    return _draws(seed, count, start, device, _normal4)


def block_draws(state: torch.Tensor, count: int, stride: int, normal: bool = True) -> torch.Tensor:
    """Standard normals (or, not `normal`, uniforms) of the stream whose seed is `state[0]`, draws
    `state[1] * stride .. + count - 1` (`state`: an int64 pair on the draws' device; `stride` a multiple of 4). On a
    GPU with Triton the kernel reads the pair where it is, so a CUDA graph's replay draws the block the pair holds
    at that replay."""
    if state.is_cuda and (kernel := _kernel(state.device)) is not None:
        return kernel.draw_block(state, count, stride, normal)
    seed, block = state.tolist()
    return (randn if normal else rand)(seed, count, state.device, start=block * stride)


BLOCK_STRIDE = 2**36
"""Draws per block of a stream drawn a block per call (read noise, `simulator.read_normals`; write noise,
`BlockKey`): call `n`'s cell `i` is draw `n * BLOCK_STRIDE + i` (2^36 float16 levels would take 128 GiB)."""


def write_stream_seeds(out: torch.Tensor, seed: int, op: int, streams: tuple[int, ...]) -> torch.Tensor:
    """Write the Philox seeds of (seed, op)'s `streams` into `out` (int64, one per stream, on any device) from the
    host's numbers: a fill per stream, no copy, so nothing waits for the device."""
    for i, stream in enumerate(streams):
        out[i].fill_(ChipKey(seed, op).stream_seed(stream))
    return out


class BlockKey:
    """The key of one call's draws of an operand written per call (a mapped dynamic product): `state` `[3, 2]`, on
    the draws' device, holds each stream's (`VARIATION`, `DRIFT`, `FAULT`) Philox seed and the call's number, and
    cell `i` of stream `s` is draw `state[s, 1] * BLOCK_STRIDE + i` of stream seed `state[s, 0]`. The draws read
    the state where it lives, so a CUDA graph's replay draws the call it is.

    Example:
        >>> state = BlockKey.start(seed=0, op=2)
        >>> BlockKey(state).normal(VARIATION, (2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, state: torch.Tensor):
        self.state = state

    @staticmethod
    def start(seed: int, op: int, device: torch.device | str | None = None,
              state: torch.Tensor | None = None) -> torch.Tensor:
        """The state of (seed, op) before its first call (written into `state` where given, from the host's numbers:
        no copy, so nothing waits for the device)."""
        state = torch.empty(3, 2, dtype=torch.int64, device=device) if state is None else state
        write_stream_seeds(state[:, 0], seed, op, (VARIATION, DRIFT, FAULT))
        state[:, 1].zero_()
        return state

    def normal(self, stream: int, shape: tuple[int, ...] | torch.Size,
               device: torch.device | str | None = None) -> torch.Tensor:
        """Standard normals `shape` (float32) of the call's block of `stream`, on the state's device."""
        return block_draws(self.state[stream], math.prod(int(n) for n in shape), BLOCK_STRIDE).view(tuple(shape))

    def uniform(self, stream: int, shape: tuple[int, ...] | torch.Size,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Uniforms in [0, 1) `shape` (float32) of the call's block of `stream`, on the state's device."""
        return block_draws(self.state[stream], math.prod(int(n) for n in shape), BLOCK_STRIDE,
                           normal=False).view(tuple(shape))


@dataclass(frozen=True)
class ChipKey:
    """The key of one op's draws: (seed, op index, call). A cell's draw is a function of the key, the stream
    (`VARIATION`, `DRIFT`, `FAULT`, `READ`) and the cell's flat index only, so the same seed is the same
    chip on every device and ops can be programmed in any order. `call` numbers the writes of an operand
    written per input (0 for weights programmed once).

    Example:
        >>> key = ChipKey(seed=0, op=3)
        >>> torch.equal(key.normal(VARIATION, (2, 5)), key.normal(VARIATION, (2, 5)))
        True
    """

    seed: int
    op: int
    call: int = 0

    def stream_seed(self, stream: int) -> int:
        """The 63-bit Philox seed of one stream (what a Triton kernel passes to `tl.randn`)."""
        data = b"nvcc_pt.chip" + b"".join(int(v).to_bytes(8, "little", signed=True)
                                           for v in (self.seed, self.op, self.call, stream))
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1

    def normal(self, stream: int, shape: tuple[int, ...] | torch.Size,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normals `shape` (float32): cell `i` of the flattened shape draws offset `i` of the stream."""
        return randn(self.stream_seed(stream), math.prod(int(n) for n in shape), device).view(tuple(shape))

    def uniform(self, stream: int, shape: tuple[int, ...] | torch.Size,
                device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniforms in [0, 1) `shape` (float32), cell `i` from offset `i` of the stream."""
        return rand(self.stream_seed(stream), math.prod(int(n) for n in shape), device).view(tuple(shape))
