"""Device noise on soft prompts, drawn through the simulator's own programming path.

An OVT `[n_virtual, hidden]` is stored like the weight of a mapped linear layer: each virtual
token is one output channel. `read_back_ovt` quantizes it (`weight_codes`), splits sign and
bit slices (`levels_of`), programs the cell levels with the target's device
model (`program_levels`, with the noise record `annotate_noise` builds) and reads them back
(`read_back`): the same functions, in the same order and with the same random draws, that
`targets.simulator.program_state` uses for a compiled layer. Training and the bank thus see one
noise model.

`noisy_ovt` is the training-time version: the forward value is the read-back OVT and the gradient
passes straight through to the clean OVT (straight-through estimator), so every step trains the
OVT on a fresh device instance. `censor` right-censors the Gaussian deviation of each cell at
`censor` standard deviations (the option the NVCiM-PT authors' group trains with), leaving the
draws otherwise identical. The variation model is the target's (`DeviceModel.variation`): on the
NVCiM-PT presets, the group's per-weight model, with `max|W|` taken over the OVT.
"""

from __future__ import annotations

import torch

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.meta import NoiseInfo
from nvcc_pt.targets import TargetSpec, get_target
from nvcc_pt.targets.devices import as_stored, levels_of, program_levels, read_back, weight_codes
from nvcc_pt.targets.philox import ChipKey


def noise_info(target: str | TargetSpec, sigma: float | None = None) -> tuple[TargetSpec, NoiseInfo]:
    """The target (with `sigma` applied when given) and the noise record a mapped op on it is programmed with."""
    spec = get_target(target)
    if sigma is not None:
        spec = spec.replace(sigma=sigma)
    return spec, spec.device.noise_record(spec.levels)


def read_back_ovt(ovt: torch.Tensor, target: str | TargetSpec, generator: torch.Generator | ChipKey, *, sigma: float | None = None,
                  censor: float | None = None) -> torch.Tensor:
    """`ovt` `[n_virtual, hidden]` as a programmed crossbar reads it back (device variation from `generator`: a
    torch generator, or the `ChipKey` of a compiled op, `targets.simulator.op_generator`, for that op's chip).

    Example:
        >>> noisy = read_back_ovt(ovt, "rram1-128x128", torch.Generator().manual_seed(0), sigma=0.1)
    """
    check.finite_tensor("ovt", ovt, where="read_back_ovt")
    check.instance("generator", generator, (torch.Generator, ChipKey), where="read_back_ovt")
    check.optional_real("censor", censor, lo=0.0, lo_open=True, where="read_back_ovt")
    if ovt.dim() != 2:
        raise InputError(f"an OVT must be [n_virtual, hidden]; got shape {tuple(ovt.shape)}")
    spec, info = noise_info(target, sigma)
    cfg = {"cell_bits": spec.cell_bits, "sign": spec.sign, "weight_bits": spec.weight_bits,
           "slices": spec.num_slices()}
    codes, scale = weight_codes(ovt.detach().float().cpu(), cfg)
    levels = levels_of(codes, cfg)  # [P, S, N, K], the order program_state draws in
    programmed = program_levels(levels, info, spec.cell_bits, generator, censor=censor, weights=(codes, scale))
    programmed = as_stored(programmed, spec.sign, spec.cell_bits)  # as a compiled layer keeps them
    return (read_back(programmed, cfg) * scale[:, None]).to(ovt.dtype).to(ovt.device)


def noisy_ovt(ovt: torch.Tensor, target: str | TargetSpec, generator: torch.Generator | ChipKey, *, sigma: float | None = None,
              censor: float | None = None) -> torch.Tensor:
    """The read-back OVT in the forward pass, identity in the backward pass (straight-through)."""
    noisy = read_back_ovt(ovt, target, generator, sigma=sigma, censor=censor)
    return ovt + (noisy - ovt).detach()
