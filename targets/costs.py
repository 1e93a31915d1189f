"""Per-component hardware cost figures of a CiM target, and the digital baseline it is compared with.

`ComponentCosts` holds energy, area and speed figures for one reference design (array size,
ADC and DAC bits, technology node) and scales them to the target being estimated:

- array read energy and area with the number of cells (`rows * cols`),
- ADC energy and area as `2 ** (bits - ref_bits)` (Walden's figure of merit: energy per
  conversion step is constant, R. H. Walden, IEEE JSAC 17(4), 1999; ISAAC Sec. VII scales
  its SAR ADC the same way for the capacitive DAC, which dominates),
- DAC energy and area with the number of output levels `2 ** bits - 1` (a 1-bit DAC is a
  driver, ISAAC Sec. V; a multi-bit one drives proportionally more levels),
- CMOS periphery with the technology node (`at_node`): energy ~ node, area ~ node^2, the
  first-order constant-field scaling rule (Dennard et al., IEEE JSSC 9(5), 1974). Cell
  figures (array read, cell write) are device properties and do not scale.

Every preset's numbers cite their source next to them. A figure may be `None` ("not
known"); `estimate_cost` then fails only when the target actually uses that component.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nvcc_pt.errors import CostModelError

# Components a mapped static product always uses (cell writes only when weights change).
READ_COMPONENTS = ("array_read_energy_pj", "dac_energy_pj", "adc_energy_pj_per_conversion", "shift_add_energy_pj",
                   "input_buffer_energy_pj_per_byte", "output_buffer_energy_pj_per_byte",
                   "interconnect_energy_pj_per_byte")
WRITE_COMPONENTS = ("cell_write_energy_pj", "cell_write_latency_ns")


@dataclass(frozen=True)
class DigitalBaseline:
    """A digital processor that runs the digital ops and that the mapped ops are compared with.

    A product of `macs` multiply-accumulates whose weights (`weight_bytes`) stream from memory
    takes `max(macs / mac_rate, weight_bytes / bandwidth)` (the roofline; one token's
    matrix-vector product is memory-bound) at `power_w` the whole time.
    """

    name: str
    macs_per_s: float
    """Sustained multiply-accumulates per second."""
    memory_bandwidth_gb_s: float
    """DRAM bandwidth, GB/s."""
    power_w: float
    """Power while it computes, W."""
    bytes_per_weight: float
    """Bytes each weight takes in memory (4 for fp32)."""
    source: str

    def __post_init__(self) -> None:
        for name in ("macs_per_s", "memory_bandwidth_gb_s", "power_w", "bytes_per_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CostModelError(f"digital baseline {self.name!r}: {name}={value!r} must be a finite number > 0")

    def latency_ns(self, macs: float, weight_bytes: float) -> float:
        return max(macs / self.macs_per_s, weight_bytes / (self.memory_bandwidth_gb_s * 1e9)) * 1e9

    def energy_pj(self, macs: float, weight_bytes: float) -> float:
        return self.power_w * self.latency_ns(macs, weight_bytes) * 1e3  # W x ns = nJ -> pJ

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# NVIDIA Jetson AGX Orin data sheet (DS-10662-001): 12-core Arm Cortex-A78AE at up to 2.2 GHz,
# 204.8 GB/s LPDDR5, module power modes 15-60 W. Each A78 core has two 128-bit NEON pipes
# (Arm Cortex-A78 Software Optimization Guide): 8 fp32 FMAs per cycle -> 12 x 2.2e9 x 8 = 211 GMAC/s peak.
# Power is the 15 W mode, the lowest module budget in which the CPU runs (the CPU alone draws less;
# the comparison is against the module, as NVCiM-PT compares against the Orin's CPU).
JETSON_ORIN_CPU = DigitalBaseline(
    name="jetson-orin-cpu", macs_per_s=12 * 2.2e9 * 8, memory_bandwidth_gb_s=204.8, power_w=15.0, bytes_per_weight=4,
    source="NVIDIA Jetson AGX Orin data sheet DS-10662-001 (12x Cortex-A78AE @ 2.2 GHz, 204.8 GB/s, 15 W mode)",
)
# Same data sheet: 2048-core Ampere GPU at up to 1.3 GHz (2048 x 1.3e9 = 2.66 TMAC/s fp32), 60 W maximum mode.
JETSON_ORIN_GPU = DigitalBaseline(
    name="jetson-orin-gpu", macs_per_s=2048 * 1.3e9, memory_bandwidth_gb_s=204.8, power_w=60.0, bytes_per_weight=2,
    source="NVIDIA Jetson AGX Orin data sheet DS-10662-001 (2048 CUDA cores @ 1.3 GHz, fp16 weights, 60 W mode)",
)
BASELINES: dict[str, DigitalBaseline] = {b.name: b for b in (JETSON_ORIN_CPU, JETSON_ORIN_GPU)}


def get_baseline(name: str) -> DigitalBaseline:
    if name not in BASELINES:
        raise CostModelError(f"unknown digital baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name]


@dataclass(frozen=True)
class ComponentCosts:
    """Energy, area and speed of each CiM component, for the reference design named by the `ref_*` fields.

    Example:
        >>> costs = ISAAC_COSTS.replace(adc_energy_pj_per_conversion=1.0).at_node(22)
    """

    source: str
    """Where the figures come from."""
    tech_node_nm: float
    """CMOS technology node the periphery figures are for, nm."""
    ref_rows: int
    """Array rows the array figures are for."""
    ref_cols: int
    """Array columns the array figures are for."""
    ref_adc_bits: int
    """ADC resolution the ADC figures are for."""
    ref_dac_bits: int
    """DAC resolution the DAC figures are for."""
    array_read_energy_pj: float | None
    """One read of one whole array for one input cycle (all rows driven, all columns sensed), pJ."""
    array_area_mm2: float | None
    """One array, mm^2."""
    dac_energy_pj: float | None
    """One row driver (DAC) for one input cycle, pJ."""
    dac_area_mm2: float | None
    """One row driver (DAC), mm^2."""
    adc_energy_pj_per_conversion: float | None
    """One ADC conversion of one column's partial sum, pJ."""
    adc_area_mm2: float | None
    """One ADC, mm^2."""
    adc_rate_msps: float | None
    """Conversions per second of one ADC, mega-samples/s."""
    adcs_per_array: float
    """ADCs serving one array's columns (ISAAC: one 1.28 GSps ADC per 128-column array)."""
    shift_add_energy_pj: float | None
    """One digital shift-and-add of one converted partial sum, pJ."""
    shift_add_area_mm2: float | None
    """Shift-and-add units of one macro, mm^2."""
    input_buffer_energy_pj_per_byte: float | None
    """Reading one byte of input activations from the macro's input buffer, pJ/byte."""
    output_buffer_energy_pj_per_byte: float | None
    """Writing one byte of outputs (or partial sums) to the output buffer, pJ/byte."""
    buffer_area_mm2: float | None
    """Input and output buffers of one macro, mm^2."""
    interconnect_energy_pj_per_byte: float | None
    """Moving one byte between macros (bus and router), pJ/byte."""
    interconnect_bandwidth_gb_s: float | None
    """Bandwidth into one macro, GB/s."""
    interconnect_area_mm2: float | None
    """Interconnect share of one macro (bus, router), mm^2."""
    digital_clock_mhz: float
    """Clock of the digital periphery (shift-and-add, accumulation), MHz."""
    cell_write_energy_pj: float | None = None
    """Programming one cell (write and verify), pJ; needed when weights are written at run time."""
    cell_write_latency_ns: float | None = None
    """Programming one row of cells (columns written in parallel), ns."""
    cell_endurance_cycles: float | None = None
    """Writes a cell survives (program/erase cycles); bounds the life of cells rewritten per input."""
    digital_baseline: str = "jetson-orin-cpu"
    """Name of the `DigitalBaseline` that digital ops run on and mapped ops are compared with."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("source", "digital_baseline") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CostModelError(f"cost figure {f.name}={value!r} must be a finite number >= 0 "
                                     f"(source: {self.source or 'unnamed'}); fix the figure or leave it None if unknown")
        for name in ("tech_node_nm", "ref_rows", "ref_cols", "ref_adc_bits", "ref_dac_bits", "adcs_per_array",
                     "digital_clock_mhz"):
            if not getattr(self, name) > 0:
                raise CostModelError(f"cost figure {name}={getattr(self, name)!r} must be > 0")
        if not isinstance(self.digital_baseline, str) or self.digital_baseline not in BASELINES:
            raise CostModelError(f"digital_baseline={self.digital_baseline!r} is unknown; choose one of {sorted(BASELINES)}")

    def replace(self, **changes: Any) -> ComponentCosts:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise CostModelError(f"ComponentCosts has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def at_node(self, node_nm: float) -> ComponentCosts:
        """The figures moved to another CMOS node: periphery energy ~ node, area ~ node^2 (cells unchanged)."""
        if not node_nm > 0:
            raise CostModelError(f"technology node {node_nm!r} nm must be > 0")
        s = node_nm / self.tech_node_nm
        energy = ("dac_energy_pj", "adc_energy_pj_per_conversion", "shift_add_energy_pj",
                  "input_buffer_energy_pj_per_byte", "output_buffer_energy_pj_per_byte", "interconnect_energy_pj_per_byte")
        area = ("dac_area_mm2", "adc_area_mm2", "shift_add_area_mm2", "buffer_area_mm2", "interconnect_area_mm2")
        changes: dict[str, Any] = {n: getattr(self, n) * s for n in energy if getattr(self, n) is not None}
        changes.update({n: getattr(self, n) * s * s for n in area if getattr(self, n) is not None})
        return dataclasses.replace(self, tech_node_nm=float(node_nm), **changes)

    def require(self, names: tuple[str, ...], target_name: str, why: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise CostModelError(f"target {target_name!r} uses {why} but its cost figures lack {missing}; "
                                 f"give them with target.replace(costs=costs.replace({missing[0]}=...))")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComponentCosts:
        try:
            return cls(**d)
        except TypeError as e:
            raise CostModelError(f"cost record is malformed ({e}); it must come from ComponentCosts.to_dict()") from e


@dataclass(frozen=True)
class ScaledCosts:
    """`ComponentCosts` resolved for one target's geometry and one op's ADC/DAC bits (per-event figures)."""

    array_read_pj: float
    array_mm2: float
    dac_pj: float
    dac_mm2: float
    adc_pj: float
    adc_mm2: float
    cycle_ns: float
    """One input cycle of one array: the slower of the array read clock and the ADCs converting every column."""


def scaled(costs: ComponentCosts, target, adc_bits: int, dac_bits: int) -> ScaledCosts:
    cells = (target.rows * target.cols) / (costs.ref_rows * costs.ref_cols)
    adc = 2.0 ** (adc_bits - costs.ref_adc_bits)
    dac = (2**dac_bits - 1) / (2**costs.ref_dac_bits - 1)
    read_ns = 1000.0 / target.clock_mhz
    convert_ns = target.cols / (costs.adcs_per_array * costs.adc_rate_msps) * 1000.0 if costs.adc_rate_msps else 0.0
    return ScaledCosts(
        array_read_pj=costs.array_read_energy_pj * cells, array_mm2=(costs.array_area_mm2 or 0.0) * cells,
        dac_pj=costs.dac_energy_pj * dac, dac_mm2=(costs.dac_area_mm2 or 0.0) * dac,
        adc_pj=costs.adc_energy_pj_per_conversion * adc, adc_mm2=(costs.adc_area_mm2 or 0.0) * adc,
        cycle_ns=max(read_ns, convert_ns),
    )


# --- ISAAC (Shafiee et al., ISCA 2016), Table I, 32 nm, 100 ns crossbar read, 1.2 GHz digital ------------
# Table I gives power and area per component; energies below are power x the 100 ns cycle / events
# per cycle, per IMA of 8 arrays (128x128, 2-bit cells), 1024 1-bit DACs and 8 ADCs:
#   memristor arrays 2.4 mW / 8 arrays            -> 30 pJ per array read;   0.0002 mm2 / 8 arrays
#   DAC 4 mW / (8 x 128)                           -> 0.39 pJ per row-cycle;  0.00017 mm2 / 1024
#   ADC 8-bit 16 mW / (8 ADCs x 128 conversions)   -> 1.5625 pJ/conversion;  0.0096 mm2 / 8 = 0.0012 mm2
#     (one 1.28 GSps ADC converts an array's 128 columns in one 100 ns cycle, Sec. V)
#   S+H 10 uW (folded into the ADC: 0.001 pJ/conversion, under the ADC figure's precision)
#   S+A 0.2 mW / (8 ADCs x 1.28 GS/s)              -> 0.0195 pJ per shift-and-add; 0.00024 mm2 per IMA
#   IR 2 KB 1.24 mW, OR 256 B 0.23 mW; tile eDRAM 64 KB 20.7 mW feeding 1 KB per 100 ns (Sec. VI)
#     -> input: eDRAM 20.7 mW x 100 ns / 1024 B = 2.02 pJ/B; output: OR 0.23 mW x 100 ns / 256 B = 0.09 pJ/B
#     buffers per IMA: IR 0.0021 + OR 0.00077 + eDRAM 0.083/12 mm2 = 0.00979 mm2
#   eDRAM-to-IMA bus 7 mW, 1 KB per 100 ns -> 0.68 pJ/B; router 42 mW shared by 4 tiles;
#     interconnect per IMA: (0.090 + 0.151/4) / 12 = 0.01065 mm2; bandwidth 1 KB / 100 ns = 10.24 GB/s per tile
# ISAAC does not model weight programming (weights are loaded once), so the write figures come from
# NeuroSim (DNN+NeuroSim V1.3, Param.cpp defaults: write voltage 2 V, R_on 6 kOhm; one 10 ns pulse at
# R_on: 2^2 / 6e3 * 10e-9 s = 6.7 pJ per cell) and ~10 write-verify pulses per multi-level cell
# (a common iterative-programming budget; tune per device). Endurance: metal-oxide ReRAM cells
# survive 1e6 to 1e12 set/reset cycles across published devices (H.-S. P. Wong et al., "Metal-Oxide
# RRAM", Proc. IEEE 100(6), 2012; the 1e12 of M.-J. Lee et al., Nature Materials 10, 2011, is a single
# TaOx cell); multi-level cells under write-verify sit at the low end, so the preset takes 1e6.
ISAAC_COSTS = ComponentCosts(
    source="ISAAC (Shafiee et al., ISCA 2016) Table I at 32 nm; cell writes from NeuroSim V1.3 defaults",
    tech_node_nm=32.0, ref_rows=128, ref_cols=128, ref_adc_bits=8, ref_dac_bits=1,
    array_read_energy_pj=30.0, array_area_mm2=0.0002 / 8,
    dac_energy_pj=4.0e-3 * 100e-9 / 1024 * 1e12, dac_area_mm2=0.00017 / 1024,
    adc_energy_pj_per_conversion=16e-3 * 100e-9 / 1024 * 1e12, adc_area_mm2=0.0096 / 8, adc_rate_msps=1280.0,
    adcs_per_array=1.0,
    shift_add_energy_pj=0.2e-3 / (8 * 1.28e9) * 1e12, shift_add_area_mm2=0.00024,
    input_buffer_energy_pj_per_byte=20.7e-3 * 100e-9 / 1024 * 1e12,
    output_buffer_energy_pj_per_byte=0.23e-3 * 100e-9 / 256 * 1e12,
    buffer_area_mm2=0.0021 + 0.00077 + 0.083 / 12,
    interconnect_energy_pj_per_byte=7e-3 * 100e-9 / 1024 * 1e12, interconnect_bandwidth_gb_s=10.24,
    interconnect_area_mm2=(0.090 + 0.151 / 4) / 12,
    digital_clock_mhz=1200.0,
    cell_write_energy_pj=10 * 2.0**2 / 6e3 * 10e-9 * 1e12, cell_write_latency_ns=10 * 10.0,
    cell_endurance_cycles=1e6,
)

# NeuroSim V1.3 defaults (Param.cpp): 22 nm, 1 GHz, 128x128 sub-arrays, 2-bit cells, 8 columns share
# one 5-bit ADC (levelOutput = 32), read 0.5 V for 10 ns, R_on 6 kOhm, R_off 900 kOhm. The array read
# energy follows from those: a cell at the mean conductance (G_on + G_off) / 2 dissipates
# 0.5^2 * 8.4e-5 S * 10 ns = 0.21 pJ per read, times 128 x 128 cells = 3.4 nJ per array read.
# NeuroSim's peripheral circuit models are not reproduced here; the periphery is ISAAC's moved to
# 22 nm (`at_node`), with the ADC sharing and clock of NeuroSim's defaults.
_G_MEAN = (1 / 6e3 + 1 / 900e3) / 2
NEUROSIM_COSTS = ISAAC_COSTS.at_node(22).replace(
    source="NeuroSim V1.3 defaults (22 nm, 1 GHz, 8 columns per ADC, 0.5 V / 10 ns reads, R_on 6 kOhm) "
           "for the array; ISAAC Table I periphery scaled to 22 nm",
    array_read_energy_pj=0.5**2 * _G_MEAN * 10e-9 * 128 * 128 * 1e12, adcs_per_array=128 / 8, adc_rate_msps=1000.0 / 10,
    digital_clock_mhz=1000.0,
)




# Cell writes of the other device families (the ReRAM ones above stay with the ReRAM presets).
# PCM: a RESET melts the cell with ~100 uA for ~50-100 ns and a SET crystallizes it over ~100 ns or
# more (G. W. Burr et al., "Recent Progress in Phase-Change Memory Technology", IEEE JETCAS 6(2), 2016);
# at ~1 V across the cell one ~100 ns pulse is ~10 pJ. Endurance is ~1e8 cycles for typical cells, up to
# 1e12 for the best (H.-S. P. Wong et al., "Phase Change Memory", Proc. IEEE 98(12), 2010). With the
# same ~10 write-verify pulses per multi-level cell as ReRAM above: 100 pJ and 10 x 100 ns per row.
PCM_WRITES = {"cell_write_energy_pj": 10 * 100e-6 * 1.0 * 100e-9 * 1e12, "cell_write_latency_ns": 10 * 100.0,
              "cell_endurance_cycles": 1e8}
# FeFET: HfO2 FeFETs switch with ~10 ns gate pulses of ~4 V, and endure ~1e5 program/erase cycles
# (S. Duenkel et al., "A FeFET based super-low-power ultra-fast embedded NVM technology for 22nm FDSOI
# and beyond", IEDM 2017; M. Trentzsch et al., IEDM 2016, 28 nm). The write is a field effect: it charges
# the gate, C V^2 = ~1 fF x (4 V)^2 = 0.016 pJ per pulse (a gate capacitance of order 1 fF is an
# assumption of this model); ~10 write-verify pulses: 0.16 pJ and 10 x 10 ns per row.
FEFET_WRITES = {"cell_write_energy_pj": 10 * 1e-15 * 4.0**2 * 1e12, "cell_write_latency_ns": 10 * 10.0,
                "cell_endurance_cycles": 1e5}


def costs_for(target) -> ComponentCosts:
    """The target's own figures, or its device family's preset: ISAAC's for ReRAM (ISAAC, PRIME-style
    targets resized by `scaled`), NeuroSim's defaults for the NVCiM-PT device models, FeFET and PCM, with
    the cell-write figures of the device family (PCM, FeFET; ReRAM's otherwise)."""
    own = getattr(target, "costs", None)
    if own is not None:
        return own
    name = target.device.name
    if name == "reram":
        return ISAAC_COSTS
    if name.startswith("pcm"):
        return NEUROSIM_COSTS.replace(**PCM_WRITES)
    if name.startswith("fefet"):
        return NEUROSIM_COSTS.replace(**FEFET_WRITES)
    return NEUROSIM_COSTS
