"""`TargetSpec`: everything the compiler and the simulator need to know about a CiM target.

A spec is a frozen, validated record. Derive variants with `spec.replace(adc_bits=6)`;
every field is checked again on the new value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nvcc_pt.targets.costs import ComponentCosts

from nvcc_pt import validate as check
from nvcc_pt.errors import TargetError
from nvcc_pt.meta import VARIATIONS, NoiseInfo

SIGN_ENCODINGS = ("differential", "offset")
ADC_RANGES = ("exact", "full-scale", "calibrated")
"""ADC range modes (`nvcc_pt.targets.adc`): `exact` (a power-of-two step that holds the largest partial sum, with
ISAAC's flipped columns where they apply: exact whenever the bits allow), `full-scale` (the largest partial sum
over the codes), `calibrated` (the range `cm.calibrate` observes; full scale until then)."""
INPUT_ENCODINGS = ("two-phase", "twos-complement")

# Bounds the simulator's arithmetic honours exactly (docs/numerics: float32 holds integers up to 2^24).
MAX_WEIGHT_BITS = 16
"""Weight codes are stored as int16 (`devices.weight_codes`); an offset magnitude (< 2^16) and every slice sum read
back in float32 stay exact integers."""
MAX_CELL_BITS = 16
"""Cell levels are stored as uint8 up to 8 bits and int32 above (`devices.levels_of`); 2^16 levels is beyond any device."""
MAX_INPUT_BITS = 16
"""Input codes are float32 integers below 2^15; the quantized products stay exact integers before rescaling."""
MAX_ADC_BITS = 24
"""ADC codes are float32 integers, exact up to 2^24; more bits than the partial sums need still resolve
non-integer (noisy) sums finely, which is how a nearly ideal ADC is modelled."""
MAX_ARRAY = 4096
"""Largest rows or cols: the crossbar paths pad every row tile to `rows`, so the state grows with it."""
MAX_COUNT = 2**20
"""Largest arrays per macro, macros per chip and chip count: counts beyond it are typing errors."""
MAX_SIGMA = 10.0
"""Largest variation or read-noise sigma, in conductance ranges (beyond it a cell holds noise only)."""
MAX_LEVEL_SCALE = 100.0
"""Largest per-level multiplier of sigma."""
MAX_DRIFT_NU = 1.0
"""Largest drift exponent (measured PCM exponents are near 0.05; Joshi et al., Nat. Commun. 11:2473, 2020)."""


@dataclass(frozen=True)
class DeviceModel:
    """How a cell's programmed conductance departs from its target level.

    Two variation models (`variation`, docs/devices.md):

    - `per-cell`: variation is expressed in units of the conductance range `g_max - g_min`: a cell
      programmed to level `l` reads back `l/(L-1) + sigma * level_scale[l] * z` with `z ~ N(0, 1)`.
    - `per-weight`: the model of the NVCiM-PT authors' group (Qin et al., "NeFT: Negative Feedback
      Training", public code in their NF_Training repository, `src/generate_noise.py`): each weight `w`
      of a tensor `W` gets one Gaussian deviation of std `sqrt(sum_i 4^(c i)) / sum_i 2^(c i) * sigma *
      max|W|` over its slices `i` of `c`-bit cells, times `band_factor` when `|w| / max|W|` lies in
      (0.25, 0.75), all divided by `sqrt(0.4 band_factor^2 + 0.6)` (`devices.weight_variation`).

    Example:
        >>> DeviceModel("rram4", sigma=0.1, variation="per-weight", band_factor=4.0)
    """

    name: str
    """Device family (`reram`, `rram1`, `fefet2`, `pcm`, ...)."""
    sigma: float = 0.0
    """Programming variation, standard deviation as a fraction of the conductance range; 0 to 10."""
    level_scale: tuple[float, ...] | None = None
    """Per-level multiplier of `sigma` (state-dependent variation), each 0 to 100; None means 1 for every level."""
    read_sigma: float = 0.0
    """Read noise per call, standard deviation as a fraction of the conductance range; 0 to 10."""
    stuck_at_gmin: float = 0.0
    """Probability that a cell is stuck at `g_min`."""
    stuck_at_gmax: float = 0.0
    """Probability that a cell is stuck at `g_max`."""
    drift_nu: float = 0.0
    """Conductance drift exponent: `G(t) = G(t0) * (t / t0) ** -nu` (PCM), 0 to 1; 0 disables drift."""
    drift_t0_s: float = 20.0
    """Reference time after programming for drift, seconds; finite and > 0."""
    g_min_us: float = 0.0
    """Lowest programmable conductance, microsiemens; finite and >= 0."""
    g_max_us: float = 25.0
    """Highest programmable conductance, microsiemens; finite and above `g_min_us`."""
    variation: str = "per-cell"
    """`per-cell` (sigma per cell level, `level_scale`) or `per-weight` (per weight by its |w|/max|W| band)."""
    band_factor: float = 1.0
    """`per-weight` only: the device factor `s` (0 to 100) on weights with |w|/max|W| in (0.25, 0.75)."""

    def __post_init__(self) -> None:
        where = f"device {self.name!r}" if isinstance(self.name, str) else "device"
        check.text("name", self.name, where="device", error=TargetError)
        for name, hi in (("sigma", MAX_SIGMA), ("read_sigma", MAX_SIGMA), ("drift_nu", MAX_DRIFT_NU),
                         ("stuck_at_gmin", 1.0), ("stuck_at_gmax", 1.0)):
            object.__setattr__(self, name, check.real(name, getattr(self, name), lo=0.0, hi=hi, where=where,
                                                      error=TargetError))
        if self.stuck_at_gmin + self.stuck_at_gmax > 1.0:
            raise TargetError(f"{where}: stuck_at_gmin + stuck_at_gmax must not exceed 1")
        object.__setattr__(self, "drift_t0_s", check.real("drift_t0_s", self.drift_t0_s, lo=0.0, lo_open=True,
                                                          where=where, error=TargetError))
        object.__setattr__(self, "g_min_us", check.real("g_min_us", self.g_min_us, lo=0.0, where=where,
                                                        error=TargetError))
        object.__setattr__(self, "g_max_us", check.real("g_max_us", self.g_max_us, lo=0.0, where=where,
                                                        error=TargetError))
        check.choice("variation", self.variation, VARIATIONS, where=where, error=TargetError)
        object.__setattr__(self, "band_factor", check.real("band_factor", self.band_factor, lo=0.0,
                                                           hi=MAX_LEVEL_SCALE, where=where, error=TargetError))
        if self.g_max_us <= self.g_min_us:
            raise TargetError(f"{where}: g_max_us={self.g_max_us} must exceed g_min_us={self.g_min_us}")
        if self.level_scale is not None:
            if isinstance(self.level_scale, (str, bytes)) or not isinstance(self.level_scale, (tuple, list)):
                raise TargetError(f"{where}: level_scale={self.level_scale!r} must be a sequence of numbers or None")
            object.__setattr__(self, "level_scale", tuple(
                check.real(f"level_scale[{i}]", s, lo=0.0, hi=MAX_LEVEL_SCALE, where=where,
                           error=TargetError) for i, s in enumerate(self.level_scale)))

    def level_sigmas(self, levels: int) -> tuple[float, ...]:
        """Programming sigma of each of `levels` levels, in units of the conductance range."""
        if self.level_scale is None:
            return (self.sigma,) * levels
        if len(self.level_scale) != levels:
            raise TargetError(
                f"device {self.name!r} gives {len(self.level_scale)} level scales but the cells have {levels} levels; "
                "set cell_bits to match or give level_scale=None"
            )
        return tuple(self.sigma * s for s in self.level_scale)

    def noise_record(self, levels: int) -> NoiseInfo:
        """The `NoiseInfo` an op whose cells have `levels` levels is programmed with.

        Example:
            >>> get_target("rram1-128x128").device.noise_record(4).variation
            'per-weight'
        """
        return NoiseInfo(device=self.name, sigma=self.sigma, level_sigmas=self.level_sigmas(levels),
                         read_sigma=self.read_sigma, stuck_at_gmin=self.stuck_at_gmin,
                         stuck_at_gmax=self.stuck_at_gmax, drift_nu=self.drift_nu, variation=self.variation,
                         band_factor=self.band_factor)


@dataclass(frozen=True)
class TargetSpec:
    """A CiM target: crossbar geometry, precisions, device model and chip hierarchy.

    Example:
        >>> spec = get_target("reram-128x128").replace(adc_bits=6)
        >>> spec.slices   # 8 offset magnitude bits on 2-bit cells
        4
    """

    name: str
    """Registry name, `<device>-<rows>x<cols>` for the presets."""
    device: DeviceModel
    """Cell device model (variation, faults, drift)."""
    rows: int
    """Word lines per array: input rows that sum on one column; 1 to `MAX_ARRAY` (4096)."""
    cols: int
    """Bit lines per array: physical output columns; 1 to `MAX_ARRAY` (4096)."""
    cell_bits: int
    """Bits stored per cell (`2**cell_bits` conductance levels); 1 to 16, and at most `weight_bits`."""
    weight_bits: int = 8
    """Default signed weight precision, including the sign; 2 (sign and one magnitude bit) to 16 (int16 codes)."""
    input_bits: int = 8
    """Default signed input (activation) precision, including the sign; 2 (sign and one magnitude bit) to 16."""
    dac_bits: int = 1
    """Bits the DAC applies per input cycle, 1 to `input_bits`; fewer than `input_bits` means bit-serial inputs."""
    adc_bits: int = 8
    """ADC resolution per array-column conversion; 1 to 24 (codes are exact float32 integers)."""
    adc_range: str = "full-scale"
    """ADC range mode, one of `ADC_RANGES`: `exact`, `full-scale` or `calibrated` (`nvcc_pt.targets.adc`)."""
    sign: str = "differential"
    """`differential` (W+ and W- columns) or `offset` (W + 2^(b-1), reference subtracted digitally)."""
    arrays_per_macro: int = 8
    """Arrays sharing one macro's periphery (ISAAC's in-situ multiply-accumulate unit); 1 to 2^20."""
    macros_per_chip: int = 128
    """Macros on one chip; 1 to 2^20."""
    chips: int | None = None
    """Fixed chip count (1 to 2^20), or None to report how many chips the model needs."""
    clock_mhz: float = 1200.0
    """Array read clock, MHz (one input cycle per period); finite, > 0 and at most 10^6."""
    description: str = ""
    """What this target models."""
    source: str = ""
    """Where the figures come from."""
    extra: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    """Free-form (key, value) pairs later stages may read: string keys, scalar values (kept hashable).
    `input_encoding` is `two-phase` (default) or `twos-complement` (`devices.input_planes`)."""
    costs: ComponentCosts | None = None
    """Per-component energy/area/speed figures; None uses the device family's preset (`targets/costs.py`)."""

    def __post_init__(self) -> None:
        check.text("name", self.name, where="target", error=TargetError)
        if self.name != self.name.strip():
            raise TargetError(f"target name {self.name!r} has surrounding whitespace; strip it")
        where = f"target {self.name!r}"
        bounds = {"rows": (1, MAX_ARRAY), "cols": (1, MAX_ARRAY), "weight_bits": (2, MAX_WEIGHT_BITS),
                  "cell_bits": (1, MAX_CELL_BITS), "input_bits": (2, MAX_INPUT_BITS), "dac_bits": (1, MAX_INPUT_BITS),
                  "adc_bits": (1, MAX_ADC_BITS), "arrays_per_macro": (1, MAX_COUNT), "macros_per_chip": (1, MAX_COUNT)}
        for name, (lo, hi) in bounds.items():
            object.__setattr__(self, name, check.integer(name, getattr(self, name), lo=lo, hi=hi, where=where,
                                                         error=TargetError))
        if self.chips is not None:
            object.__setattr__(self, "chips", check.integer("chips", self.chips, lo=1, hi=MAX_COUNT, where=where,
                                                            error=TargetError))
        if self.cell_bits > self.weight_bits:
            raise TargetError(
                f"{where}: cell_bits={self.cell_bits} exceeds weight_bits={self.weight_bits}; "
                "a weight cannot be spread over fewer bits than one cell holds, lower cell_bits or raise weight_bits"
            )
        if self.dac_bits > self.input_bits:
            raise TargetError(f"{where}: dac_bits={self.dac_bits} exceeds input_bits={self.input_bits}; "
                              "lower dac_bits or raise input_bits")
        check.choice("sign", self.sign, SIGN_ENCODINGS, where=where, error=TargetError)
        check.choice("adc_range", self.adc_range, ADC_RANGES, where=where, error=TargetError)
        object.__setattr__(self, "clock_mhz", check.real("clock_mhz", self.clock_mhz, lo=0.0, lo_open=True,
                                                         hi=1e6, where=where, error=TargetError))
        check.text("description", self.description, where=where, nonempty=False, error=TargetError)
        check.text("source", self.source, where=where, nonempty=False, error=TargetError)
        object.__setattr__(self, "extra", _check_extra(self.extra, where))
        if not isinstance(self.device, DeviceModel):
            raise TargetError(f"{where}: device must be a DeviceModel, got {type(self.device).__name__}")
        self.device.level_sigmas(self.levels)  # checks the level scales against the cells
        if self.costs is not None and not isinstance(self.costs, ComponentCosts):
            raise TargetError(f"{where}: costs must be a ComponentCosts or None, got {type(self.costs).__name__}")

    # Derived quantities (DESIGN.md, Numerics).
    @property
    def levels(self) -> int:
        """Conductance levels per cell."""
        return 2**self.cell_bits

    @property
    def sigma(self) -> float:
        """The device's programming sigma (fraction of the conductance range)."""
        return self.device.sigma

    def magnitude_bits(self, weight_bits: int | None = None) -> int:
        """Bits stored per weight column: `b-1` for differential (sign on the column pair), `b` for offset."""
        b = self.weight_bits if weight_bits is None else weight_bits
        return b - 1 if self.sign == "differential" else b

    def num_slices(self, weight_bits: int | None = None) -> int:
        """`S = ceil(magnitude_bits / cell_bits)` columns per weight and sign."""
        return math.ceil(self.magnitude_bits(weight_bits) / self.cell_bits)

    @property
    def slices(self) -> int:
        return self.num_slices()

    @property
    def sign_columns(self) -> int:
        """`P`: 2 for differential, 1 for offset."""
        return 2 if self.sign == "differential" else 1

    @property
    def arrays_per_chip(self) -> int:
        return self.arrays_per_macro * self.macros_per_chip

    def replace(self, **changes: Any) -> TargetSpec:
        """A copy with `changes` applied; device fields (`sigma`, `read_sigma`, ...) may be given directly."""
        if "device" in changes and not isinstance(changes["device"], DeviceModel):
            raise TargetError(f"target {self.name!r}: device must be a DeviceModel, got {type(changes['device']).__name__}")
        device_fields = {f.name for f in dataclasses.fields(DeviceModel)} - {"name"}
        device_changes = {k: changes.pop(k) for k in list(changes) if k in device_fields}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TargetError(f"TargetSpec has no field(s) {sorted(unknown)}; fields are {[f.name for f in dataclasses.fields(self)]}")
        if device_changes:
            changes["device"] = dataclasses.replace(changes.get("device", self.device), **device_changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `TargetSpec.from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["extra"] = [list(kv) for kv in self.extra]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetSpec:
        """The spec `to_dict` wrote; a malformed record raises `TargetError` (or `CostModelError` for its costs)."""
        if not isinstance(d, dict) or not isinstance(d.get("device"), dict):
            raise TargetError(f"target record must be a dict with a 'device' dict (from TargetSpec.to_dict()), "
                              f"got {type(d).__name__}")
        d = dict(d)
        try:
            device = dict(d.pop("device"))
            if isinstance(device.get("level_scale"), list):
                device["level_scale"] = tuple(device["level_scale"])
            extra = d.get("extra", ())
            if isinstance(extra, list) and all(isinstance(kv, list) for kv in extra):
                d["extra"] = tuple(tuple(kv) for kv in extra)
            if isinstance(d.get("costs"), dict):
                d["costs"] = ComponentCosts.from_dict(d["costs"])
            return cls(device=DeviceModel(**device), **d)
        except TypeError as e:  # missing or unknown fields
            raise TargetError(f"target record is malformed ({e}); it must come from TargetSpec.to_dict()") from e


def _check_extra(extra: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """`extra` as (key, value) pairs with string keys and JSON scalar values (so the spec stays hashable)."""
    if not isinstance(extra, tuple) or not all(isinstance(kv, tuple) and len(kv) == 2 for kv in extra):
        raise TargetError(f"{where}: extra={extra!r} must be a tuple of (key, value) pairs")
    for key, value in extra:
        check.text("extra key", key, where=where, error=TargetError)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise TargetError(f"{where}: extra[{key!r}]={value!r} must be a string, number, bool or None")
        if isinstance(value, float) and not math.isfinite(value):
            raise TargetError(f"{where}: extra[{key!r}]={value!r} must be finite")
    encoding = dict(extra).get("input_encoding", INPUT_ENCODINGS[0])
    check.choice("extra['input_encoding']", encoding, INPUT_ENCODINGS, where=where, error=TargetError)
    return extra
