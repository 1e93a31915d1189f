"""The ADC of one mapped op: its range mode, its grid per row tile and column, and calibration.

Every array column's partial sum `v` (in units of one conductance level times one DAC digit) goes
through an ADC of `adc_bits` that reads `code = clamp(round(v / step), lo, hi)` on a grid aligned on
zero (code `c` stands for `c * step`), as a signed ADC reads, so codes are plain numbers for the
digital shift-and-add. With ideal cells every partial sum is an integer, so a step of one level (or a
power-of-two fraction of one) over a window that holds the sums makes the ADC exact. Range modes
(`TargetSpec.adc_range`; compare CrossSim's `MAX` and `CALIBRATED` options, Xiao et al., Sandia, 2022):

  full-scale  the window spans the largest partial sum the tile can produce (`rows_r * (2^c - 1) *
              digit_max`, with `rows_r` the tile's real row count: the last row tile of K = 300 on
              128-row arrays has 44), and the step is that span over the codes, not rounded further.
  exact       the step is the smallest power of two whose codes hold that largest sum, so integer sums
              land on the grid and the ADC is exact whenever `adc_bits` allow. With offset weights and
              unipolar (bit-serial) digits it adds ISAAC's column encoding (Shafiee et al., ISCA 2016,
              Sec. IV-B): a column whose levels sum to more than half its maximum is stored flipped,
              `(2^c - 1) - l`, and read back digitally as `(2^c - 1) * sum(digits) - code`, so no column's
              sum exceeds half the full scale and one bit less suffices (128 rows, 2-bit cells, 1-bit DAC:
              sums up to 192, exact on an 8-bit ADC).
  calibrated  the window is the range `cm.calibrate` observed, per op or per (row tile, column), and
              before calibration it is full scale. The step `(hi - lo) / (2^b - 1)` is snapped to the
              level grid where that loses nothing: up to the next power-of-two fraction of one level when
              it is at most one level (integer sums are then exact), up to the next whole level `m` when
              its error on integer sums, `(m^2 - 1) / 12`, is no larger than the unsnapped step's
              `step^2 / 12`.

The flip decision is read from the programmed levels each call (a column's level sum against half its
maximum), so no extra state is stored; cells whose variation moves a column across the threshold are
read as the other encoding, which fits the codes just as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nvcc_pt.targets.devices import digit_max

PERCENTILE_SAMPLES = 2**16
"""Partial sums kept per row tile of an op for a percentile calibration (a uniform sample of them)."""
PERCENTILE_ROWS = 2048
"""With per-column ranges, at least this many rows of sums are kept per row tile (each column's sample)."""


@dataclass
class Grid:
    """One op's ADC, per row tile r and column c (tensors `[R, 1]` when every column shares it, else `[R, S*N]`)."""

    inv_step: torch.Tensor
    step: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    flip: torch.Tensor | None
    """`[R, S*N]` bool: columns stored flipped (ISAAC's encoding), or None."""
    top: float
    """`2^cell_bits - 1`, the flipped columns' digital correction per input digit."""

    @property
    def per_column(self) -> bool:
        return self.step.shape[-1] > 1

    def scalars(self, r: int) -> tuple[float, float, float, float]:
        """(inv_step, step, lo, hi) of row tile r when its columns share one grid."""
        return (float(self.inv_step[r, 0]), float(self.step[r, 0]), float(self.lo[r, 0]), float(self.hi[r, 0]))


def tile_rows(k: int, rows: int) -> list[int]:
    """Rows each row tile really uses: `rows`, and what is left for the last one."""
    tiles = math.ceil(k / rows)
    return [rows] * (tiles - 1) + [k - rows * (tiles - 1)]


def peak(cfg: dict, bit_serial: bool, rows: int) -> tuple[float, bool]:
    """The largest |partial sum| a tile of `rows` real rows can produce, and whether sums can be negative."""
    dmax, bipolar = digit_max(cfg, bit_serial)
    return rows * (2 ** cfg["cell_bits"] - 1) * dmax, bipolar or cfg["sign"] == "differential"


def flips(cfg: dict, bit_serial: bool, adc_range: torch.Tensor) -> bool:
    """Whether the op's ADC uses ISAAC's flipped columns: `exact` mode (not calibrated), offset weights and
    unipolar digits."""
    return (cfg.get("adc_range") == "exact" and adc_range.numel() < 2 and cfg["sign"] == "offset"
            and not digit_max(cfg, bit_serial)[1])


def snap(step: torch.Tensor) -> torch.Tensor:
    """The calibrated step on the level grid where that loses nothing (see the module docstring)."""
    fraction = torch.exp2(torch.ceil(torch.log2(step)))
    whole = torch.ceil(step)
    return torch.where(step <= 1, fraction, torch.where(whole * whole - 1 <= step * step, whole, step))


def grid(cfg: dict, adc_range: torch.Tensor, bit_serial: bool, k: int, levels: torch.Tensor | None = None) -> Grid:
    """The ADC of an op with K = `k` inputs; `adc_range` is its `CimState.adc_range` (empty, `[2]` or `[2, R, S*N]`).

    `levels` (`[R, rows, S*N]`, the programmed levels) decide the flipped columns where the mode flips.
    """
    bits = cfg["adc_bits"]
    codes = 2**bits - 1
    counts = tile_rows(k, cfg["rows"])
    flip = None
    if adc_range.numel() >= 2:  # calibrated: per op [lo, hi], or per (tile, column) [2, R, S*N]
        bounds = adc_range.double()
        lo_v, hi_v = (bounds[0].reshape(1, 1), bounds[1].reshape(1, 1)) if adc_range.numel() == 2 else bounds
        step = snap(((hi_v - lo_v) / codes).clamp_min(1e-12))
        lo = torch.round(lo_v / step)
        step, lo = step.expand(len(counts), -1), lo.expand(len(counts), -1)
    else:
        mode = cfg.get("adc_range", "full-scale")
        flip_cols = flips(cfg, bit_serial, adc_range)
        steps, lows = [], []
        for rows in counts:
            full, signed = peak(cfg, bit_serial, rows)
            half = 2 ** (bits - 1)
            if flip_cols:
                full = math.floor(full / 2)  # no column's sum exceeds half the full scale
            span = max(half - 1, 1) if signed else codes
            step = max(full, 1e-12) / span
            if mode == "exact":
                step = 2.0 ** math.ceil(math.log2(step))
            steps.append(step)
            lows.append(-half if signed else 0)
        step = torch.tensor(steps, dtype=torch.float64)[:, None]
        lo = torch.tensor(lows, dtype=torch.float64)[:, None]
        if flip_cols and levels is not None:
            top = 2 ** cfg["cell_bits"] - 1
            limit = torch.full((len(counts), 1), top * counts[0] / 2, device=levels.device)
            limit[-1] = top * counts[-1] / 2  # a fill, not a copy from the host (CUDA graphs record it)
            flip = levels.sum(1, dtype=torch.float32) > limit
    device = adc_range.device if adc_range.numel() > 2 else torch.device("cpu")
    as32 = lambda t: t.to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return Grid(as32(1.0 / step), as32(step), as32(lo), as32(lo + codes), flip, float(2 ** cfg["cell_bits"] - 1))


class RangeRecorder:
    """Partial sums an op's ADC sees during `cm.calibrate`: their range per op or per (tile, column), and, for a
    percentile range, a uniform sample of them (`PERCENTILE_SAMPLES`; drawn with a fixed seed)."""

    def __init__(self, per_column: bool, percentile: float | None):
        self.per_column, self.percentile = per_column, percentile
        self.low: dict[int, torch.Tensor] = {}
        self.high: dict[int, torch.Tensor] = {}
        self.samples: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.generator = torch.Generator().manual_seed(0)

    def update(self, r: int, v: torch.Tensor) -> None:
        """Tile r's partial sums `[rows, S*N]` in level units."""
        v = v.detach()
        low, high = (torch.aminmax(v, dim=0) if self.per_column else torch.aminmax(v))
        low, high = low.cpu(), high.cpu()
        self.low[r] = torch.minimum(self.low[r], low) if r in self.low else low
        self.high[r] = torch.maximum(self.high[r], high) if r in self.high else high
        if self.percentile is not None:  # a bottom-k sample: the rows with the smallest random keys, uniform
            flat = v if self.per_column else v.reshape(-1, 1)
            keep = max(PERCENTILE_ROWS, PERCENTILE_SAMPLES // flat.shape[1])
            keys = torch.rand(flat.shape[0], generator=self.generator)
            keys, pick = torch.topk(keys, min(keep, len(keys)), largest=False)
            old_keys, old_rows = self.samples.get(r, (keys[:0], flat[:0].float().cpu()))
            keys, rows = torch.cat([old_keys, keys]), torch.cat([old_rows, flat[pick.to(flat.device)].float().cpu()])
            keys, order = torch.topk(keys, min(keep, len(keys)), largest=False)
            self.samples[r] = (keys, rows[order])

    def range(self) -> torch.Tensor:
        """`[2]` (per op) or `[2, R, S*N]` (per column): the observed (or percentile-clipped) low and high ends."""
        tiles = sorted(self.low)
        if self.percentile is None:
            low, high = torch.stack([self.low[r] for r in tiles]), torch.stack([self.high[r] for r in tiles])
        else:
            q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
            if not self.per_column:  # one range over every tile's sums
                ends = torch.quantile(torch.cat([self.samples[r][1] for r in tiles]).reshape(-1), q)
                return ends.float()
            ends = [torch.quantile(self.samples[r][1], q, dim=0) for r in tiles]  # [2, S*N] each
            low, high = torch.stack([e[0] for e in ends]), torch.stack([e[1] for e in ends])
        if not self.per_column:
            return torch.tensor([float(low.min()), float(high.max())])
        return torch.stack([low, high]).float()
