"""From float weights to programmed cell levels, and from float inputs to DAC digits.

Everything here works in integer-valued units: weights and inputs as the integers their
quantizers produce, conductances in level steps above `G_min` (a cell at level `l` holds
`G = G_min + l/(L-1) (G_max - G_min)`). Device variation given as a fraction of the
conductance range is therefore `sigma * (L-1)` level steps.
"""

from __future__ import annotations

import math

import torch
from nvcc_pt.targets.philox import DRIFT, FAULT, VARIATION, BlockKey, ChipKey

from nvcc_pt.errors import TargetError
from nvcc_pt.meta import NoiseInfo

TINY = torch.finfo(torch.float32).tiny

LEVELS_DTYPE = torch.float16
"""How the crossbar fidelities keep each programmed column's level (`CimState.levels`) for cells of up to
`EXACT_CELL_BITS` bits: half the bytes of float32 per slice, exact for every ideal level, and the deviations
rounded to 11 significant bits of the column's level (a relative 2^-11, far below any device's variation).
Every path reads these rounded values. Wider cells keep float32 levels (`levels_dtype`)."""

EXACT_CELL_BITS = 11
"""float16 holds every integer up to 2^11 exactly: the widest cell whose ideal levels it keeps exactly."""


def levels_dtype(cell_bits: int) -> torch.dtype:
    """The dtype the crossbar fidelities keep `cell_bits`-bit levels in: `LEVELS_DTYPE`, or float32 for cells
    wider than `EXACT_CELL_BITS` (a 12-bit cell's level 4095 is not a float16 number).

    Example:
        >>> levels_dtype(2), levels_dtype(12)
        (torch.float16, torch.float32)
    """
    return LEVELS_DTYPE if cell_bits <= EXACT_CELL_BITS else torch.float32

# Drift exponents vary from device to device (Joshi et al., Nat. Commun. 11:2473, 2020, model nu as a
# per-device Gaussian); their spread relative to the mean is an illustrative choice here, tune per device.
DRIFT_NU_REL_STD = 0.4


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization: integer-valued `wq` in [-(2^(b-1)-1), 2^(b-1)-1] and `scale` [N]."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1).clamp_min(TINY) / qmax
    wq = torch.round(w / scale[:, None]).clamp_(-qmax, qmax)
    return wq, scale


def quantize_input_int(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token quantization: integer-valued `xi` (same shape) and the per-row `scale` [..., 1].

    A NaN or infinite entry makes its row's scale non-finite, which is how callers detect bad inputs cheaply.
    """
    qmax = 2 ** (bits - 1) - 1
    # |x / scale| <= qmax already, so no clamp pass. (abs + amax beats the inf-norm kernel at these sizes.)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(TINY).div_(qmax)
    return torch.div(x, scale).round_(), scale


def magnitudes(wq: torch.Tensor, sign: str, weight_bits: int) -> torch.Tensor:
    """The unsigned values stored per sign column: `[P, N, K]` (differential: W+, W-; offset: Wq + 2^(b-1))."""
    if sign == "differential":
        return torch.stack([wq.clamp(min=0), (-wq).clamp(min=0)])
    return (wq + 2 ** (weight_bits - 1)).unsqueeze(0)


def slice_levels(mag: torch.Tensor, cell_bits: int, slices: int) -> torch.Tensor:
    """Split unsigned integer values into `slices` cell levels, least significant first: `[S, ...]`.

    Integer tensors are sliced with shifts and masks (and come back as `cell_dtype(cell_bits)`); float ones
    arithmetically.
    """
    base = 2**cell_bits
    shape = (slices,) + (1,) * mag.dim()
    if not mag.is_floating_point():
        shifts = cell_bits * torch.arange(slices, device=mag.device, dtype=mag.dtype)
        return ((mag.unsqueeze(0) >> shifts.view(shape)) & (base - 1)).to(cell_dtype(cell_bits))
    weights = base ** torch.arange(slices, device=mag.device, dtype=mag.dtype)
    return torch.floor_divide(mag.unsqueeze(0), weights.view(shape)) % base


def cell_dtype(cell_bits: int) -> torch.dtype:
    """The integer dtype that holds every level of a `cell_bits` cell: uint8 up to 8 bits, int32 above."""
    return torch.uint8 if cell_bits <= 8 else torch.int32


def slice_places(cell_bits: int, slices: int, device=None) -> torch.Tensor:
    """Place value of each slice in the digital shift-and-add: `2^(c s)`."""
    return (2.0**cell_bits) ** torch.arange(slices, device=device, dtype=torch.float32)


def weight_codes(source: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_weight` of a weight `[N, K]` as integer codes (what the cells store), and the scale `[N]`."""
    wq, scale = quantize_weight(source.float(), cfg["weight_bits"])
    return wq.to(torch.int16 if cfg["weight_bits"] <= 16 else torch.int32), scale


def levels_of(codes: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Ideal cell levels `[P, S, N, K]` (`cell_dtype`) of integer weight codes `[N, K]`."""
    mag = magnitudes(codes.to(torch.int32) if cfg["weight_bits"] > 15 else codes, cfg["sign"], cfg["weight_bits"])
    return slice_levels(mag, cfg["cell_bits"], cfg["slices"]).transpose(0, 1).contiguous()



def _draw(key: ChipKey | BlockKey | torch.Generator, stream: int, shape: torch.Size, device: torch.device,
          uniform: bool = False) -> torch.Tensor:
    """Draws of one stream for every cell of `shape`, on `device`: from the keyed generator (cell `i` of the
    flattened shape is counter `i` of a `ChipKey`, or of a `BlockKey`'s block), or from a torch generator (on its own
    device, in call order)."""
    if not isinstance(key, torch.Generator):
        return (key.uniform if uniform else key.normal)(stream, shape, device)
    sample = torch.rand if uniform else torch.randn
    return sample(shape, generator=key, dtype=torch.float32, device=key.device).to(device)


_SIGMAS: dict[tuple, torch.Tensor] = {}


def level_sigma_steps(level_sigmas: tuple[float, ...], top: int, device: torch.device) -> torch.Tensor:
    """Each level's sigma in level steps, on `device`: copied there once per device model, not per call (a copy from
    the host cannot be recorded into a CUDA graph, and waits for the device)."""
    key = (tuple(level_sigmas), top, str(device))
    if key not in _SIGMAS:
        _SIGMAS[key] = torch.tensor(level_sigmas, dtype=torch.float32, device=device) * top
    return _SIGMAS[key]


def program_levels(levels: torch.Tensor, noise: NoiseInfo, cell_bits: int, key: ChipKey | BlockKey | torch.Generator,
                   time_s: float | None = None, g_min_levels: float = 0.0, drift_t0_s: float = 20.0,
                   censor: float | None = None,
                   weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Levels `[P, S, N, K]` as the cells hold them `time_s` seconds after programming.

    Programming variation follows `noise.variation`. `per-cell`: Gaussian with a state-dependent sigma
    (`noise.level_sigmas`, a fraction of the conductance range) on every cell. `per-weight`: one Gaussian
    deviation per weight (`weight_variation`, which needs `weights`: the integer codes `[N, K]` and
    per-row scales `[N]` the levels were sliced from), spread over the weight's cells. Drift (PCM) scales
    each cell's conductance by `(t/t0)^-nu` with a per-cell `nu` (`g_min_levels` is `G_min` in level steps,
    since drift acts on the whole conductance). Stuck-at faults are applied last: a stuck cell neither
    varies nor drifts. `censor` right-censors each Gaussian deviation (per cell or per weight) at `censor`
    standard deviations (Yan et al., ICCAD 2023), the draws otherwise the same.

    With a `ChipKey` (`targets.philox`) every draw is a function of (seed, op, stream, cell index): the
    variation, drift and fault streams are separate, the draws are made on the levels' device, and the same
    key is the same chip on every device. A `BlockKey` (an operand written per call) draws the call's block of
    each stream the same way. A `torch.Generator` draws in a fixed order (variation, drift, faults) on the
    generator's device instead.

    Example:
        >>> info = get_target("rram1-128x128").device.noise_record(4)
        >>> program_levels(levels, info, 2, ChipKey(seed=0, op=0), weights=(codes, scale))
    """
    top = 2**cell_bits - 1
    on = key.device if isinstance(key, torch.Generator) else levels.device
    cells = levels.detach().to(on)
    if noise.variation == "per-weight":
        if weights is None:
            raise TargetError(f"device {noise.device!r} has per-weight variation, which needs the weight codes and "
                              "scales the levels came from (program_levels(..., weights=(codes, scale)))")
        codes, scale = (t.detach().to(on) for t in weights)
        deviation = weight_variation(codes, scale, noise, cell_bits, cells.shape[1], key, censor)
        programmed = cells.float() + spread_over_cells(deviation, codes, cells.shape, cell_bits)
    else:
        sigmas = level_sigma_steps(noise.level_sigmas, top, on)
        z = _draw(key, VARIATION, cells.shape, on)
        if censor is not None:
            z.clamp_(max=censor)
        programmed = torch.take(sigmas, cells.long()).mul_(z).add_(cells)
    if noise.drift_nu > 0 and time_s is not None and time_s > drift_t0_s:
        nu = _draw(key, DRIFT, cells.shape, on)
        nu = noise.drift_nu * (1 + DRIFT_NU_REL_STD * nu).clamp_(min=0)
        programmed = (programmed + g_min_levels) * (time_s / drift_t0_s) ** (-nu) - g_min_levels
    if noise.stuck_at_gmin or noise.stuck_at_gmax:
        u = _draw(key, FAULT, cells.shape, on, uniform=True)
        programmed = torch.where(u < noise.stuck_at_gmin, torch.zeros((), device=on), programmed)
        programmed = torch.where(u > 1 - noise.stuck_at_gmax, torch.full((), float(top), device=on), programmed)
    return programmed.to(levels.device)


def as_stored(programmed: torch.Tensor, sign: str, cell_bits: int) -> torch.Tensor:
    """Programmed levels `[P, S, N, K]` whose columns read what `CimState.levels` holds (`levels_dtype`): each
    column's level (a differential pair's `L+ - L-`, the analog difference) rounded as stored; a pair comes back
    as `(column, 0)`, so that the difference is exact. For references that compute from cells what the crossbar
    paths compute from stored columns.

    Example:
        >>> cells = torch.tensor([0.3333, 0.1]).view(2, 1, 1, 1)
        >>> torch.equal(as_stored(cells, "offset", 2), cells.half().float())
        True
    """
    dtype = levels_dtype(cell_bits)
    if sign != "differential":
        return programmed.to(dtype).float()
    column = (programmed[0] - programmed[1]).to(dtype).float()
    return torch.stack([column, torch.zeros_like(column)])


def per_weight_std(sigma: float, cell_bits: int, slices: int) -> float:
    """The per-weight model's deviation std as a fraction of max|W| before the band factor and normalisation:
    `sqrt(sum_i 4^(c i)) / sum_i 2^(c i) * sigma` over `slices` slices of `c`-bit cells.

    This is the NVCiM-PT authors' group's weight noise (Qin et al., NeFT, public code in their NF_Training
    repository, `src/generate_noise.py`): equal, independent noise of `sigma` on each slice, weighted by the
    slice's place value and normalised by the place values' sum. 8-bit weights on 2-bit cells (4 slices):
    `0.778 * sigma`.

    Example:
        >>> round(per_weight_std(0.1, 2, 4), 4)
        0.0778
    """
    places = [2.0 ** (cell_bits * i) for i in range(slices)]
    return math.sqrt(sum(p * p for p in places)) / sum(places) * sigma


def band_scale(ratio: torch.Tensor, band_factor: float) -> torch.Tensor:
    """Each weight's multiplier of `per_weight_std` from `ratio = |w| / max|W|`: `s / sqrt(0.4 s^2 + 0.6)` inside
    the open band (0.25, 0.75), `1 / sqrt(0.4 s^2 + 0.6)` outside it (the group's `s_rate` and normalisation;
    NF_Training `config.py` gives s = 1, 2, 4, 6 for RRAM1, FeFET2, RRAM4, FeFET6)."""
    norm = math.sqrt(0.4 * band_factor**2 + 0.6)
    inside = (ratio > 0.25) & (ratio < 0.75)
    return torch.where(inside, band_factor / norm, 1.0 / norm).to(torch.float32)


def weight_variation(codes: torch.Tensor, scale: torch.Tensor, noise: NoiseInfo, cell_bits: int, slices: int,
                     key: ChipKey | BlockKey | torch.Generator, censor: float | None = None) -> torch.Tensor:
    """One per-weight deviation per code `[N, K]`, in code units (multiply by `scale` for weight units).

    The weights are `w = codes * scale[:, None]` and `max|W|` is over the whole tensor, as the group
    draws it; one standard normal per weight (right-censored at `censor` when given) times
    `per_weight_std * max|W| * band_scale`. A row that is all zeros has no conductance scale and keeps its zeros.
    """
    w = codes.float() * scale.float()[:, None]
    top = w.abs().max()
    z = _draw(key, VARIATION, codes.shape, codes.device)
    if censor is not None:
        z.clamp_(max=censor)
    if float(top) == 0.0:
        return torch.zeros_like(z)
    std = per_weight_std(noise.sigma, cell_bits, slices) * top * band_scale(w.abs() / top, noise.band_factor)
    live = codes.abs().amax(dim=1, keepdim=True) > 0
    return torch.where(live, z * std / scale.float().clamp_min(TINY)[:, None], torch.zeros((), device=z.device))


def spread_over_cells(deviation: torch.Tensor, codes: torch.Tensor, shape: torch.Size, cell_bits: int) -> torch.Tensor:
    """Per-cell deviations `shape` `[P, S, N, K]` whose shift-and-add read-back is `deviation` `[N, K]` exactly.

    The deviation goes to the cells that hold the weight (the W+ column of a non-negative weight, the W-
    column of a negative one; the one column of offset encoding), split over the slices in proportion to
    their place values (the smallest per-cell deviations that sum to it: the MSB cell takes most).
    """
    places = slice_places(cell_bits, shape[1], deviation.device)
    per_slice = places / (places**2).sum()
    out = torch.zeros(shape, dtype=torch.float32, device=deviation.device)
    if shape[0] == 2:
        neg = codes < 0
        out[0] = torch.where(neg, 0.0, deviation) * per_slice[:, None, None]
        out[1] = torch.where(neg, -deviation, 0.0) * per_slice[:, None, None]
    else:
        out[0] = deviation * per_slice[:, None, None]
    return out


def read_back(programmed: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Integer-domain weights `[N, K]` from programmed levels `[P, S, N, K]` (shift-and-add, sign correction)."""
    place = slice_places(cfg["cell_bits"], programmed.shape[1], programmed.device)
    mag = torch.einsum("psnk,s->pnk", programmed, place)
    if cfg["sign"] == "differential":
        return mag[0] - mag[1]
    return mag[0] - 2 ** (cfg["weight_bits"] - 1)


def read_sigma_levels(noise: NoiseInfo, cfg: dict) -> float:
    """Read noise of one cell in level steps."""
    return noise.read_sigma * (2 ** cfg["cell_bits"] - 1)


def input_planes(xi: torch.Tensor, cfg: dict, bit_serial: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What the DAC applies, one plane per input cycle: `[T, ..., K]`, and each cycle's digital place value `[T]`.

    Without bit-serial inputs (`adc` fidelity, or `dac_bits >= input_bits`) a bipolar DAC applies the signed
    integer in one cycle. Otherwise the DAC is unipolar and applies `dac_bits` per cycle:
    `two-phase` (default) drives the positive and the negative entries in two phases of
    `ceil((input_bits-1)/dac_bits)` cycles each, subtracted digitally; `twos-complement` drives the
    magnitude bits of the two's-complement code and then the sign bit, weighted `-2^(b-1)` digitally.
    """
    bits, dac = cfg["input_bits"], cfg["dac_bits"]
    if not bit_serial or dac >= bits:
        return xi.unsqueeze(0), torch.ones(1, device=xi.device)
    cycles = math.ceil((bits - 1) / dac)
    base = 2**dac
    shifts = (2.0**dac) ** torch.arange(cycles, device=xi.device, dtype=torch.float32)
    view = (cycles,) + (1,) * xi.dim()
    if cfg.get("input_encoding", "two-phase") == "twos-complement":
        neg = xi < 0
        code = torch.where(neg, xi + 2 ** (bits - 1), xi)  # the low b-1 bits of the two's-complement code
        digits = torch.floor_divide(code.unsqueeze(0), shifts.view(view)) % base
        planes = torch.cat([digits, neg.to(xi.dtype).unsqueeze(0)])
        return planes, torch.cat([shifts, shifts.new_full((1,), -(2.0 ** (bits - 1)))])
    mag = xi.abs()
    digits = torch.floor_divide(mag.unsqueeze(0), shifts.view(view)) % base
    pos = (xi > 0).to(xi.dtype)
    return torch.cat([digits * pos, digits * (1 - pos)]), torch.cat([shifts, -shifts])


def digit_max(cfg: dict, bit_serial: bool) -> tuple[float, bool]:
    """Largest input digit the DAC applies, and whether digits can be negative (bipolar DAC)."""
    bits, dac = cfg["input_bits"], cfg["dac_bits"]
    if not bit_serial or dac >= bits:
        return float(2 ** (bits - 1) - 1), True
    return float(2**dac - 1), False
