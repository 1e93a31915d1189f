"""Checks of a plan document against its own schema, its graph and its tensors.

Every value read from `plan.json` goes through `from_json` (the field's type hint decides what is accepted)
before anything uses it, and `check_records` / `expected_tensors` hold the records, the captured graph and
the programmed tensors to each other: each mapped op has the records lowering needs, a tile grid that
follows from its shape and precision on this target, bounded bit widths and noise figures, and exactly the
state tensors its fidelity stores, with the dtypes and shapes the records imply.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from functools import cache
from typing import Any

import torch
from torch import fx

from nvcc_pt import meta
from nvcc_pt.errors import NvccPtError, PlanFormatError

LOWERABLE = ("aten.linear.default", "aten.addmm.default", "aten.mm.default", "aten.matmul.default",
             "aten.conv1d.default", "aten.conv1d.padding", "aten.conv2d.default", "aten.conv2d.padding",
             "aten.convolution.default")
"""The static products `passes/lower.py` rewrites, as `program.py` names them (convolutions unrolled)."""
DYNAMIC_LOWERABLE = ("aten.matmul.default",)
"""The dynamic products it rewrites (attention's QK^T and AV after `decompose_attention`)."""
MAPPED_NEEDS = (meta.MATMUL, meta.SELECTION, meta.PRECISION, meta.TILES, meta.PLACEMENT, meta.NOISE)
MAX_BITS, MAX_CELL_BITS = 24, 16
RESULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "draw_on": str, "time_s": (int, float), "tokens": int, "arrays_allocated": int, "chips_needed": int,
    "pipeline_stages": int, "bottleneck": str, "fidelity": str,
}
"""Result entries whose type later code relies on; the others need only be JSON scalars."""


def _fail(where: str, why: str) -> PlanFormatError:
    return PlanFormatError(f"{where}: {why}; the plan is corrupted or was edited, save the plan again")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_json(value: Any, hint: Any, where: str) -> Any:
    """`value` (parsed JSON) as the Python value of type `hint`, or `PlanFormatError` naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
    elif origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return from_json(value, arm, where)
            except PlanFormatError:
                continue
    elif hint is bool or hint is str:
        if type(value) is hint:
            return value
    elif hint is int:
        if type(value) is int:
            return value
    elif hint is float:
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
    elif origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(from_json(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: from_json(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            pass
    elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _dataclass(value, hint, where)
    raise _fail(where, f"{str(value)[:80]!r} is not of type {getattr(hint, '__name__', str(hint))}")


def _dataclass(value: dict[str, Any], cls: type, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in value]
    if unknown or missing:
        raise _fail(where, f"{cls.__name__} has unknown fields {unknown[:5]} / lacks {missing}")
    hints = _hints(cls)
    kwargs = {k: from_json(v, hints[k], f"{where}.{k}") for k, v in value.items()}
    try:
        return cls(**kwargs)
    except (NvccPtError, ValueError, TypeError) as e:  # the record's own validation
        raise _fail(where, f"{cls.__name__} is invalid ({e})") from e


def records_from_json(doc: Any, where: str) -> dict[str, dict[str, Any]]:
    """{node name: {meta key: record}} of `plan.json`'s `records`."""
    if not isinstance(doc, dict):
        raise _fail(f"{where} records", "must be an object of node name -> records")
    out = {}
    for name, recs in doc.items():
        if not isinstance(recs, dict) or not recs or not set(recs) <= set(meta.RECORD_TYPES):
            raise _fail(f"{where} records[{name[:60]!r}]", f"must map some of {list(meta.RECORD_TYPES)} to records")
        out[name] = {k: from_json(r, meta.RECORD_TYPES[k], f"{where} records[{name[:60]!r}][{k!r}]")
                     for k, r in recs.items()}
    return out


def results_from_json(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _fail(f"{where} results", "must be an object")
    for k, v in doc.items():
        want = RESULT_TYPES.get(k, (int, float, str, bool))
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise _fail(f"{where} results[{k[:60]!r}]", f"{str(v)[:60]!r} has the wrong type")
    if doc.get("draw_on", "cpu") not in ("cpu", "device") or doc.get("time_s", 0) < 0:
        raise _fail(f"{where} results", "draw_on must be 'cpu' or 'device' and time_s >= 0")
    return dict(doc)


def _static_source(node: fx.Node) -> bool:
    """True when the operand is computed from attributes alone (no graph input reaches it)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        stack.extend(n.all_input_nodes)
    return True


def check_records(records: dict[str, dict[str, Any]], gm: fx.GraphModule, target: Any, where: str) -> None:
    """Every record names a product of the graph; every mapped op is lowerable and its records agree."""
    from nvcc_pt.passes.partition import tile_grid
    from nvcc_pt.program import _target_name

    nodes = {n.name: n for n in gm.graph.nodes}
    for name, recs in records.items():
        here = f"{where} records[{name[:60]!r}]"
        node = nodes.get(name)
        if node is None or node.op != "call_function":
            raise PlanFormatError(f"{here} names node {name[:60]!r}, which the saved program does not have as an "
                                  "operation; the plan directory mixes files from different compiles, compile again")
        sel = recs.get(meta.SELECTION)
        if sel is None or not sel.mapped:
            continue
        missing = [k for k in MAPPED_NEEDS if k not in recs]
        if missing:
            raise _fail(here, f"the op is mapped but lacks the records {missing}")
        info, prec, grid, noise = recs[meta.MATMUL], recs[meta.PRECISION], recs[meta.TILES], recs[meta.NOISE]
        dynamic = info.kind is meta.MatmulKind.DYNAMIC
        allowed = DYNAMIC_LOWERABLE if dynamic else LOWERABLE
        if _target_name(node.target) not in allowed or not info.lowerable:
            raise _fail(here, f"the op {_target_name(node.target)} is marked mapped but is not a product that lowers "
                              f"to a crossbar ({allowed})")
        if not (0 < info.k and 0 < info.n and info.instances >= 1):
            raise _fail(here, f"k={info.k}, n={info.n}, instances={info.instances} must be positive")
        if not dynamic:
            _check_weight(gm, node, info, here)
        bits = dataclasses.asdict(prec)
        if max(bits.values()) > MAX_BITS or prec.cell_bits > MAX_CELL_BITS:
            raise _fail(here, f"bit widths {bits} exceed {MAX_BITS} (cells: {MAX_CELL_BITS})")
        try:
            target.replace(**bits)
        except NvccPtError as e:
            raise _fail(here, f"precision {bits} is not valid on {target.name} ({e})") from e
        expected = tile_grid(info.k, info.n, target, prec)
        if grid != expected:
            raise _fail(here, f"tiles {grid} do not follow from K={info.k}, N={info.n} and the precision on "
                              f"{target.name}: expected {expected}")
        if len(noise.level_sigmas) != 2 ** prec.cell_bits or min(noise.level_sigmas) < 0 or noise.sigma < 0 \
                or noise.read_sigma < 0 or noise.drift_nu < 0 \
                or not (0 <= noise.stuck_at_gmin <= 1 and 0 <= noise.stuck_at_gmax <= 1) \
                or noise.variation not in meta.VARIATIONS or not 0 <= noise.band_factor < math.inf:
            raise _fail(here, f"noise {noise} is out of bounds (sigmas >= 0, {2 ** prec.cell_bits} levels, "
                              f"probabilities in [0, 1], variation one of {meta.VARIATIONS}, band_factor >= 0)")
        place = recs[meta.PLACEMENT]
        if place.arrays < 1 or place.duplicates < 1 or place.first_array < 0 or not place.chips or not place.macros:
            raise _fail(here, f"placement {place} is out of bounds")


def _check_weight(gm: fx.GraphModule, node: fx.Node, info: meta.MatmulInfo, here: str) -> None:
    """The stationary operand comes from the program's attributes and has the recorded `[N, K]`."""
    from nvcc_pt.passes.find_matmuls import static_value
    from nvcc_pt.passes.lower import operands

    _, w, _ = operands(node)
    if not isinstance(w, fx.Node) or not _static_source(w):
        raise _fail(here, "the weight operand of a mapped op must come from the program's attributes")
    weight = static_value(gm, w)
    if weight.dim() == 2:
        shape = tuple(weight.t().shape if info.weight_transposed else weight.shape)
    else:  # a convolution's [C_out, C_in, *kernel], unrolled to [C_out, C_in * prod(kernel)]
        shape = (weight.shape[0], weight[0].numel()) if weight.dim() > 2 else None
    if shape != (info.n, info.k):
        raise _fail(here, f"the weight operand has shape {tuple(weight.shape)}, but the records say N={info.n}, "
                          f"K={info.k} (transposed: {info.weight_transposed})")


def expected_tensors(records: dict[str, dict[str, Any]], gm: fx.GraphModule, fidelity: str, calibrated: dict[str, str],
                     ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of every programmed state tensor the records imply.

    `calibrated`: {op: "op" or "column"} for calibrated ops, whose stored ADC range is `(2,)` per op or
    `(2, R, S*N)` per (row tile, column) (`cm.calibrate(per_column=True)`); other ops store none.
    """
    from nvcc_pt.passes.find_matmuls import static_value
    from nvcc_pt.passes.lower import operands
    from nvcc_pt.targets.devices import levels_dtype
    from nvcc_pt.targets.simulator import CROSSBAR

    nodes = {n.name: n for n in gm.graph.nodes}
    out = {}
    for name, recs in records.items():
        sel = recs.get(meta.SELECTION)
        if sel is None or not sel.mapped:
            continue
        info, grid = recs[meta.MATMUL], recs[meta.TILES]
        if info.kind is meta.MatmulKind.DYNAMIC:
            continue  # its operand is written per call: nothing programmed is stored
        dtype = static_value(gm, operands(nodes[name])[1]).dtype
        out[f"{name}.weight"] = (dtype, (info.n, info.k))
        out[f"{name}.scale"] = (torch.float32, (0,) if fidelity == "exact" else (info.n,))
        levels = (grid.row_tiles, grid.rows, grid.slices * info.n) if fidelity in CROSSBAR else (0,)
        stored = levels_dtype(recs[meta.PRECISION].cell_bits) if fidelity in CROSSBAR else torch.float32
        out[f"{name}.levels"] = (stored, levels)
        per_column = (2, grid.row_tiles, grid.slices * info.n) if fidelity in CROSSBAR else (0,)
        kind = calibrated.get(name)
        out[f"{name}.adc_range"] = (torch.float32, (2,) if kind == "op" else per_column if kind == "column" else (0,))
    return out
