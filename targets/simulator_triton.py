"""The simulator's CUDA kernels, in Triton: the crossbar paths fused into one kernel, the
`quantized`/`noisy` product on tensor cores, and per-token input quantization in one pass.

Crossbar paths (DAC planes x levels, ADC and row-tile sum). The eager path writes every row tile's partial sums out and reads them back to round them;
on a GPU that traffic, not the arithmetic, sets the time. Here each program keeps a
`[BM, BN]` block of outputs in registers and, for every row tile and input cycle, computes
the tile's partial sums with tensor-core dots, applies the ADC to them in registers and adds
the codes, weighted by the cycle's place value, into the block. Only the per-slice sums
`[B, S*N]` reach memory; the shift-and-add over slices is left to the caller.

Exactness on tensor cores: the DAC digits are small integers, exact in float16. The programmed
levels are kept as float16 (`devices.LEVELS_DTYPE`) and multiply as they are, one dot per read; a column
stored flipped (ISAAC's encoding, `top - L`, which float16 does not hold exactly) is read from the unflipped
levels as `top * sum(digits) - partial`, rounded once. Where a call changes the levels (read noise), or they
are float32 (cells of more than 11 bits), a level `L` (float32) is split into
`hi = fp16(L)` and `lo = fp16(L - hi)`
(once per call for the levels, which every program reads many times; in registers for the
noisy product's weights, which each program reads once), so
`digit * hi + digit * lo` carries 22 significant bits of `L`; products are exact and the dots
accumulate in float32. Partial sums agree with a float32 GEMM to a few units in the last
place, the same as two float32 GEMM libraries agree with each other. The `quantized` and
`noisy` products (`split_linear`) use the same split: integer input codes times the
programmed effective weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nvcc_pt.targets.devices import TINY, digit_max
from triton.language.extra import libdevice

CONFIGS = [
    triton.Config({"BM": 128, "BN": 128}, num_warps=8, num_stages=3),
    triton.Config({"BM": 128, "BN": 128}, num_warps=8, num_stages=2),
    triton.Config({"BM": 128, "BN": 128}, num_warps=8, num_stages=4),
    triton.Config({"BM": 64, "BN": 128}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 256}, num_warps=8, num_stages=3),
    triton.Config({"BM": 256, "BN": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 128}, num_warps=4, num_stages=3),
    triton.Config({"BM": 128, "BN": 64}, num_warps=4, num_stages=3),
    triton.Config({"BM": 64, "BN": 64}, num_warps=4, num_stages=2),
]


@triton.jit
def _split(w):
    """float16 halves of float32 `w`: `hi + lo` holds 22 significant bits of it."""
    hi = w.to(tl.float16)
    return hi, (w - hi.to(tl.float32)).to(tl.float16)


ROUND_ADD_LIMIT = 2**22
"""Codes up to this size are rounded as `(v + 1.5 * 2^23) - 1.5 * 2^23`: two float32 additions that round half to
even, as `rint` does, which runs on the GPU's slower conversion path."""


@triton.autotune(configs=CONFIGS, key=["SN", "K", "T", "BK", "GRID_COLS", "FLIP", "CLIPS", "POW2", "SPLIT", "ROUND_ADD",
                                      "ONE_STEP"])
@triton.jit
def _crossbar_kernel(p_ptr, hi_ptr, lo_ptr, place_ptr, y_ptr, step_ptr, clo_ptr, chi_ptr, flip_ptr, dsum_ptr,
                     clip_ptr, B, K, SN, NC, T, R, ROWS, top, GRID_COLS: tl.constexpr, FLIP: tl.constexpr,
                     CLIPS: tl.constexpr, POW2: tl.constexpr, SPLIT: tl.constexpr, ROUND_ADD: tl.constexpr,
                     ONE_STEP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y[b, c] = sum over tiles r and cycles t of place[t] * step[r, c] * ADC_rc(planes[t, b, tile r] . levels[tile r, c]).

    The ADC divides by the step, correctly rounded, as the CPU path does, so ties round alike.

    The grid arrays are `[R, 1]` (GRID_COLS false) or `[R, S*N]`. With FLIP, the columns marked in `flip` `[R, S*N]`
    are stored flipped (`targets.adc`): the levels given are the unflipped ones, and a flipped column's read is
    `top * sum(digits) - partial` (the sum of the digits on the tile's rows, `dsum` `[T, B, R]`), which the
    digital side reads back as `top * sum(digits) - code`.

    With POW2 (every step a power of two) the division is a multiplication by the inverse, exactly; with ROUND_ADD
    (every code within 2^22) the clipped value is rounded by adding and subtracting 1.5 * 2^23; with ONE_STEP (one
    power-of-two step for every tile and column) the codes of every tile add up in code units, scaled once at the
    end, in one block of registers instead of two. Without SPLIT the
    levels are float16 values (`hi` alone, `lo` unread): one dot per read instead of two.
    With CLIPS, also sets clip[r, b, c % NC] to 1 where any cycle's read of tile r for (b, c) fell outside the ADC's
    codes: column c = s * NC + n is slice s of output n, so the slices of one output share a flag (set, never
    cleared, so programs that race on it agree).
    """
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok = rm < B
    n_ok = rn < SN
    y = tl.zeros((BM, BN), dtype=tl.float32)
    for r in range(R):
        k = r * ROWS + rk
        levels_at = k[:, None] * SN + rn[None, :]  # levels viewed as [R * ROWS, S*N]
        levels_ok = (rk < ROWS)[:, None] & n_ok[None, :]
        hi = tl.load(hi_ptr + levels_at, mask=levels_ok, other=0.0)
        if SPLIT:
            lo = tl.load(lo_ptr + levels_at, mask=levels_ok, other=0.0)
        if GRID_COLS:
            at = r * SN + rn
        else:
            at = r + rn * 0
        step = tl.load(step_ptr + at, mask=n_ok, other=1.0)[None, :]
        inv = 1.0 / step
        code_lo = tl.load(clo_ptr + at, mask=n_ok, other=0.0)[None, :]
        code_hi = tl.load(chi_ptr + at, mask=n_ok, other=0.0)[None, :]
        if FLIP:
            flipped = tl.load(flip_ptr + r * SN + rn, mask=n_ok, other=0.0)[None, :]
            sign = 1.0 - 2.0 * flipped
            sign_inv, flip_inv = sign * inv, flipped * (top * inv)  # for POW2: exact scalings of the read
            digit_place = tl.zeros((BM, 1), dtype=tl.float32)
        planes_ok = m_ok[:, None] & ((rk < ROWS) & (k < K))[None, :]
        v_min = tl.full((BM, BN), float("inf"), dtype=tl.float32)
        v_max = tl.full((BM, BN), -float("inf"), dtype=tl.float32)
        if not ONE_STEP:
            codes = tl.zeros((BM, BN), dtype=tl.float32)
        for t in range(T):
            p = tl.load(p_ptr + (t * B + rm)[:, None] * K + k[None, :], mask=planes_ok, other=0.0)
            if SPLIT:
                partial = tl.dot(p, hi, acc=tl.dot(p, lo))
            else:
                partial = tl.dot(p, hi)
            place = tl.load(place_ptr + t)
            if FLIP:  # a flipped column reads top * sum(digits) - partial, rounded once (the negation is exact)
                digits = tl.load(dsum_ptr + (t * B + rm) * R + r, mask=m_ok, other=0.0)[:, None]
                digit_place += place * digits
                if POW2:
                    v = partial * sign_inv + digits * flip_inv
                else:
                    v = libdevice.div_rn(partial * sign + flipped * (digits * top), step)
            elif POW2:
                v = partial * inv
            else:
                v = libdevice.div_rn(partial, step)
            if CLIPS:  # the extremes over cycles: two operations per read instead of a test per read
                v_min = tl.minimum(v_min, v)
                v_max = tl.maximum(v_max, v)
            clipped = tl.minimum(tl.maximum(v, code_lo), code_hi)  # the code bounds are integers: clip, then round
            if ROUND_ADD:
                code = (clipped + 12582912.0) - 12582912.0
            else:
                code = libdevice.rint(clipped)
            if ONE_STEP and FLIP:
                y += (place * sign) * code
            elif ONE_STEP:
                y += place * code
            else:
                codes += place * code
        if FLIP:  # flipped columns read back top * sum(digits) - code
            if ONE_STEP:
                y += flipped * (digit_place * (top * inv))
            else:
                y += step * sign * codes + flipped * (digit_place * top)
        elif not ONE_STEP:
            y += step * codes
        if CLIPS:  # the eager path's test on the unrounded codes; a store only where a read clipped
            outside = (v_min < code_lo - 0.5) | (v_max >= code_hi + 0.5)
            clip_at = (r * B + rm)[:, None] * NC + (rn % NC)[None, :]
            tl.store(clip_ptr + clip_at, tl.full((BM, BN), 1, tl.int8), mask=m_ok[:, None] & n_ok[None, :] & outside)
    if ONE_STEP:
        y = y * tl.load(step_ptr)
    tl.store(y_ptr + rm[:, None] * SN + rn[None, :], y, mask=m_ok[:, None] & n_ok[None, :])


def split_levels(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 (hi, lo) with `hi + lo` equal to `levels` to 22 significant bits (`_split`, once for all programs)."""
    hi = levels.half()
    return hi, (levels - hi.float()).half()


_GRIDS: dict[tuple, tuple[torch.Tensor, ...]] = {}


def grid_arrays(g, tiles: int, sn: int, device: torch.device) -> tuple:
    """The kernel's view of an ADC grid (`targets.adc.Grid`): (inv_step, step, lo, hi, flip, top, pow2, round_add,
    one_step) on `device`; `pow2` says every step is a power of two, `round_add` every code lies within
    `ROUND_ADD_LIMIT`, `one_step` one power-of-two step serves every tile and column (all known on the host; a grid
    on the device is taken to be none of them).

    A grid held on the host is copied once per distinct grid and device (a copy from the host cannot be
    recorded into a CUDA graph, and the same few grids serve every call).
    """
    arrays = (g.inv_step, g.step, g.lo, g.hi)
    on_host = arrays[1].device.type == "cpu"
    pow2 = on_host and bool((torch.frexp(arrays[1].float())[0] == 0.5).all())
    round_add = on_host and max(float(arrays[2].abs().max()), float(arrays[3].abs().max())) <= ROUND_ADD_LIMIT
    one_step = pow2 and not g.per_column and bool((arrays[1] == arrays[1].reshape(-1)[0]).all())
    if g.per_column or arrays[0].device.type != "cpu":
        arrays = tuple(t.to(device=device, dtype=torch.float32).contiguous() for t in arrays)
    else:
        key = (str(device), *(tuple(t.reshape(-1).tolist()) for t in arrays))
        if key not in _GRIDS:
            _GRIDS[key] = tuple(t.to(device=device, dtype=torch.float32).contiguous() for t in arrays)
        arrays = _GRIDS[key]
    flip = g.flip.to(torch.float32).contiguous() if g.flip is not None else None
    return (*arrays, flip, g.top, pow2, round_add, one_step)


def crossbar_codes(planes: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor | None, place_t: torch.Tensor,
                   inv_step: torch.Tensor, step: torch.Tensor, code_lo: torch.Tensor, code_hi: torch.Tensor,
                   flip: torch.Tensor | None, top: float, pow2: bool = False, round_add: bool = False,
                   one_step: bool = False, clips: torch.Tensor | None = None,
                   digits: torch.Tensor | None = None) -> torch.Tensor:
    """ADC outputs (in level units) summed over row tiles and shifted-and-added over cycles: `[B, S*N]` for planes
    `[T, B, K]`.

    `hi`, `lo`: the split levels `[R, rows, S*N]` (`split_levels`), or float16 levels and None, unflipped (columns
    marked in `flip` read as flipped: `top - level`); `place_t`: each cycle's place value `[T]`; the grid as
    `grid_arrays` gives it. `clips`, a zeroed int8 `[R, B, N]`, gets 1 where any cycle's read of a row tile, in any
    slice, clipped (the gradient's mask). `digits`: the planes' digit sums per row tile `[T, B, R]` where `dac_planes`
    gave them (else they are summed here where flipped columns need them).
    """
    cycles, batch, k = planes.shape
    tiles, rows, sn = hi.shape
    if max(cycles * batch * k, tiles * rows * sn, batch * sn, 0 if clips is None else clips.numel()) >= 2**31:
        raise ValueError("crossbar_codes: a chunk this large overflows 32-bit indexing; pass a smaller batch chunk")
    p = planes.to(torch.float16).contiguous()
    y = torch.empty(batch, sn, device=planes.device, dtype=torch.float32)
    bk = max(16, triton.next_power_of_2(rows))
    if flip is None:
        digits = y
    elif digits is None:  # each cycle's digit sum over each row tile's rows: [T, B, R]
        padded = planes if tiles * rows == k else torch.nn.functional.pad(planes, (0, tiles * rows - k))
        digits = padded.view(cycles, batch, tiles, rows).sum(-1, dtype=torch.float32).contiguous()
    grid = lambda meta: (triton.cdiv(batch, meta["BM"]), triton.cdiv(sn, meta["BN"]))  # noqa: E731
    _crossbar_kernel[grid](p, hi, hi if lo is None else lo, place_t.float().contiguous(), y, step, code_lo, code_hi,
                           flip if flip is not None else step, digits, y if clips is None else clips, batch, k, sn,
                           sn if clips is None else clips.shape[-1], cycles, tiles, rows, float(top),
                           GRID_COLS=inv_step.shape[-1] > 1, FLIP=flip is not None, CLIPS=clips is not None,
                           POW2=pow2, SPLIT=lo is not None, ROUND_ADD=round_add,
                           ONE_STEP=one_step, BK=bk)
    return y


ENCODINGS = {"one-cycle": 0, "two-phase": 1, "twos-complement": 2}
"""How `dac_planes` turns an integer input into DAC digits, as `devices.input_planes` does."""


@triton.jit
def _dac_planes_kernel(x_ptr, p_ptr, dsum_ptr, B, K, R, ROWS, T, CYCLES, DAC, HALF, ENCODING: tl.constexpr,
                       DIGITS: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr):
    """Rows `BB` of input codes `x` `[B, K]` on one row tile: every cycle's digits (float16) into `p` `[T, B, K]` and,
    with DIGITS, their sum over the tile's rows into `dsum` `[T, B, R]`.

    `ENCODING` 0 applies the signed code in one cycle; 1 (two-phase) the digits of the positive entries in cycles
    `0 .. CYCLES-1` and of the negative ones' magnitudes in the next `CYCLES`; 2 (two's complement) the digits of
    the low bits of the code (`x + HALF` for negative `x`), then the sign bit.
    """
    rb = tl.program_id(0) * BB + tl.arange(0, BB)
    r = tl.program_id(1)
    k = r * ROWS + tl.arange(0, BK)
    ok = (rb < B)[:, None] & ((tl.arange(0, BK) < ROWS) & (k < K))[None, :]
    at = rb[:, None].to(tl.int64) * K + k[None, :]
    x = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.int32)
    mask = (1 << DAC) - 1
    if ENCODING == 0:
        tl.store(p_ptr + at, x.to(tl.float16), mask=ok)
        if DIGITS:
            tl.store(dsum_ptr + rb * R + r, tl.sum(x.to(tl.float32), axis=1), mask=rb < B)
    else:
        for t in range(T):  # 2 * CYCLES two-phase, CYCLES + 1 two's complement
            if ENCODING == 1:
                second = t >= CYCLES
                source = tl.maximum(tl.where(second, -x, x), 0)
                digit = (source >> (DAC * (t - CYCLES * second.to(tl.int32)))) & mask
            else:
                low = tl.where(x < 0, x + HALF, x)
                digit = tl.where(t == CYCLES, (x < 0).to(tl.int32), (low >> (DAC * t)) & mask)
            plane = tl.cast(t, tl.int64) * B * K
            tl.store(p_ptr + plane + at, digit.to(tl.float16), mask=ok)
            if DIGITS:
                tl.store(dsum_ptr + (t * B + rb) * R + r, tl.sum(digit.to(tl.float32), axis=1), mask=rb < B)


def dac_planes(xi: torch.Tensor, cfg: dict, bit_serial: bool, rows: int,
               digits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`devices.input_planes` of integer codes `xi` `[B, K]` as float16 `[T, B, K]`, in one pass; with `digits`, also
    each plane's digit sum over each row tile `[T, B, R]` (float32), which flipped columns read. The codes must be
    exact in float16 (at most 2048 in magnitude), as `fits` checks."""
    b, k = xi.shape
    bits, dac = cfg["input_bits"], cfg["dac_bits"]
    if not bit_serial or dac >= bits:
        encoding, cycles, planes = ENCODINGS["one-cycle"], 1, 1
    else:
        encoding = ENCODINGS["twos-complement" if cfg.get("input_encoding") == "twos-complement" else "two-phase"]
        cycles = -(-(bits - 1) // dac)
        planes = 2 * cycles if encoding == 1 else cycles + 1
    tiles = -(-k // rows)
    p = torch.empty(planes, b, k, device=xi.device, dtype=torch.float16)
    sums = torch.empty(planes, b, tiles, device=xi.device, dtype=torch.float32) if digits else None
    bk = triton.next_power_of_2(rows)
    bb = max(1, min(16, 4096 // bk))
    _dac_planes_kernel[(triton.cdiv(b, bb), tiles)](xi.contiguous(), p, p if sums is None else sums, b, k, tiles, rows,
                                                    planes, cycles, dac, 2 ** (bits - 1), ENCODING=encoding,
                                                    DIGITS=digits, BB=bb, BK=bk, num_warps=4)
    return p, sums


def fits(cfg: dict, bit_serial: bool) -> bool:
    """Whether the crossbar kernel takes this op's DAC digits exactly (float16 holds integers up to 2048)."""
    return digit_max(cfg, bit_serial)[0] <= MAX_SPLIT_CODE


@triton.jit
def _quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, K, qmax, tiny, DEQUANTIZE: tl.constexpr, BLOCK: tl.constexpr):
    """One row per program: scale = max(|x|, tiny) / qmax, out = rint(x / scale) (times scale if DEQUANTIZE)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < K
    x = tl.load(x_ptr + row * K + cols, mask=ok, other=0.0)
    bad = tl.sum((x != x).to(tl.int32), axis=0)  # max() drops NaNs; a NaN must still make the scale NaN
    scale = libdevice.div_rn(tl.maximum(tl.max(tl.abs(x), axis=0), tiny), qmax)
    scale = tl.where(bad > 0, float("nan"), scale)
    q = libdevice.rint(libdevice.div_rn(x, scale))
    if DEQUANTIZE:
        q = q * scale
    tl.store(out_ptr + row * K + cols, q.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(scale_ptr + row, scale)


MAX_QUANTIZE_ROW = 16384


def quantize_rows(x: torch.Tensor, qmax: float, tiny: float, dequantize: bool,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization of a contiguous float32 `[M, K]` in one pass: (codes or values, scale `[M, 1]`).

    The same arithmetic as `devices.quantize_input_int` (correctly rounded division, round half to even);
    codes may be written as float16, which holds them exactly up to 2048.
    """
    rows, k = x.shape
    out = torch.empty_like(x, dtype=dtype)
    scale = torch.empty(rows, 1, device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(k)
    _quantize_rows_kernel[(rows,)](x, out, scale, k, float(qmax), float(tiny), DEQUANTIZE=dequantize, BLOCK=block,
                                   num_warps=min(16, max(1, block // 512)))
    return out, scale


LINEAR_CONFIGS = [
    triton.Config({"BM": 128, "BN": 128, "BK": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 64, "BN": 128, "BK": 64}, num_warps=4, num_stages=4),
    triton.Config({"BM": 128, "BN": 64, "BK": 64}, num_warps=4, num_stages=4),
    triton.Config({"BM": 64, "BN": 64, "BK": 64}, num_warps=4, num_stages=3),
    triton.Config({"BM": 32, "BN": 64, "BK": 128}, num_warps=4, num_stages=3),
    triton.Config({"BM": 32, "BN": 32, "BK": 128}, num_warps=2, num_stages=3),
]


@triton.autotune(configs=LINEAR_CONFIGS, key=["M", "N", "K"])
@triton.jit
def _split_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y = (codes . w^T) * scale[row] + bias: float16 codes, the weight split into float16 halves, float32 sums."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + rk
        k_ok = k < K
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_at = rn[None, :].to(tl.int64) * K + k[:, None]  # the weight [N, K], read as [BK, BN]
        w_ok = k_ok[:, None] & n_ok[None, :]
        hi, lo = _split(tl.load(w_ptr + w_at, mask=w_ok, other=0.0))
        acc = tl.dot(x, hi, tl.dot(x, lo, acc))
    y = acc * tl.load(scale_ptr + rm, mask=m_ok, other=0.0)[:, None]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], y, mask=m_ok[:, None] & n_ok[None, :])


MAX_SPLIT_CODE = 2048
"""Largest input code the float16 path takes exactly (inputs of up to 12 bits)."""


def split_linear(codes: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """`(codes * scale) @ weight^T + bias` on tensor cores for integer `codes` `[M, K]` (|code| <= 2048).

    The codes are exact in float16 and each float32 weight is split into float16 halves in registers,
    so the product carries 22 significant bits of every weight and accumulates in float32.
    """
    m, k = codes.shape
    n = weight.shape[0]
    y = torch.empty(m, n, device=codes.device, dtype=torch.float32)
    b = bias.float().contiguous() if bias is not None else y
    grid = lambda meta: (triton.cdiv(m, meta["BM"]), triton.cdiv(n, meta["BN"]))  # noqa: E731
    _split_linear_kernel[grid](codes.to(torch.float16).contiguous(), weight.float().contiguous(),
                               scale.reshape(-1).float().contiguous(), b, y, m, n, k, HAS_BIAS=bias is not None)
    return y


@triton.jit
def _draws(seed, base, k0, NORMAL: tl.constexpr, SHARED: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr):
    """The keyed generator's draws (`targets.philox`) for cells `base[c] + k0 + i`, `[BK, BC]`: cell `m` is component
    `m % 4` of Philox counter `m // 4`, a normal (`randn4x`) or a uniform (`rand4x`). SHARED (every `base` and `k0` a
    multiple of four): one Philox call serves four rows, interleaved; else one call per cell."""
    if SHARED:
        counter = (base // 4)[None, :] + (k0 // 4 + tl.arange(0, BK // 4))[:, None]
        if NORMAL:
            d0, d1, d2, d3 = tl.randn4x(seed, counter)
        else:
            d0, d1, d2, d3 = tl.rand4x(seed, counter)
        joined = tl.join(tl.join(d0, d1), tl.join(d2, d3))  # [BK/4, BC, b, a] holds component 2a + b
        return tl.reshape(tl.permute(joined, (0, 3, 2, 1)), (BK, BC))
    cell = base[None, :] + (k0 + tl.arange(0, BK))[:, None]
    if NORMAL:
        d0, d1, d2, d3 = tl.randn4x(seed, cell // 4)
    else:
        d0, d1, d2, d3 = tl.rand4x(seed, cell // 4)
    j = cell % 4
    return tl.where(j == 0, d0, tl.where(j == 1, d1, tl.where(j == 2, d2, d3)))


@triton.jit
def _programmed_cell(mag, shift, base, k0, sig_ptr, seed_var, seed_drift, seed_fault, mask_top, top, ratio, nu_mean,
                     nu_rel, g_min, stuck_low, stuck_high, spread, PER_WEIGHT: tl.constexpr, DRIFT: tl.constexpr,
                     FAULTS: tl.constexpr, SHARED: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr):
    """Cells `base[c] + k0 + i`'s programmed levels, as `devices.program_levels` computes them, each operation rounded
    on its own as the torch ops round: per-cell variation drawn here, or (PER_WEIGHT) the cell's share `spread` of its
    weight's deviation added; then drift and faults, drawn per cell."""
    level = (mag >> shift) & mask_top
    if PER_WEIGHT:
        value = libdevice.add_rn(level.to(tl.float32), spread)
    else:
        sigma = tl.load(sig_ptr + level)
        z = _draws(seed_var, base, k0, True, SHARED, BK, BC)
        value = libdevice.add_rn(libdevice.mul_rn(sigma, z), level.to(tl.float32))
    if DRIFT:
        nu = libdevice.add_rn(1.0, libdevice.mul_rn(nu_rel, _draws(seed_drift, base, k0, True, SHARED, BK, BC)))
        nu = libdevice.mul_rn(nu_mean, tl.maximum(nu, 0.0))
        value = libdevice.sub_rn(libdevice.mul_rn(libdevice.add_rn(value, g_min), libdevice.pow(ratio, -nu)), g_min)
    if FAULTS:
        u = _draws(seed_fault, base, k0, False, SHARED, BK, BC)
        value = tl.where(u < stuck_low, 0.0, value)
        value = tl.where(u > stuck_high, top, value)
    return value


@triton.jit(do_not_specialize=["seed_var", "seed_drift", "seed_fault"])  # each chip's seeds, one compiled kernel
def _keyed_columns_kernel(w_ptr, scale_ptr, sig_ptr, out_ptr, seed_var, seed_drift, seed_fault, seed_ptr, N, K, SN,
                          ROWS_PAD, stride_n, stride_k, qmax, offset, cell_bits, mask_top, top, ratio, nu_mean,
                          nu_rel, g_min, stuck_low, stuck_high, w_top_ptr, peak_ptr, share_ptr, weight_std, band_in,
                          band_out, tiny, SEEDS_AT: tl.constexpr, DIFFERENTIAL: tl.constexpr,
                          PER_WEIGHT: tl.constexpr, DRIFT: tl.constexpr, FAULTS: tl.constexpr, SHARED: tl.constexpr,
                          BK: tl.constexpr, BC: tl.constexpr):
    """out[k, s * N + n]: the float16 column level of slice s of output n on input row k (0 on padding rows).

    SEEDS_AT: the three stream seeds are read from `seed_ptr` (int64 on the device) instead of passed, so a CUDA
    graph's replay regenerates the chip whose seeds are there then.

    PER_WEIGHT: one deviation per weight (`devices.weight_variation`: a normal from the variation stream at the
    weight's flat index, times `weight_std * max|W| * band / scale`, zero on rows whose codes are all zero), spread
    over the cells that hold the weight by each slice's share (`devices.spread_over_cells`). `w_top_ptr` holds
    max|W| of the quantized weight, `peak_ptr` each row's largest |code|, `share_ptr` each slice's share.
    """
    if SEEDS_AT:
        seed_var, seed_drift, seed_fault = tl.load(seed_ptr), tl.load(seed_ptr + 1), tl.load(seed_ptr + 2)
    k0 = tl.program_id(0) * BK
    rk = k0 + tl.arange(0, BK)
    rc = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = rc < SN
    s = rc // N
    n = rc - s * N
    ok = (rk < K)[:, None] & c_ok[None, :]
    w = tl.load(w_ptr + n[None, :].to(tl.int64) * stride_n + rk[:, None].to(tl.int64) * stride_k, mask=ok, other=0.0)
    scale = tl.load(scale_ptr + n, mask=c_ok, other=1.0)[None, :]
    code = tl.minimum(tl.maximum(libdevice.rint(libdevice.div_rn(w.to(tl.float32), scale)), -qmax), qmax)
    plus_spread, minus_spread = 0.0, 0.0
    if PER_WEIGHT:
        w_top = tl.load(w_top_ptr)
        ratio_w = libdevice.div_rn(tl.abs(libdevice.mul_rn(code, scale)), w_top)
        band = tl.where((ratio_w > 0.25) & (ratio_w < 0.75), band_in, band_out)
        std = libdevice.mul_rn(weight_std * w_top, band)  # (std per max|W| * max|W|) * band, as torch rounds it
        z = _draws(seed_var, n.to(tl.int64) * K, k0, True, SHARED, BK, BC)
        deviation = libdevice.div_rn(libdevice.mul_rn(z, std), tl.maximum(scale, tiny))
        live = tl.load(peak_ptr + n, mask=c_ok, other=0.0)[None, :] > 0
        deviation = tl.where(live, deviation, 0.0)
        share = tl.load(share_ptr + s, mask=c_ok, other=0.0)[None, :]
        if DIFFERENTIAL:
            plus_spread = libdevice.mul_rn(tl.where(code < 0, 0.0, deviation), share)
            minus_spread = libdevice.mul_rn(tl.where(code < 0, -deviation, 0.0), share)
        else:
            plus_spread = libdevice.mul_rn(deviation, share)
    code = code.to(tl.int32)
    shift = (s * cell_bits)[None, :]
    base = (s.to(tl.int64) * N + n) * K  # flat index of (sign 0, s, n, k = 0) in [P, S, N, K]
    if DIFFERENTIAL:
        plus = _programmed_cell(tl.maximum(code, 0), shift, base, k0, sig_ptr, seed_var, seed_drift, seed_fault,
                                mask_top, top, ratio, nu_mean, nu_rel, g_min, stuck_low, stuck_high, plus_spread,
                                PER_WEIGHT, DRIFT, FAULTS, SHARED, BK, BC)
        minus = _programmed_cell(tl.maximum(-code, 0), shift, base + (SN // N) * N * tl.cast(K, tl.int64), k0, sig_ptr,
                                 seed_var, seed_drift, seed_fault, mask_top, top, ratio, nu_mean, nu_rel, g_min,
                                 stuck_low, stuck_high, minus_spread, PER_WEIGHT, DRIFT, FAULTS, SHARED, BK, BC)
        column = libdevice.sub_rn(plus, minus)
    else:
        column = _programmed_cell(code + offset, shift, base, k0, sig_ptr, seed_var, seed_drift, seed_fault, mask_top,
                                  top, ratio, nu_mean, nu_rel, g_min, stuck_low, stuck_high, plus_spread, PER_WEIGHT,
                                  DRIFT, FAULTS, SHARED, BK, BC)
    column = tl.where(ok, column, 0.0)
    tl.store(out_ptr + rk[:, None].to(tl.int64) * SN + rc[None, :], column.to(tl.float16),
             mask=(rk < ROWS_PAD)[:, None] & c_ok[None, :])


def keyed_columns(weight: torch.Tensor, scale: torch.Tensor, sigmas: torch.Tensor,
                  seeds: tuple[int, int, int] | torch.Tensor,
                  cfg: dict, drift: tuple[float, float, float, float] | None,
                  stuck: tuple[float, float] | None, per_weight: tuple | None = None) -> torch.Tensor:
    """A chip's float16 column levels `[R, rows, S*N]` regenerated from the weight `[N, K]` and the chip's key, what
    `program_state` stores, in one pass.

    `sigmas`: the per-level sigma in level steps `[2^cell_bits]` (float32); `seeds`: the variation, drift and fault
    streams' Philox seeds (`ChipKey.stream_seed`), as numbers or as an int64 tensor `[3]` on the weight's device,
    which the kernel reads there (a CUDA graph's replay then regenerates the chip whose seeds it holds then);
    `drift`: (time over t0, mean nu, nu's relative spread, G_min in levels) or None; `stuck`: the stuck-at-G_min
    and stuck-at-G_max probabilities, or None. `per_weight`, for per-weight variation instead of per-cell: (max|W|
    of the quantized weight as a 0-d tensor, each row's largest |code| `[N]`, each slice's share `[S]`, the
    deviation's std per max|W|, the band's factor inside and outside it, all as float32 tensors or float32-rounded
    numbers).
    """
    n, k = weight.shape
    slices, rows, cell_bits = cfg["slices"], cfg["rows"], cfg["cell_bits"]
    sn, rows_pad = slices * n, -(-k // rows) * rows
    out = torch.empty(rows_pad, sn, device=weight.device, dtype=torch.float16)
    ratio, nu_mean, nu_rel, g_min = drift if drift is not None else (1.0, 0.0, 0.0, 0.0)
    low, high = stuck if stuck is not None else (0.0, 0.0)
    w_top, peak, share, weight_std, band_in, band_out = per_weight if per_weight is not None else (
        sigmas, sigmas, sigmas, 0.0, 0.0, 0.0)
    bk, bc = 32, 64
    grid = (triton.cdiv(rows_pad, bk), triton.cdiv(sn, bc))
    at = isinstance(seeds, torch.Tensor)
    _keyed_columns_kernel[grid](weight, scale.float().contiguous(), sigmas, out, *((0, 0, 0) if at else seeds),
                                seeds if at else out, n, k, sn, rows_pad,
                                weight.stride(0), weight.stride(1), float(2 ** (cfg["weight_bits"] - 1) - 1),
                                2 ** (cfg["weight_bits"] - 1), cell_bits, 2**cell_bits - 1, float(2**cell_bits - 1),
                                ratio, nu_mean, nu_rel, g_min, low, 1.0 - high, w_top, peak, share, weight_std,
                                band_in, band_out, TINY, SEEDS_AT=at, DIFFERENTIAL=cfg["sign"] == "differential",
                                PER_WEIGHT=per_weight is not None, DRIFT=drift is not None,
                                FAULTS=stuck is not None, SHARED=k % 4 == 0, BK=bk, BC=bc, num_warps=4)
    return out.view(rows_pad // rows, rows, sn)
