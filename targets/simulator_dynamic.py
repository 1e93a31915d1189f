"""The simulator's `nvcc_pt::cim_matmul`: `a @ b` with `b` written into crossbar cells on every call.

A mapped dynamic product (attention QK^T or AV, `map_dynamic`) has no weight to program once:
its right operand `b` (k^T or v, `[..., K, N]`, batched over batch and heads) is the weight of
this input. Per call, every instance's `b^T` `[N, K]` goes through the same steps a static weight
goes through in `program_state`: per-column symmetric quantization to `weight_bits`, sign split,
bit slicing into cell levels, and programming with write noise from the target's device model
(`program_levels`), drawn from the keyed generator (`targets.philox.BlockKey`): call `c`'s noise is block `c` of
the op's streams, so a seed replays the same writes on every device, drawn where the operand lives, and a CUDA
graph's replay draws the call it is. Then:

  exact       a @ b;
  quantized   quantized `a` (per row, `input_bits`) times quantized `b`;
  noisy       as quantized, with `b` read back from the written cells (and read noise, as cim_linear);
  adc         per instance, the crossbar product of `simulator._crossbar` on the written levels;
  bit-serial  as adc, bit-serial inputs.

The ADC runs on its full-scale grid: a range calibrated on other inputs does not describe an operand
that changes with every input.
"""

from __future__ import annotations

import torch
from nvcc_pt.targets.devices import levels_of, program_levels, quantize_input_int, read_back, weight_codes
from nvcc_pt.targets.philox import BlockKey
from nvcc_pt.targets.simulator import (
    CROSSBAR,
    IMPLEMENTED,
    _check_finite,
    _crossbar,
    _read_noise_weight,
    crossbar_levels,
)

from nvcc_pt.errors import FidelityError
from nvcc_pt.meta import NoiseInfo
from nvcc_pt.ops import parse_config


def write_noise_info(cfg: dict) -> NoiseInfo:
    return NoiseInfo(device=cfg["device"], sigma=0.0, level_sigmas=tuple(cfg["level_sigmas"]),
                     stuck_at_gmin=cfg.get("stuck_at_gmin", 0.0), stuck_at_gmax=cfg.get("stuck_at_gmax", 0.0))


def written_levels(w: torch.Tensor, cfg: dict, key: BlockKey | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell levels `[P, S, N, K]` holding the weight `w` `[N, K]` after one write (ideal if `key` is None), and
    the per-column scale `[N]`: what `program_state` does to a static weight, done per input."""
    codes, scale = weight_codes(w, cfg)
    levels = levels_of(codes, cfg)
    if key is None:
        return levels.float(), scale
    return program_levels(levels, write_noise_info(cfg), cfg["cell_bits"], key), scale


def cim_matmul(a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, config: str) -> torch.Tensor:
    cfg = parse_config(config)
    fidelity = cfg["fidelity"]
    if fidelity not in IMPLEMENTED:
        raise FidelityError(f"op {cfg['op']!r}: fidelity {fidelity!r} is not implemented; choose one of {IMPLEMENTED}")
    _check_finite(a, cfg)
    _check_finite(b, cfg)
    if fidelity == "exact":
        return torch.matmul(a, b)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = a.expand(*batch, *a.shape[-2:]), b.expand(*batch, *b.shape[-2:])
    k, n = b.shape[-2:]
    w = b.transpose(-2, -1).reshape(-1, k).float()  # every instance's [N, K] weight, stacked
    key = None
    if fidelity != "quantized":
        state[:, 1].add_(1)  # this call's block of the write noise, counted on the state's device
        key = BlockKey(state)
    levels, scale = written_levels(w, cfg, key)
    if fidelity in CROSSBAR:
        flat_a = a.reshape(-1, *a.shape[-2:]).float()
        outs = []
        for i in range(flat_a.shape[0]):
            cells = crossbar_levels(levels[:, :, i * n:(i + 1) * n], cfg)
            outs.append(_crossbar(flat_a[i], cells, scale[i * n:(i + 1) * n], torch.empty(0), cfg,
                                  fidelity == "bit-serial"))
        return torch.stack(outs).reshape(*batch, a.shape[-2], n).to(a.dtype)
    weight = read_back(levels, cfg) * scale[:, None]
    if fidelity == "noisy":
        weight = _read_noise_weight(weight, scale, cfg)
    ai, sa = quantize_input_int(a.float(), cfg["input_bits"])
    y = torch.matmul(ai * sa, weight.view(*batch, n, k).transpose(-2, -1))
    return y.to(a.dtype)


torch.library.impl("nvcc_pt::cim_matmul", "CompositeExplicitAutograd")(cim_matmul)
