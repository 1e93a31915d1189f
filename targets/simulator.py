"""The simulator target: programs crossbar state and runs `nvcc_pt::cim_linear`.

Numerics (DESIGN.md): weights are quantized symmetrically per output channel, split by
sign (differential: two columns; offset: `Wq + 2^(b-1)`), sliced into `cell_bits` cells,
programmed as levels with seeded device variation, and read back. Levels are kept in
units of one conductance step (`G = Gmin + l/(L-1)(Gmax-Gmin)`, measured relative to
Gmin), so variation given as a fraction of the conductance range is `sigma * (L-1)`
level steps.

Fidelity levels implemented here:
  exact      y = x W^T + b, the model's own numbers;
  quantized  quantized inputs times quantized weights;
  noisy      as quantized, with the weights read back from programmed (noisy) cells:
             exactly one dense product with the programmed effective weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nvcc_pt.errors import FidelityError
from nvcc_pt.meta import NoiseInfo
from nvcc_pt.ops import CimState, parse_config

IMPLEMENTED = ("exact", "quantized", "noisy")


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization: integer-valued `wq` in [-(2^(b-1)-1), 2^(b-1)-1] and `scale` [N]."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    wq = torch.round(w / scale[:, None]).clamp_(-qmax, qmax)
    return wq, scale


def quantize_input(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token (last-dim row) quantization of activations, returned dequantized."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny) / qmax
    return torch.round(x / scale).clamp_(-qmax, qmax) * scale


def magnitudes(wq: torch.Tensor, sign: str, weight_bits: int) -> torch.Tensor:
    """The unsigned values stored per sign column: `[P, N, K]`."""
    if sign == "differential":
        return torch.stack([wq.clamp(min=0), (-wq).clamp(min=0)])
    return (wq + 2 ** (weight_bits - 1)).unsqueeze(0)


def slice_levels(mag: torch.Tensor, cell_bits: int, slices: int) -> torch.Tensor:
    """Split unsigned integer values into `slices` cell levels, least significant first: `[S, ...]`."""
    base = 2**cell_bits
    weights = base ** torch.arange(slices, device=mag.device, dtype=mag.dtype)
    shape = (slices,) + (1,) * mag.dim()
    return torch.floor_divide(mag.unsqueeze(0), weights.view(shape)) % base


def program_levels(levels: torch.Tensor, noise: NoiseInfo, cell_bits: int, generator: torch.Generator) -> torch.Tensor:
    """Levels as the cells hold them after programming: variation per level, stuck-at faults."""
    top = 2**cell_bits - 1
    sigmas = torch.tensor(noise.level_sigmas, dtype=torch.float32) * top  # in level steps
    z = torch.randn(levels.shape, generator=generator, dtype=torch.float32)
    programmed = levels.cpu() + sigmas[levels.cpu().long()] * z
    if noise.stuck_at_gmin or noise.stuck_at_gmax:
        u = torch.rand(levels.shape, generator=generator)
        programmed = torch.where(u < noise.stuck_at_gmin, torch.zeros(()), programmed)
        programmed = torch.where(u > 1 - noise.stuck_at_gmax, torch.full((), float(top)), programmed)
    return programmed.to(levels.device)


def read_back(programmed: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Integer-domain weights `[N, K]` from programmed levels `[P, S, N, K]` (shift-and-add, sign correction)."""
    base = 2 ** cfg["cell_bits"]
    place = base ** torch.arange(programmed.shape[1], device=programmed.device, dtype=programmed.dtype)
    mag = torch.einsum("psnk,s->pnk", programmed, place)
    if cfg["sign"] == "differential":
        return mag[0] - mag[1]
    return mag[0] - 2 ** (cfg["weight_bits"] - 1)


def op_generator(seed: int, op_index: int) -> torch.Generator:
    """One generator per (seed, op): an op's draws do not depend on how many ops precede it elsewhere."""
    return torch.Generator().manual_seed((seed * 1_000_003 + op_index) % (2**63))


def program_state(state: CimState, noise: NoiseInfo, fidelity: str, seed: int, op_index: int) -> None:
    """Fill `state`'s buffers for `fidelity`, drawing device variation from `seed`."""
    if fidelity not in IMPLEMENTED:
        raise FidelityError(f"fidelity {fidelity!r} is not implemented by the simulator; choose one of {IMPLEMENTED}")
    cfg = dict(state.config, fidelity=fidelity)
    state.config = cfg
    source = state.source
    if fidelity == "exact" or source.device.type == "meta":
        state.weight = source
        return
    w = source.float()
    wq, scale = quantize_weight(w, cfg["weight_bits"])
    state.scale = scale
    if fidelity == "quantized":
        state.weight = (wq * scale[:, None]).to(source.dtype)
        return
    levels = slice_levels(magnitudes(wq, cfg["sign"], cfg["weight_bits"]), cfg["cell_bits"], cfg["slices"])
    programmed = program_levels(levels.transpose(0, 1), noise, cfg["cell_bits"], op_generator(seed, op_index))
    state.weight = (read_back(programmed, cfg) * scale[:, None]).to(source.dtype)


def cim_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: list[torch.Tensor],
               config: str) -> torch.Tensor:
    cfg = parse_config(config)
    fidelity = cfg["fidelity"]
    if fidelity == "exact":
        return F.linear(x, weight, bias)
    if fidelity in ("quantized", "noisy"):
        return F.linear(quantize_input(x, cfg["input_bits"]), weight, bias)
    raise FidelityError(f"op {cfg['op']!r}: fidelity {fidelity!r} is not implemented; choose one of {IMPLEMENTED}")


torch.library.impl("nvcc_pt::cim_linear", "CompositeExplicitAutograd")(cim_linear)
