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

from nvcc_pt.errors import TargetError

SIGN_ENCODINGS = ("differential", "offset")
ADC_RANGES = ("full-scale", "calibrated")


@dataclass(frozen=True)
class DeviceModel:
    """How a cell's programmed conductance departs from its target level.

    Variation is expressed in units of the conductance range `g_max - g_min`: a cell
    programmed to level `l` reads back `l/(L-1) + sigma * level_scale[l] * z` with `z ~ N(0, 1)`.
    """

    name: str
    """Device family (`reram`, `rram1`, `fefet2`, `pcm`, ...)."""
    sigma: float = 0.0
    """Programming variation, standard deviation as a fraction of the conductance range."""
    level_scale: tuple[float, ...] | None = None
    """Per-level multiplier of `sigma` (state-dependent variation); None means 1 for every level."""
    read_sigma: float = 0.0
    """Read noise per call, standard deviation as a fraction of the conductance range."""
    stuck_at_gmin: float = 0.0
    """Probability that a cell is stuck at `g_min`."""
    stuck_at_gmax: float = 0.0
    """Probability that a cell is stuck at `g_max`."""
    drift_nu: float = 0.0
    """Conductance drift exponent: `G(t) = G(t0) * (t / t0) ** -nu` (PCM); 0 disables drift."""
    drift_t0_s: float = 20.0
    """Reference time after programming for drift, seconds."""
    g_min_us: float = 0.0
    """Lowest programmable conductance, microsiemens."""
    g_max_us: float = 25.0
    """Highest programmable conductance, microsiemens."""

    def __post_init__(self) -> None:
        for name in ("sigma", "read_sigma", "drift_nu", "g_min_us"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise TargetError(f"device {self.name!r}: {name}={value!r} must be a finite number >= 0")
        for name in ("stuck_at_gmin", "stuck_at_gmax"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TargetError(f"device {self.name!r}: {name}={value!r} must be a probability in [0, 1]")
        if self.stuck_at_gmin + self.stuck_at_gmax > 1.0:
            raise TargetError(f"device {self.name!r}: stuck_at_gmin + stuck_at_gmax must not exceed 1")
        if self.g_max_us <= self.g_min_us:
            raise TargetError(f"device {self.name!r}: g_max_us={self.g_max_us} must exceed g_min_us={self.g_min_us}")
        if self.drift_t0_s <= 0:
            raise TargetError(f"device {self.name!r}: drift_t0_s={self.drift_t0_s} must be > 0 seconds")
        if self.level_scale is not None:
            object.__setattr__(self, "level_scale", tuple(float(s) for s in self.level_scale))
            if any(s < 0 or not math.isfinite(s) for s in self.level_scale):
                raise TargetError(f"device {self.name!r}: level_scale={self.level_scale} must hold finite numbers >= 0")

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


@dataclass(frozen=True)
class TargetSpec:
    """A CiM target: crossbar geometry, precisions, device model and chip hierarchy.

    Example:
        >>> spec = get_target("reram-128x128").replace(adc_bits=6)
        >>> spec.slices   # 7 magnitude bits on 2-bit cells
        4
    """

    name: str
    """Registry name, `<device>-<rows>x<cols>` for the presets."""
    device: DeviceModel
    """Cell device model (variation, faults, drift)."""
    rows: int
    """Word lines per array: input rows that sum on one column."""
    cols: int
    """Bit lines per array: physical output columns."""
    cell_bits: int
    """Bits stored per cell (`2**cell_bits` conductance levels)."""
    weight_bits: int = 8
    """Default signed weight precision, including the sign."""
    input_bits: int = 8
    """Default signed input (activation) precision, including the sign."""
    dac_bits: int = 1
    """Bits the DAC applies per input cycle; fewer than `input_bits` means bit-serial inputs."""
    adc_bits: int = 8
    """ADC resolution per array-column conversion."""
    adc_range: str = "full-scale"
    """`full-scale` (the largest possible partial sum) or `calibrated` (from `cm.calibrate`)."""
    sign: str = "differential"
    """`differential` (W+ and W- columns) or `offset` (W + 2^(b-1), reference subtracted digitally)."""
    arrays_per_macro: int = 8
    """Arrays sharing one macro's periphery (ISAAC's in-situ multiply-accumulate unit)."""
    macros_per_chip: int = 128
    """Macros on one chip."""
    chips: int | None = None
    """Fixed chip count, or None to report how many chips the model needs."""
    clock_mhz: float = 1200.0
    """Array read clock, MHz (one input cycle per period)."""
    description: str = ""
    """What this target models."""
    source: str = ""
    """Where the figures come from."""
    extra: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    """Free-form (key, value) pairs later stages may read (kept hashable)."""
    costs: ComponentCosts | None = None
    """Per-component energy/area/speed figures; None uses the device family's preset (`targets/costs.py`)."""

    def __post_init__(self) -> None:
        positive = ("rows", "cols", "cell_bits", "weight_bits", "input_bits", "dac_bits", "adc_bits",
                    "arrays_per_macro", "macros_per_chip")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise TargetError(f"target {self.name!r}: {name}={value!r} must be a positive integer")
        if self.chips is not None and (not isinstance(self.chips, int) or self.chips <= 0):
            raise TargetError(f"target {self.name!r}: chips={self.chips!r} must be a positive integer or None")
        if self.weight_bits < 2:
            raise TargetError(f"target {self.name!r}: weight_bits={self.weight_bits} must be >= 2 (sign + magnitude)")
        if self.cell_bits > self.weight_bits:
            raise TargetError(
                f"target {self.name!r}: cell_bits={self.cell_bits} exceeds weight_bits={self.weight_bits}; "
                "a weight cannot be spread over fewer bits than one cell holds, lower cell_bits or raise weight_bits"
            )
        if self.dac_bits > self.input_bits:
            raise TargetError(f"target {self.name!r}: dac_bits={self.dac_bits} exceeds input_bits={self.input_bits}")
        if self.sign not in SIGN_ENCODINGS:
            raise TargetError(f"target {self.name!r}: sign={self.sign!r}; choose one of {SIGN_ENCODINGS}")
        if self.adc_range not in ADC_RANGES:
            raise TargetError(f"target {self.name!r}: adc_range={self.adc_range!r}; choose one of {ADC_RANGES}")
        if not self.clock_mhz > 0:
            raise TargetError(f"target {self.name!r}: clock_mhz={self.clock_mhz} must be > 0")
        if not isinstance(self.device, DeviceModel):
            raise TargetError(f"target {self.name!r}: device must be a DeviceModel, got {type(self.device).__name__}")
        self.device.level_sigmas(self.levels)  # checks the level scales against the cells
        if self.costs is not None and not isinstance(self.costs, ComponentCosts):
            raise TargetError(f"target {self.name!r}: costs must be a ComponentCosts or None, got {type(self.costs).__name__}")

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
        d = dict(d)
        try:
            device = dict(d.pop("device"))
            if device.get("level_scale") is not None:
                device["level_scale"] = tuple(device["level_scale"])
            d["extra"] = tuple(tuple(kv) for kv in d.get("extra", ()))
            if d.get("costs") is not None:
                d["costs"] = ComponentCosts.from_dict(d["costs"])
            return cls(device=DeviceModel(**device), **d)
        except (KeyError, TypeError) as e:
            raise TargetError(f"target record is malformed ({e}); it must come from TargetSpec.to_dict()") from e
