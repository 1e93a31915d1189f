"""The `node.meta` keys the passes write, and the frozen records stored under them.

Analysis passes annotate; they never change the graph. Every record is a frozen
dataclass with tuple fields, validated where a wrong value would mislead a later stage.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

# node.meta keys, defined once.
MATMUL = "nvcc_pt.matmul"          # MatmulInfo, written by find_matmuls
SELECTION = "nvcc_pt.selection"    # Selection, written by select
PRECISION = "nvcc_pt.precision"    # Precision, written by annotate_precision
TILES = "nvcc_pt.tiles"            # TileGrid, written by partition
PLACEMENT = "nvcc_pt.placement"    # Placement, written by allocate
NOISE = "nvcc_pt.noise"            # NoiseInfo, written by annotate_noise
COST = "nvcc_pt.cost"              # CostInfo, written by estimate_cost


class MatmulKind(str, enum.Enum):
    STATIC = "static"    # one operand is a parameter or constant: weight-stationary, a CiM candidate
    DYNAMIC = "dynamic"  # both operands are activations (attention QK^T, AV)


@dataclass(frozen=True)
class MatmulInfo:
    """A matmul-like node as `find_matmuls` classified it."""

    op: str
    """ATen op name, e.g. `aten.linear.default`."""
    kind: MatmulKind
    module: str
    """Owning module path from `nn_module_stack` (`model.layers.0.mlp.up_proj`), or '' at top level."""
    module_type: str
    """Class name of the owning module (`Linear`, `Conv1D`, ...)."""
    k: int
    """Reduction size (crossbar rows needed), 0 when not known statically."""
    n: int
    """Output features (logical columns), 0 when not known statically."""
    weight: str | None = None
    """Attribute path of the stationary operand (`m.lm_head.weight`) for STATIC ops."""
    weight_transposed: bool = False
    """True when the stored operand is `[K, N]` (GPT-2 `Conv1D`, `addmm`, `x @ W`) instead of `[N, K]`."""
    bias: str | None = None
    """Attribute path of the bias, when the op adds one."""
    lowerable: bool = True
    """False when the op is static but not of the form `y = x @ W^T + b` the crossbar op implements."""
    note: str = ""
    """Why a static op is not lowerable, or other detail for the report."""
    instances: int = 1
    """Independent `[K, N]` products per input sequence (attention heads) of a DYNAMIC op, each on its own arrays."""
    seq_len: int = 0
    """For a mapped DYNAMIC op: the sequence length `k` and `n` were taken at (the captured example's); 0 otherwise."""
    seq_axis: str = ""
    """For a mapped DYNAMIC op: which of `k`, `n` grows with the sequence ("k" for AV, "n" for QK^T)."""
    vectors: int = 1
    """Input vectors per token: 1 for a linear; a convolution's output positions per example (image, sequence)."""

    @property
    def macs(self) -> int:
        """Weight multiply-accumulates per token: `k * n * vectors` (0 when the shape is not known)."""
        return self.k * self.n * self.vectors


@dataclass(frozen=True)
class Selection:
    """Whether an op goes on crossbars, and why (every digital op keeps its reason)."""

    mapped: bool
    reason: str


@dataclass(frozen=True)
class Precision:
    """Bit widths of one mapped op."""

    weight_bits: int
    input_bits: int
    cell_bits: int
    dac_bits: int
    adc_bits: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Precision.{f.name}={v!r} must be a positive integer")

    def input_cycles(self, encoding: str = "two-phase") -> int:
        """DAC cycles per input vector, as the simulator applies them (`targets.devices.input_planes`): one where
        the DAC takes every input bit at once; else `m = ceil((input_bits - 1) / dac_bits)` magnitude cycles,
        twice for `two-phase` inputs (positive entries, then negative ones) and once plus a sign cycle for
        `twos-complement`.

        Example:
            >>> Precision(8, 8, 2, 1, 8).input_cycles("two-phase"), Precision(8, 8, 2, 1, 8).input_cycles("twos-complement")
            (14, 8)
        """
        if self.dac_bits >= self.input_bits:
            return 1
        magnitude = math.ceil((self.input_bits - 1) / self.dac_bits)
        return magnitude + 1 if encoding == "twos-complement" else 2 * magnitude


@dataclass(frozen=True)
class TileGrid:
    """How a logical `[K, N]` weight lands on physical arrays (DESIGN.md, Numerics 5).

    Physical column of output `n`, sign column `p` and slice `s`: `(n * P + p) * S + s`,
    so one output's columns stay adjacent for the digital shift-and-add.
    """

    k: int
    """Logical rows (reduction size)."""
    n: int
    """Logical columns (outputs)."""
    rows: int
    """Array rows."""
    cols: int
    """Array columns."""
    slices: int
    """`S`: cell columns per weight and sign."""
    sign_columns: int
    """`P`: 2 for differential, 1 for offset."""

    @property
    def physical_cols(self) -> int:
        return self.n * self.slices * self.sign_columns

    @property
    def row_tiles(self) -> int:
        return -(-self.k // self.rows)

    @property
    def col_tiles(self) -> int:
        return -(-self.physical_cols // self.cols)

    @property
    def arrays(self) -> int:
        return self.row_tiles * self.col_tiles

    @property
    def cells_used(self) -> int:
        return self.k * self.physical_cols

    @property
    def utilization(self) -> float:
        """Fraction of the allocated arrays' cells that hold a weight slice."""
        return self.cells_used / (self.arrays * self.rows * self.cols)

    def physical_column(self, n: int, p: int, s: int) -> int:
        return (n * self.sign_columns + p) * self.slices + s

    def logical_of_column(self, col: int) -> tuple[int, int, int]:
        """Inverse of `physical_column`: `(n, p, s)`."""
        s = col % self.slices
        p = (col // self.slices) % self.sign_columns
        return col // (self.slices * self.sign_columns), p, s

    def tiles(self):
        """Yield `(row_tile, col_tile, (k0, k1), (c0, c1))`: each array's slice of the physical matrix."""
        for r in range(self.row_tiles):
            for c in range(self.col_tiles):
                yield r, c, (r * self.rows, min((r + 1) * self.rows, self.k)), (
                    c * self.cols, min((c + 1) * self.cols, self.physical_cols))


@dataclass(frozen=True)
class Placement:
    """Where an op's arrays sit in the chip -> macro -> array hierarchy.

    Arrays are numbered globally in placement order; `first_array` and `arrays` give the
    op's contiguous range, and `chips` the chips it touches.
    """

    first_array: int
    arrays: int
    chips: tuple[int, ...]
    macros: tuple[int, ...]
    """Global macro indices the op touches."""
    stage: int
    """Pipeline stage (position of the op among the mapped ops in dataflow order)."""
    duplicates: int = 1
    """Copies of the weights placed to balance the pipeline."""

    def describe(self) -> str:
        chips = f"chip {self.chips[0]}" if len(self.chips) == 1 else f"chips {self.chips[0]}-{self.chips[-1]}"
        return f"{chips}, macros {self.macros[0]}-{self.macros[-1]}, arrays {self.first_array}-{self.first_array + self.arrays - 1}"


VARIATIONS = ("per-cell", "per-weight")
"""How programming variation is drawn (`DeviceModel.variation`; docs/devices.md compares the two)."""


@dataclass(frozen=True)
class NoiseInfo:
    """The device model and parameters an op is programmed with."""

    device: str
    sigma: float
    level_sigmas: tuple[float, ...]
    read_sigma: float = 0.0
    stuck_at_gmin: float = 0.0
    stuck_at_gmax: float = 0.0
    drift_nu: float = 0.0
    variation: str = "per-cell"
    """`per-cell` (sigma per cell level, `level_sigmas`) or `per-weight` (the NVCiM-PT authors' group's model,
    `targets/devices.py`); plans written before the field existed are `per-cell`."""
    band_factor: float = 1.0
    """Device factor of `per-weight` variation on weights with |w|/max|W| in (0.25, 0.75)."""


@dataclass(frozen=True)
class CostInfo:
    """Energy, latency and area of one mapped op for one input vector (token)."""

    energy_pj: float
    latency_ns: float
    area_mm2: float
    breakdown_pj: tuple[tuple[str, float], ...] = ()
    """Energy per component, (name, pJ)."""
    on: str = "cim"
    """Where the op runs: "cim", or the digital baseline's name."""
    duplicates: int = 1
    """Copies of the weights; `latency_ns / duplicates` is the op's pipeline interval."""
    macs: int = 0
    """Multiply-accumulates per token."""
    programming_energy_pj: float | None = None
    """Writing the op's weights once (all copies), pJ; None when the target gives no cell-write figure."""
    area_breakdown_mm2: tuple[tuple[str, float], ...] = ()
    """Area per component, (name, mm^2)."""
    baseline_energy_pj: float = 0.0
    """The same product on the target's digital baseline, pJ per token."""
    baseline_latency_ns: float = 0.0
    """The same product on the target's digital baseline, ns per token."""
    counts: tuple[tuple[str, float], ...] = ()
    """Events per token the energy is made of (array reads, ADC conversions, bytes, ...)."""
    write_energy_pj: float = 0.0
    """Writing a DYNAMIC op's operand into cells, pJ per token (part of `energy_pj`); 0 for static ops."""
    write_latency_ns: float = 0.0
    """Writing a DYNAMIC op's operand, ns per token (part of `latency_ns`); 0 for static ops."""
    cell_writes_per_inference: int = 0
    """Cells a DYNAMIC op writes for one inference (one sequence of `MatmulInfo.seq_len` tokens)."""
    lifetime_inferences: float | None = None
    """Inferences until the most-written cell reaches the device's endurance; None for static ops or no figure."""


RECORD_TYPES: dict[str, type] = {
    MATMUL: MatmulInfo, SELECTION: Selection, PRECISION: Precision, TILES: TileGrid,
    PLACEMENT: Placement, NOISE: NoiseInfo, COST: CostInfo,
}


def record_to_dict(record: Any) -> dict[str, Any]:
    d = dataclasses.asdict(record)
    for key, value in d.items():
        if isinstance(value, enum.Enum):
            d[key] = value.value
    return d


def record_from_dict(key: str, d: dict[str, Any]) -> Any:
    cls = RECORD_TYPES[key]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in d.items():
        if name not in fields:
            raise KeyError(name)
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    if cls is MatmulInfo:
        kwargs["kind"] = MatmulKind(kwargs["kind"])
    return cls(**kwargs)
