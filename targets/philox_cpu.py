"""The keyed generator's draws (`targets.philox`) compiled for the CPU with Numba.

The torch integer ops in `targets.philox` are the reference; they take about 130 elementwise passes over int64
tensors per four draws, some 35 ns a normal on two cores, four times `torch.randn`. Compiled, Philox4x32-10 and
Triton's uniform and Box-Muller steps run per counter in registers: uniforms bit for bit the same, normals to the
float rounding of the CPU's log, cosine and sine (about 5e-7), 10 ns a normal and 4 ns a uniform
(`benchmarks/keyed_draws.py`).

A call splits its counters over `torch.get_num_threads()` threads: the kernel releases the GIL and takes no lock,
so it can be called from any thread (programming draws several ops' chips at once).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from nvcc_pt.targets import philox

# the reference's constants, typed for the compiled code
_MASK, _SHIFT = np.uint64(philox._MASK), np.uint64(32)
_ROUND_A, _ROUND_B = np.uint64(philox._ROUND_A), np.uint64(philox._ROUND_B)
_KEY_A, _KEY_B = np.uint64(philox._KEY_A), np.uint64(philox._KEY_B)
_ROUNDS = philox._ROUNDS
_UNIFORM_SCALE = np.float32(philox._UNIFORM_SCALE)
_TWO_PI = np.float32(philox._TWO_PI)
_TINY = np.float32(philox._TINY_UNIFORM)
_MIN_SPLIT = 2**16
"""Counters below which a call runs on the calling thread alone."""


@numba.njit(nogil=True, cache=True, inline="always")
def _uniform(word):
    """Triton's `uint_to_uniform_float`: the word read as int32, a negative one complemented (`min(w, ~w)` on 32
    bits), times the scale."""
    return np.float32(np.int64(min(word, word ^ _MASK))) * _UNIFORM_SCALE


@numba.njit(nogil=True, cache=True)
def _draw_range(out, seed, first, stop, start, normal):
    """Counters `first .. stop-1` of stream `seed`; draw `4 c + j` goes to `out[4 c + j - start]` where in range."""
    n = out.shape[0]
    key0 = np.uint64(seed) & _MASK
    key1 = (np.uint64(seed) >> _SHIFT) & _MASK
    words = np.empty(4, np.uint64)
    draws = np.empty(4, np.float32)
    for counter in range(first, stop):
        c0 = np.uint64(counter) & _MASK
        c1 = np.uint64(counter) >> _SHIFT
        c2 = np.uint64(0)
        c3 = np.uint64(0)
        k0, k1 = key0, key1
        for _ in range(_ROUNDS):
            prod_b = c2 * _ROUND_B
            prod_a = c0 * _ROUND_A
            c0, c1, c2, c3 = (prod_b >> _SHIFT) ^ c1 ^ k0, prod_b & _MASK, (prod_a >> _SHIFT) ^ c3 ^ k1, prod_a & _MASK
            k0 = (k0 + _KEY_A) & _MASK
            k1 = (k1 + _KEY_B) & _MASK
        words[0], words[1], words[2], words[3] = c0, c1, c2, c3
        if normal:  # Box-Muller on (u0, u1) and (u2, u3): cosine and sine branches, as `tl.randn4x`
            for pair in range(2):
                radius = np.sqrt(np.float32(-2.0) * np.log(max(_uniform(words[2 * pair]), _TINY)))
                theta = _uniform(words[2 * pair + 1]) * _TWO_PI
                draws[2 * pair] = radius * np.cos(theta)
                draws[2 * pair + 1] = radius * np.sin(theta)
        else:
            for j in range(4):
                draws[j] = _uniform(words[j])
        at = 4 * counter - start
        for j in range(4):
            if 0 <= at + j < n:
                out[at + j] = draws[j]


_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="nvcc_pt-philox")
    return _pool


def _forget_threads() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_threads)


def draw(seed: int, count: int, device: torch.device | None = None, start: int = 0,
         normal: bool = True) -> torch.Tensor:
    """Draws `start .. start+count-1` of stream `seed`, float32 on the CPU (normals, or uniforms in [0, 1)): draw
    `i` is component `i % 4` of counter `i // 4`, as `philox.randn`/`philox.rand` lay them out (`device`, if
    given, is the CPU: the signature is `philox_triton.draw`'s).

    Example:
        >>> draw(12345, 4096).std()  # about 1
    """
    out = np.empty(count, dtype=np.float32)
    if count:
        first = start // 4
        stop = (start + count + 3) // 4
        parts = min(max(1, torch.get_num_threads()), math.ceil((stop - first) / _MIN_SPLIT))
        if parts == 1:
            _draw_range(out, seed, first, stop, start, normal)
        else:
            bounds = np.linspace(first, stop, parts + 1).astype(np.int64)
            jobs = [_threads().submit(_draw_range, out, seed, int(a), int(b), start, normal)
                    for a, b in zip(bounds[:-1], bounds[1:])]
            for job in jobs:
                job.result()
    return torch.from_numpy(out)
