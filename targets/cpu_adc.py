"""The CPU crossbar path's ADC inside oneDNN's GEMM: one call per row tile multiplies, rounds and clips.

The ADC reads `code = clamp(round(v), lo, hi)` of every partial sum `v` (in codes; `targets/adc.py`). Float32
has no fraction bits in [2^23, 2^24), so `(1.5 * 2^23 + v)` is `v` rounded half to even, as `torch.round`
rounds, for |v| < 2^22; oneDNN adds a GEMM's bias after accumulating and applies a hardtanh post-op after
that, so a GEMM with that bias and those bounds is the ADC (checked once at import, on non-integer sums and on
exact ties, by `magic_rounds_on_onednn`; where it fails the simulator keeps its separate passes). What is left
per row tile is one accumulating pass instead of five (round, clip, flip sign, flip correction, accumulate).
"""

from __future__ import annotations

import math

import torch
from nvcc_pt.targets.adc import Grid

_MAGIC = 1.5 * 2.0**23
"""Float32 has no fraction bits in [2^23, 2^24): `(_MAGIC + v) - _MAGIC` is `v` rounded half to even, as
`torch.round` rounds, for |v| < 2^22."""


def magic_rounds_on_onednn() -> bool:
    """Whether oneDNN adds a GEMM's bias after accumulating and clamps after that (a hardtanh post-op), so that one
    call with bias `_MAGIC` is the ADC's round and clip: checked on non-integer sums and on exact ties."""
    try:
        gen = torch.Generator().manual_seed(0)
        for m, k, n in ((1, 128, 512), (37, 44, 96), (300, 128, 33)):
            x = (torch.rand(m, k, generator=gen) < 0.4).float() * 0.5  # halves: sums land on ties too
            w = torch.randint(0, 4, (n, k), generator=gen).float()
            w[: n // 2] += 0.06 * torch.randn(n // 2, k, generator=gen)
            w = w.t().contiguous().t()  # laid out as the crossbar's levels are
            bias = torch.full((n,), _MAGIC)
            got = torch.ops.mkldnn._linear_pointwise(x, w, bias, "hardtanh", [_MAGIC - 9, _MAGIC + 9], "")
            plain = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            if not torch.equal(got - _MAGIC, plain.round_().clamp_(-9, 9)):
                return False
        return True
    except RuntimeError:
        return False


SKIP_EMPTY = 0.1
"""The share of a tile's input rows that must be all zero before `FusedAdc.codes` runs the tile's GEMM on the others
only (gathering them and scattering the codes back costs about as much as the GEMM of a tenth of the rows)."""


class FusedAdc:
    """One call's row tiles prepared so that one oneDNN GEMM per tile also rounds and clips (`_MAGIC` as the bias, a
    hardtanh post-op), leaving one accumulating pass per tile instead of five.

    A read `v` (in codes) becomes `y = clamp(round(bias + sign * v))` with per-column signs and biases chosen so
    that one pair of scalar bounds clips every column as the ADC does, and `acc += tau * y` with the tile's
    `tau` = +-1 alternating, so that the accumulator stays below 2^24 and every sum in it is exact. Flipped
    columns (ISAAC's encoding) read `-code` directly: their `sign` is `-tau`, their clip at code 0 falls on the
    bound their unflipped neighbours never reach (checked per tile from the levels; a tile that could reach it
    takes the plain path). The biases and the flipped columns' `top * sum(digits)` come back in one small GEMM.
    """

    def __init__(self, levels: torch.Tensor, g: Grid, tiles: list[int], bipolar: bool):
        self.tiles = tiles
        self.bipolar = bipolar  # digits may be negative (one signed cycle), so a zero sum need not mean no digit
        self.step = float(g.step[tiles[0], 0])
        self.inv = float(g.inv_step[tiles[0], 0])
        self.weights, self.bias, self.bounds, self.tau = [], [], [], []
        sn = levels.shape[-1]
        shift = torch.zeros(sn, dtype=torch.float64)
        flips = []
        for i, r in enumerate(tiles):
            tau = 1.0 if i % 2 == 0 else -1.0
            lo, hi = float(g.lo[r, 0]), float(g.hi[r, 0])
            flip = g.flip[r].cpu() if g.flip is not None else torch.zeros(sn, dtype=torch.bool)
            if bool(flip.any()):  # lo is 0 here; reads span [bias, bias + hi] or [bias - hi, bias] by their sign
                span = hi + 1
                base = torch.where(flip, _MAGIC + span * (tau > 0), _MAGIC + span * (tau < 0)).double()
                self.bounds.append((_MAGIC, _MAGIC + span))
            else:
                base = torch.full((sn,), _MAGIC, dtype=torch.float64)
                self.bounds.append((_MAGIC + lo, _MAGIC + hi) if tau > 0 else (_MAGIC - hi, _MAGIC - lo))
            sign = (tau * (1 - 2 * flip.float())).to(levels.device)
            self.weights.append((levels[r] * sign).t())
            self.bias.append(base.float().to(levels.device))
            self.tau.append(tau)
            shift += tau * base
            flips.append(flip.float() * (g.top * self.inv))
        self.shift = (-shift).float().to(levels.device)  # exact: integers below 2^24 (`prepare`'s guard)
        self.flips = torch.stack(flips).to(levels.device)
        self.any_flip = g.flip is not None and bool(self.flips.any())

    @staticmethod
    def prepare(levels: torch.Tensor, g: Grid, bipolar: bool, digit: float) -> FusedAdc | None:
        """The tiles that can take the fused path (those sharing the first tile's step), or None. The caller checks
        that the levels are float32 on the CPU with oneDNN, `magic_rounds_on_onednn()`, and that nothing records."""
        if g.per_column:
            return None
        inv = g.inv_step[:, 0]
        tiles = []
        for r in range(levels.shape[0]):
            lo, hi, step = float(g.lo[r, 0]), float(g.hi[r, 0]), float(g.step[r, 0])
            if math.frexp(float(inv[r]))[0] != 0.5 or max(-lo, hi) >= 2**20 or step != float(g.step[0, 0]):
                continue  # only a power-of-two step scales the inputs exactly
            if g.flip is not None and bool(g.flip[r].any()):
                # a read of no column may round above `hi` (`sign` moves it onto the other columns' clip bound)
                most = levels[r].clamp(min=0).sum(0).amax() * digit * float(inv[r]) * (1 + 1e-5)
                if lo != 0 or bipolar or float(most) >= hi + 0.5:
                    continue
            tiles.append(r)
        if not tiles or len(tiles) * (float(g.hi.abs().max()) + float(g.lo.abs().max()) + 1) >= 2**20:
            return None  # the accumulator, about 1.5 * 2^23 plus the codes, must stay below 2^24
        return FusedAdc(levels, g, tiles, bipolar)

    def codes(self, xt: torch.Tensor) -> torch.Tensor:
        """ADC codes summed over the prepared tiles, in codes of their step: `[M, S*N]` for inputs `[M, R, rows]`.

        A row whose digits on a tile are all zero reads 0 there, which the GEMM would round and clip to its bias:
        where at least `SKIP_EMPTY` of a tile's rows are such (the high bits of real activations often are), the
        GEMM runs on the other rows only, every row adds the code of a zero read and the others their difference
        from it. Every sum is the same exact integer either way.
        """
        m = xt.shape[0]
        sums = xt.sum(-1)  # [M, R]: each row's digit sum on each tile (unipolar digits: zero only where all are)
        live = (xt.ne(0).any(-1) if self.bipolar else sums.ne(0))[:, self.tiles]  # the rows with a digit
        counts = live.sum(0).tolist()
        acc = None
        for i, (r, w, bias, (low, high), tau) in enumerate(zip(self.tiles, self.weights, self.bias, self.bounds,
                                                                 self.tau)):
            if counts[i] > (1 - SKIP_EMPTY) * m:
                y = torch.ops.mkldnn._linear_pointwise(xt[:, r] * self.inv, w, bias, "hardtanh", [low, high], "")
                acc = y if acc is None else acc.add_(y, alpha=tau)  # the first tile's tau is +1
                continue
            zero = bias.clamp(low, high)  # a zero read's code (plus the bias)
            acc = zero.expand(m, -1).clone() if acc is None else acc.add_(zero, alpha=tau)
            if counts[i]:
                idx = live[:, i].nonzero().squeeze(1)
                y = torch.ops.mkldnn._linear_pointwise(xt[idx, r] * self.inv, w, bias, "hardtanh", [low, high], "")
                acc.index_add_(0, idx, y.sub_(zero), alpha=tau)
        # the biases and, for flipped columns, top * sum(digits): integers well inside float32's exact range
        fix = torch.addmm(self.shift, sums[:, self.tiles], self.flips) if self.any_flip else self.shift
        return acc.add_(fix)
