"""The keyed generator's draws (`targets.philox`) as one Triton kernel: on a GPU, a cell's normal or uniform
costs one pass instead of the ~130 elementwise passes of the torch integer ops.

`tl.rand4x`/`tl.randn4x` draw exactly what `philox.rand`/`philox.randn` compute (uniforms bit for bit, normals to
the float rounding of the GPU's log and cosine, about 2e-7), so the chip stays the same on every device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit(do_not_specialize=["seed", "first", "start", "n"])  # a new seed must not compile a new variant
def _draw_kernel(out_ptr, seed, first, start, n, state_ptr, block_counters, NORMAL: tl.constexpr,
                 FROM_STATE: tl.constexpr, BLOCK: tl.constexpr):
    """Counters `first + ...`, four draws each (`randn4x`/`rand4x`); draw `4 c + j` goes to `out[4 c + j - start]`.
    FROM_STATE: the seed is `state[0]` and the counters start `state[1] * block_counters` further, both read here."""
    counter = first + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    at = 4 * counter - start
    if FROM_STATE:
        seed = tl.load(state_ptr)
        counter += tl.load(state_ptr + 1) * block_counters
    if NORMAL:
        d0, d1, d2, d3 = tl.randn4x(seed, counter)
    else:
        d0, d1, d2, d3 = tl.rand4x(seed, counter)
    tl.store(out_ptr + at, d0, mask=(at >= 0) & (at < n))
    tl.store(out_ptr + at + 1, d1, mask=(at + 1 >= 0) & (at + 1 < n))
    tl.store(out_ptr + at + 2, d2, mask=(at + 2 >= 0) & (at + 2 < n))
    tl.store(out_ptr + at + 3, d3, mask=(at + 3 >= 0) & (at + 3 < n))


def draw(seed: int, count: int, device: torch.device, start: int = 0, normal: bool = True) -> torch.Tensor:
    """Draws `start .. start+count-1` of stream `seed`, float32 on `device` (normals, or uniforms in [0, 1)):
    draw `i` is component `i % 4` of counter `i // 4`, as `philox.randn`/`philox.rand` lay them out.

    Example:
        >>> draw(12345, 4096, torch.device("cuda")).std()  # about 1
    """
    out = torch.empty(count, device=device, dtype=torch.float32)
    if count:
        first = start // 4
        counters = (start + count + 3) // 4 - first
        _draw_kernel[(triton.cdiv(counters, BLOCK),)](out, seed, first, start, count, out, 0, NORMAL=normal,
                                                      FROM_STATE=False, BLOCK=BLOCK)
    return out


def draw_block(state: torch.Tensor, count: int, stride: int, normal: bool = True) -> torch.Tensor:
    """Draws `state[1] * stride .. + count - 1` (normals, or uniforms in [0, 1)) of the stream whose seed is
    `state[0]` (an int64 pair on the GPU, read by the kernel: a CUDA graph's replay draws the block the state holds
    then); `stride` a multiple of 4."""
    out = torch.empty(count, device=state.device, dtype=torch.float32)
    if count:
        _draw_kernel[(triton.cdiv(count, 4 * BLOCK),)](out, 0, 0, 0, count, state, stride // 4, NORMAL=normal,
                                                       FROM_STATE=True, BLOCK=BLOCK)
    return out
