"""Named targets: a short name maps to a complete, documented `TargetSpec`.

Presets are registered once with `register_target`; `get_target` also parses names of the
form `<device>-<rows>x<cols>` by resizing the device family's base preset.
"""

from __future__ import annotations

import difflib
import math
import re

from nvcc_pt.targets.spec import MAX_ARRAY, DeviceModel, TargetSpec

from nvcc_pt.errors import TargetError

_TARGETS: dict[str, TargetSpec] = {}
_FAMILY_BASE: dict[str, str] = {}  # device family -> preset it is resized from
_NAME = re.compile(r"(?P<device>[a-z][a-z0-9]*)-(?P<rows>[0-9]+)x(?P<cols>[0-9]+)")  # matched in full


def register_target(spec: TargetSpec, *, family_base: bool = False) -> TargetSpec:
    """Add `spec` under `spec.name`; refuses a name that is taken."""
    if not isinstance(spec, TargetSpec):
        raise TargetError(f"register_target takes a TargetSpec, got {type(spec).__name__}")
    if spec.name in _TARGETS:
        raise TargetError(f"target {spec.name!r} is already registered; pick another name or use spec.replace()")
    _TARGETS[spec.name] = spec
    if family_base or spec.device.name not in _FAMILY_BASE:
        _FAMILY_BASE[spec.device.name] = spec.name
    return spec


def list_targets() -> list[str]:
    """Names of the registered targets, sorted."""
    return sorted(_TARGETS)


def get_target(target: str | TargetSpec) -> TargetSpec:
    """The spec for a name (or the spec itself). Unknown names fail with the closest candidates."""
    if isinstance(target, TargetSpec):
        return target
    if not isinstance(target, str):
        raise TargetError(f"target must be a name or a TargetSpec, got {type(target).__name__} {target!r:.80}")
    if target in _TARGETS:
        return _TARGETS[target]
    if target != target.strip():
        raise TargetError(f"target name {target!r} has surrounding whitespace; pass {target.strip()!r}")
    match = _NAME.fullmatch(target)
    if match and match["device"] in _FAMILY_BASE:
        # int() of thousands of digits raises ValueError; any size that long is out of range anyway
        rows, cols = (int(t) if len(t) < 12 else 10**12 for t in (match["rows"], match["cols"]))
        if not (0 < rows <= MAX_ARRAY and 0 < cols <= MAX_ARRAY):
            raise TargetError(f"target {target!r}: a {match['rows']:.20}x{match['cols']:.20} array is out of range; rows and cols must lie "
                              f"in [1, {MAX_ARRAY}]")
        return _TARGETS[_FAMILY_BASE[match["device"]]].replace(name=target, rows=rows, cols=cols)
    close = difflib.get_close_matches(target, list(_TARGETS), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise TargetError(
        f"unknown target {target!r}.{hint} Known targets: {list_targets()}; "
        f"names '<device>-<rows>x<cols>' also work for devices {sorted(_FAMILY_BASE)}."
    )


# --- presets -------------------------------------------------------------------------------

# ISAAC (Shafiee et al., ISCA 2016, Table I/II and Sec. IV): 128x128 ReRAM crossbars with 2-bit cells,
# 1-bit DAC (inputs streamed bit by bit), an 8-bit ADC at 1.28 GS/s shared by the 8 crossbars of an IMA,
# 12 IMAs per tile, 168 tiles per chip. Weights are stored with a bias (offset, subtracted digitally) and a
# column whose weights sum to more than half the maximum is stored flipped, so no column's sum exceeds 192
# and the 8-bit ADC is exact (the `exact` range mode). ISAAC streams two's-complement inputs and assumes
# ideal cells; under this preset's illustrative variation (sigma 0.02) that encoding drives most rows in
# every cycle (a small negative input's high bits are all ones), and the exact ADC rounds each noisy read
# to whole levels, so this preset drives inputs in two phases instead (positive entries' magnitude bits,
# then the negative ones', subtracted digitally; 14 cycles for 8-bit inputs instead of 8): exact at sigma
# 0 all the same, and its sparse reads round the noise away (docs/fidelity.md, "Noise and the exact ADC").
# ISAAC streams 16-bit data; 8-bit weights and inputs are this preset's choice.
register_target(TargetSpec(
    name="reram-128x128", device=DeviceModel("reram", sigma=0.02), rows=128, cols=128, cell_bits=2,
    weight_bits=8, input_bits=8, dac_bits=1, adc_bits=8, adc_range="exact", sign="offset",
    arrays_per_macro=8, macros_per_chip=12 * 168, clock_mhz=10.0,
    extra=(("input_encoding", "two-phase"),),
    description="ISAAC-style ReRAM: 2-bit cells, biased weights, bit-serial two-phase inputs (1-bit DAC), "
                "8-bit ADC made exact by ISAAC's flipped-column encoding",
    source="Shafiee et al., ISAAC, ISCA 2016, Tables I-II and Sec. IV (crossbar 128x128, 2 bits/cell, 1-bit DAC, "
           "8-bit ADC, biased weights, flipped columns, 100 ns read); two-phase inputs instead of ISAAC's "
           "two's complement (docs/fidelity.md)",
))

# PRIME (Chi et al., ISCA 2016, Sec. III-IV): 256x256 ReRAM mats with 4-bit MLC cells, positive and
# negative weights in two arrays subtracted (differential), 3-bit input voltages (multi-bit DAC, two
# cycles for 6-bit inputs) and 6-bit sense-amplifier outputs that keep the most significant bits of the
# sum: a power-of-two step over the full range, the `exact` mode (which cannot be exact at 6 bits).
register_target(TargetSpec(
    name="reram-256x256", device=DeviceModel("reram", sigma=0.02), rows=256, cols=256, cell_bits=4,
    weight_bits=8, input_bits=6, dac_bits=3, adc_bits=6, adc_range="exact", sign="differential",
    arrays_per_macro=2, macros_per_chip=64 * 8, clock_mhz=10.0,
    description="PRIME-style ReRAM: 4-bit cells, 3-bit DAC, 6-bit ADC keeping the top bits of each sum",
    source="Chi et al., PRIME, ISCA 2016, Sec. III (256x256 mats, 4-bit MLC, 3-bit input, 6-bit output)",
), family_base=False)

# FeFET arrays of the CiM retrieval line of work (Qin et al., Robust Implementation of RAG on
# edge-based CiM, 2024): 2-bit FeFET cells in 64x64 arrays. That work models device variation on the
# weights, not the periphery: the 8-bit DAC applies every input bit at once (so `bit-serial` runs as `adc`)
# and the 8-bit full-scale ADC is an illustrative choice; `cm.calibrate` gives the realistic ranges.
register_target(TargetSpec(
    name="fefet-64x64", device=DeviceModel("fefet", sigma=0.05), rows=64, cols=64, cell_bits=2,
    weight_bits=8, input_bits=8, dac_bits=8, adc_bits=8, sign="differential",
    arrays_per_macro=16, macros_per_chip=256, clock_mhz=100.0,
    description="FeFET 2-bit cells in 64x64 arrays",
    source="2-bit FeFET CiM arrays as in the CiM-RAG work of the NVCiM-PT authors' group (Qin et al., 2024)",
))


def _neft_device(name: str, factor: float, sigma: float = 0.1) -> DeviceModel:
    """The NVCiM-PT authors' variation models (Qin et al., NeFT; public code in their NF_Training repository,
    `src/generate_noise.py` and `config.py`). By default the group's own per-weight model: the device factor
    multiplies the noise of weights with |w|/max|W| in (0.25, 0.75), all divided by sqrt(0.4 s^2 + 0.6).
    `variation="per-cell"` selects the per-cell-level reading of the same factors: the two middle levels'
    sigma scaled by the factor and the outer two by 1, with the same normalisation."""
    norm = math.sqrt(0.4 * factor**2 + 0.6)
    return DeviceModel(name, sigma=sigma, level_scale=(1 / norm, factor / norm, factor / norm, 1 / norm),
                       variation="per-weight", band_factor=factor)


# Device factors s = 1, 4, 2, 6 (rram1, rram4, fefet2, fefet6); sigma 0.1 is NVCiM-PT's main
# setting (Qin et al., DATE 2025, Sec. IV). The group's model puts the variation on the weights and has
# no DAC or ADC: `noisy` is the fidelity their figures correspond to. The 8-bit DAC (one input cycle, so
# `bit-serial` runs as `adc`) and 8-bit full-scale ADC are illustrative; `cm.calibrate` sets real ranges.
for _name, _factor in (("rram1", 1.0), ("rram4", 4.0), ("fefet2", 2.0), ("fefet6", 6.0)):
    register_target(TargetSpec(
        name=f"{_name}-128x128", device=_neft_device(_name, _factor), rows=128, cols=128, cell_bits=2,
        weight_bits=8, input_bits=8, dac_bits=8, adc_bits=8, sign="differential",
        description=f"{_name}: 2-bit cells, the NeFT group's per-weight Gaussian variation, device factor {_factor:g}",
        source="NVCiM-PT (Qin et al., DATE 2025) device models as defined in the group's NeFT code "
               "(NF_Training: src/generate_noise.py, config.py); sigma 0.1 is the paper's main setting",
    ))

# PCM after the statistical model of Joshi et al., Nature Communications 11, 2473 (2020),
# as documented for aihwkit's PCM inference model: g_max 25 uS, programming noise of a few
# percent of g_max, read noise, drift exponent ~0.05 around t0 = 20 s. The statistics are of the cells;
# the 8-bit DAC (one input cycle, so `bit-serial` runs as `adc`) and the 8-bit full-scale ADC are
# illustrative; `cm.calibrate` sets real ranges.
register_target(TargetSpec(
    name="pcm-256x256",
    device=DeviceModel("pcm", sigma=0.03, read_sigma=0.01, drift_nu=0.05, drift_t0_s=20.0, g_min_us=0.0, g_max_us=25.0),
    rows=256, cols=256, cell_bits=4, weight_bits=8, input_bits=8, dac_bits=8, adc_bits=8, sign="differential",
    arrays_per_macro=4, macros_per_chip=64, clock_mhz=100.0,
    description="PCM with programming noise, read noise and conductance drift",
    source="Joshi et al., Nat. Commun. 11:2473 (2020) PCM statistics; illustrative magnitudes, tune per device",
))
