"""estimate_cost: energy (pJ), latency (ns) and area (mm^2) of every matrix product, per input vector (token).

Rule, for a mapped `[K, N]` product on a `TileGrid` with `c` input cycles (`Precision.input_cycles`: 1 where
the DAC applies every input bit at once, else `m = ceil((input_bits - 1) / dac_bits)` magnitude cycles, twice for
two-phase inputs and plus a sign cycle for two's complement, as the simulator applies them; DESIGN.md, Numerics
5-8), from the target's `ComponentCosts`:

- array reads      = arrays * c                         x array read energy (scaled to rows x cols)
- DAC drives       = K * col_tiles * c                  x DAC energy (scaled to dac_bits)
- ADC conversions  = physical_cols * row_tiles * c      x ADC energy (scaled to adc_bits)
- shift-and-adds   = ADC conversions                    x shift-and-add energy
- input buffer     = K * ceil(input_bits/8) bytes; output buffer = N outputs + partial sums of the
  row tiles (4 bytes each); interconnect = the input to each macro + partial sums + outputs.
- latency of one copy = max(c * cycle, transfer over the macros' links) + accumulation (log2 of
  the row tiles, digital clock); `cycle` is the slower of the array read clock and the ADCs
  converting every column; transfers overlap compute as a pipeline stage of their own.
- area = the op's arrays with their DACs and ADCs, plus the periphery of the macros it occupies.
- programming energy = every used cell written once (static weights: once per deployment).
- mapped dynamic products (attention, `map_dynamic`): the read terms above once per head, plus the
  operand's cell writes per token (`dynamic_writes`): every head's cells once per inference of
  `seq_len` tokens, 1/seq_len of them per token, with their write time; lifetime = the cells' endurance.

A convolution sends one input vector per output position through its arrays, so its figures
per token (per example: one image, one sequence) are the per-vector counts and latency times its
output positions (`MatmulInfo.vectors`, read from the node's output shape); its weights are
read once per example, not once per position, on the digital baseline.

The mapped ops run as a pipeline (one stage per dataflow level, `allocate`): a token's latency
is the sum of the stages' slowest ops, and a new token enters every `max(latency / duplicates)`
ns, set by the bottleneck op. Digital matrix products are costed on the target's
`DigitalBaseline`, and each mapped op carries what it would cost there too, so the report can
state the ratio. Every other digital op (norms, softmax, activations, residual adds) is costed on
the same baseline as memory traffic: its output, per token at the captured shapes, read once and
written once; that time adds to the token's latency (`other_digital_*` in the results).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from nvcc_pt.passes.find_matmuls import size_hint as _hint
from nvcc_pt.targets.costs import READ_COMPONENTS, WRITE_COMPONENTS, costs_for, get_baseline, scaled
from torch import fx

from nvcc_pt import meta
from nvcc_pt.conv import CONV_OPS
from nvcc_pt.errors import CostModelError, DuplicationError
from nvcc_pt.meta import CostInfo, MatmulKind
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass, is_mapped

PSUM_BYTES = 4  # a partial sum leaves its macro as a 32-bit integer
COMPONENTS = ("array", "dac", "adc", "shift_add", "input_buffer", "output_buffer", "interconnect", "programming")


def input_encoding(target) -> str:
    """How the target streams signed inputs through its DAC (`TargetSpec.extra['input_encoding']`)."""
    return dict(target.extra).get("input_encoding", "two-phase")


def op_counts(grid: meta.TileGrid, prec: meta.Precision, macros: int, encoding: str = "two-phase") -> dict[str, float]:
    """Events per token for one copy of a mapped op (what each component's energy is multiplied by)."""
    c = prec.input_cycles(encoding)
    conversions = grid.physical_cols * grid.row_tiles * c
    in_bytes = grid.k * math.ceil(prec.input_bits / 8)
    out_bytes = grid.n * math.ceil(prec.input_bits / 8)
    psum_bytes = grid.n * PSUM_BYTES * (grid.row_tiles - 1)
    return {
        "input_cycles": c, "array_reads": grid.arrays * c, "dac_drives": grid.k * grid.col_tiles * c,
        "adc_conversions": conversions, "shift_adds": conversions, "input_bytes": in_bytes,
        "output_bytes": out_bytes + psum_bytes, "interconnect_bytes": in_bytes * macros + psum_bytes + out_bytes,
        "cells": grid.cells_used,
    }


def op_arrays(node: fx.Node) -> int:
    """Arrays one copy of a mapped op occupies: its grid, once per head for a dynamic product."""
    return node.meta[meta.TILES].arrays * node.meta[meta.MATMUL].instances


def _macros(arrays: int, per_macro: int) -> int:
    return -(-arrays // per_macro)


def op_latency_ns(grid: meta.TileGrid, prec: meta.Precision, target) -> float:
    """Time one copy of a mapped op takes for one token: input cycles, accumulation, transfer."""
    costs = costs_for(target)
    costs.require(READ_COMPONENTS, target.name, "crossbar reads")
    s = scaled(costs, target, prec.adc_bits, prec.dac_bits)
    counts = op_counts(grid, prec, _macros(grid.arrays, target.arrays_per_macro), input_encoding(target))
    accumulate = (math.ceil(math.log2(grid.row_tiles)) + 1) * 1000.0 / costs.digital_clock_mhz
    macros = _macros(grid.arrays, target.arrays_per_macro)
    bandwidth = (costs.interconnect_bandwidth_gb_s or math.inf) * macros  # each macro has its own link
    transfer = counts["interconnect_bytes"] / bandwidth
    # Data movement is a pipeline stage of its own (ISAAC Fig. 4b: eDRAM read, crossbar, ADC, shift-and-add),
    # so it overlaps the input cycles; only the slower of the two sets the op's time.
    return max(counts["input_cycles"] * s.cycle_ns, transfer) + accumulate


def dynamic_writes(info: meta.MatmulInfo, grid: meta.TileGrid, costs) -> dict[str, float]:
    """Cell writes of a mapped dynamic product (its operand written per input), from the tile record.

    One inference is one sequence of `info.seq_len` tokens: every used cell of every head's grid
    is written once, so `cells` per inference = heads * K * N * S * P, and each token adds 1/seq_len
    of it (one column of K^T, one row of V). Each array writes its rows one after another (columns in
    parallel, arrays in parallel): `min(K, rows)` row writes per inference, before the reads that need them.
    A cell is written once per inference, so the endurance-limited lifetime is the endurance in inferences.
    """
    cells = grid.cells_used * info.instances
    row_writes = min(grid.k, grid.rows)
    return {
        "cells_per_inference": cells, "cells_per_token": cells / info.seq_len,
        "energy_pj": cells / info.seq_len * costs.cell_write_energy_pj,
        "latency_ns": row_writes * costs.cell_write_latency_ns / info.seq_len,
        "lifetime_inferences": costs.cell_endurance_cycles,
    }


def mapped_cost(node: fx.Node, target, duplicates: int = 1) -> CostInfo:
    info: meta.MatmulInfo = node.meta[meta.MATMUL]
    grid: meta.TileGrid = node.meta[meta.TILES]
    prec: meta.Precision = node.meta[meta.PRECISION]
    costs = costs_for(target)
    costs.require(READ_COMPONENTS, target.name, "crossbar reads")
    s = scaled(costs, target, prec.adc_bits, prec.dac_bits)
    macros = _macros(grid.arrays, target.arrays_per_macro)
    n = {k: v * (info.vectors if k != "cells" else 1) for k, v in op_counts(grid, prec, macros, input_encoding(target)).items()}
    heads = info.instances  # a dynamic product reads every head's grid per token; a static one has one
    energy = {
        "array": n["array_reads"] * s.array_read_pj * heads,
        "dac": n["dac_drives"] * s.dac_pj * heads,
        "adc": n["adc_conversions"] * s.adc_pj * heads,
        "shift_add": n["shift_adds"] * costs.shift_add_energy_pj * heads,
        "input_buffer": n["input_bytes"] * costs.input_buffer_energy_pj_per_byte * heads,
        "output_buffer": n["output_bytes"] * costs.output_buffer_energy_pj_per_byte * heads,
        "interconnect": n["interconnect_bytes"] * costs.interconnect_energy_pj_per_byte * heads,
    }
    programming = None
    writes: dict[str, float] = {}
    latency = op_latency_ns(grid, prec, target) * info.vectors  # heads run in parallel on their own arrays
    if info.kind is MatmulKind.DYNAMIC:  # the operand is written on every input: part of the per-token cost
        costs.require(WRITE_COMPONENTS, target.name, f"mapped dynamic product {node.name!r} (written per input)")
        writes = dynamic_writes(info, grid, costs)
        energy["programming"] = writes["energy_pj"]
        latency += writes["latency_ns"]
        n["cell_writes"] = writes["cells_per_token"]
        programming = 0.0
    elif costs.cell_write_energy_pj is not None:
        programming = n["cells"] * duplicates * costs.cell_write_energy_pj
    per_array = s.array_mm2 + target.rows * s.dac_mm2 + costs.adcs_per_array * s.adc_mm2
    per_macro = (costs.shift_add_area_mm2 or 0.0) + (costs.buffer_area_mm2 or 0.0) + (costs.interconnect_area_mm2 or 0.0)
    arrays = grid.arrays * heads * duplicates
    area = {"arrays": arrays * s.array_mm2, "dac": arrays * target.rows * s.dac_mm2,
            "adc": arrays * costs.adcs_per_array * s.adc_mm2,
            "periphery": _macros(arrays, target.arrays_per_macro) * per_macro}
    assert abs(sum(area.values()) - (arrays * per_array + _macros(arrays, target.arrays_per_macro) * per_macro)) < 1e-9
    base = get_baseline(costs.digital_baseline)
    macs = info.macs * heads
    # A static weight streams from memory once per example on the baseline; a dynamic operand is an
    # activation already at hand.
    weight_bytes = info.k * info.n * base.bytes_per_weight if info.kind is MatmulKind.STATIC else 0.0
    return CostInfo(
        energy_pj=sum(energy.values()), latency_ns=latency, area_mm2=sum(area.values()),
        breakdown_pj=tuple(energy.items()), on="cim", duplicates=duplicates, macs=macs,
        programming_energy_pj=programming, area_breakdown_mm2=tuple(area.items()),
        baseline_energy_pj=base.energy_pj(macs, weight_bytes), baseline_latency_ns=base.latency_ns(macs, weight_bytes),
        counts=tuple((k, float(v)) for k, v in n.items()),
        write_energy_pj=writes.get("energy_pj", 0.0), write_latency_ns=writes.get("latency_ns", 0.0),
        cell_writes_per_inference=int(writes.get("cells_per_inference", 0)),
        lifetime_inferences=writes.get("lifetime_inferences"),
    )


def digital_macs(node: fx.Node, tokens: int = 1) -> int:
    """Multiply-accumulates per token of a digital product: `MatmulInfo.macs` for a static one (a static
    product of no `[K, N]` form, such as an einsum, at the captured shapes over the captured `tokens`); for a
    dynamic one (attention) the product over the captured sequence, per query row: heads * S_k * d (twice
    for SDPA)."""
    info: meta.MatmulInfo = node.meta[meta.MATMUL]
    if info.kind is MatmulKind.STATIC and info.macs == 0:
        return round(_captured_macs(node) / tokens)
    if info.kind is MatmulKind.STATIC or node.target in CONV_OPS:
        return info.macs
    try:
        a, b = ([_hint(d) for d in arg.meta["val"].shape] for arg in node.args[:2])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return 0
    if None in a or None in b:
        return 0
    heads = math.prod(a[1:-2]) if len(a) > 2 else 1
    if "scaled_dot_product_attention" in info.op:
        return int(2 * heads * b[-2] * a[-1])  # QK^T and AV, one query row
    return int(heads * a[-1] * b[-1])


def _dims(node) -> list[int | None]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return [_hint(d) for d in val.shape] if isinstance(val, torch.Tensor) else [None]


def _captured_macs(node: fx.Node) -> int:
    """Multiply-accumulates of a matmul-like node at the captured shapes (0 where a size is unknown)."""
    if node.target is torch.ops.aten.einsum.default:
        equation, operands = node.args[0].replace(" ", ""), node.args[1]
        if "..." in equation:
            return 0
        sizes: dict[str, int | None] = {}
        for term, operand in zip(equation.split("->")[0].split(","), operands):
            sizes.update(zip(term, _dims(operand)))
        values = list(sizes.values())  # every index, summed or kept, is one loop of the product
    else:
        left = node.args[1] if node.target in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default) \
            else node.args[0]
        values = [*_dims(node), _dims(left)[-1]]  # every output element sums over the contraction
    return 0 if None in values else math.prod(values)


_SHAPE_ONLY = ("getitem", "sym_size", "_assert", "view", "reshape", "unsqueeze", "squeeze", "expand", "transpose",
               "permute", "slice", "alias", "detach", "_unsafe_view", "t.default", "select", "split")


def captured_tokens(gm: fx.GraphModule) -> int:
    """Tokens in the captured example, from the first input: token ids `[batch, seq]` count every element;
    feature inputs `[batch, ..., features]` all but the last; an image or signal into a convolution
    `[batch, channels, *spatial]` is one token per example (a convolution's costs are per example)."""
    convs = any(node.target in CONV_OPS for node in gm.graph.nodes)
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or not isinstance(val, torch.Tensor):
            continue
        dims = [_hint(d) for d in val.shape]
        if None in dims or not dims:
            continue
        feature_dims = dims[:1] if convs else dims[:-1] or [1]
        return max(math.prod(dims if not val.is_floating_point() else feature_dims), 1)
    return 1


def other_digital_bytes(gm: fx.GraphModule) -> float:
    """Bytes per token that digital ops other than matrix products read and write (output read once,
    written once), at the captured shapes divided by the captured tokens. Views and shape ops move nothing."""
    total = 0.0
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor):
            continue
        dims = [_hint(d) for d in val.shape]
        if None in dims or meta.MATMUL in node.meta or any(s in str(node.target) for s in _SHAPE_ONLY):
            continue
        total += 2 * math.prod(dims) * val.element_size()
    return total / captured_tokens(gm)


def digital_cost(node: fx.Node, target, tokens: int = 1) -> CostInfo:
    """A digital product's cost on the target's baseline; `tokens`: tokens in the captured example."""
    base = get_baseline(costs_for(target).digital_baseline)
    info: meta.MatmulInfo = node.meta[meta.MATMUL]
    macs = digital_macs(node, tokens)
    weight_bytes = info.k * info.n * base.bytes_per_weight if info.kind is MatmulKind.STATIC else 0.0
    energy, latency = base.energy_pj(macs, weight_bytes), base.latency_ns(macs, weight_bytes)
    return CostInfo(energy_pj=energy, latency_ns=latency, area_mm2=0.0, breakdown_pj=(("digital", energy),),
                    on=base.name, macs=macs, baseline_energy_pj=energy, baseline_latency_ns=latency)


def chip_area_mm2(target) -> float:
    """Area of one full chip of the target: every array with its DACs and ADCs, every macro's periphery."""
    costs = costs_for(target)
    s = scaled(costs, target, target.adc_bits, target.dac_bits)
    per_array = s.array_mm2 + target.rows * s.dac_mm2 + costs.adcs_per_array * s.adc_mm2
    per_macro = (costs.shift_add_area_mm2 or 0.0) + (costs.buffer_area_mm2 or 0.0) + (costs.interconnect_area_mm2 or 0.0)
    return target.arrays_per_chip * per_array + target.macros_per_chip * per_macro


# --- weight duplication (used by allocate) ---------------------------------------------------------------

def _end_array(arrays: list[int], per_macro: int) -> int:
    """Arrays reserved when ops are placed in order, each starting on a fresh macro (as allocate does)."""
    end = 0
    for a in arrays:
        end = -(-end // per_macro) * per_macro + a
    return end


def plan_duplicates(gm: fx.GraphModule, ctx: PassContext) -> dict[str, int]:
    """Copies per mapped op. `ctx.duplicate`: False (one each), True (balance the pipeline greedily: give
    the bottleneck op another copy while it fits, up to `ctx.tokens` copies), or {node/module glob: copies} (exactly those).

    Capacity is the target's fixed chips, or the chips the model needs without duplication, so
    duplication never adds a chip; copies only shorten an op's interval, so the pipeline never slows.
    """
    request = getattr(ctx, "duplicate", False)
    if not request:
        return {}
    target = ctx.target
    nodes = [n for n in gm.graph.nodes if is_mapped(n)]
    arrays = [op_arrays(n) for n in nodes]
    per_macro, per_chip = target.arrays_per_macro, target.arrays_per_chip
    base_end = _end_array(arrays, per_macro)
    chips = target.chips if target.chips is not None else -(-base_end // per_chip)
    capacity = chips * per_chip
    dup = [1] * len(nodes)
    written = [n.meta[meta.MATMUL].kind is MatmulKind.DYNAMIC for n in nodes]
    if isinstance(request, dict):
        for pattern, copies in request.items():
            if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
                raise DuplicationError(f"duplicate[{pattern!r}]={copies!r} must be a positive integer count of copies")
            hits = [i for i, n in enumerate(nodes) if not written[i] and (
                fnmatch.fnmatchcase(n.name, pattern) or fnmatch.fnmatchcase(n.meta[meta.MATMUL].module, pattern))]
            if not hits:
                raise DuplicationError(f"duplicate names {pattern!r}, which matches no mapped op that can be copied; "
                                       "use a node name or module glob from the report (dynamic products, written "
                                       "per input, are not duplicated: every copy would be written too)")
            for i in hits:
                dup[i] = copies
        need = _end_array([a * d for a, d in zip(arrays, dup)], per_macro)
        if need > capacity:
            raise DuplicationError(
                f"the requested copies need {need} arrays but {chips} chip(s) of target {target.name!r} hold {capacity} "
                f"({per_chip} each); ask for fewer copies, use duplicate=True to fit them automatically, or "
                f"target.replace(chips={-(-need // per_chip)})")
        return {n.name: d for n, d in zip(nodes, dup)}
    if request is not True:
        raise DuplicationError(f"duplicate={request!r}; use False, True or a dict {{op or module glob: copies}}")
    # More copies than tokens in flight would sit idle: a prefill of T tokens keeps at most T copies busy.
    most = max(getattr(ctx, "tokens", 1), 1)
    latency = [op_latency_ns(n.meta[meta.TILES], n.meta[meta.PRECISION], target) * n.meta[meta.MATMUL].vectors
               for n in nodes]
    while nodes:
        worst = max(range(len(nodes)), key=lambda i: latency[i] / dup[i])
        if dup[worst] >= most or written[worst]:  # a copy of a written operand is written too: no gain
            break
        dup[worst] += 1
        if _end_array([a * d for a, d in zip(arrays, dup)], per_macro) > capacity:
            dup[worst] -= 1  # the bottleneck cannot get another copy: nothing else would shorten the interval
            break
    return {n.name: d for n, d in zip(nodes, dup)}


# --- the pass ------------------------------------------------------------------------------------------

def pipeline_summary(gm: fx.GraphModule, tokens: int = 1, other_digital_ns: float = 0.0) -> dict[str, Any]:
    """Pipeline figures from the per-op costs: latency of one token, interval, bottleneck, totals for `tokens`."""
    stage_max: dict[int, float] = {}
    bottleneck, interval = None, 0.0
    digital_ns = other_digital_ns
    for node in gm.graph.nodes:
        cost: CostInfo | None = node.meta.get(meta.COST)
        if cost is None:
            continue
        if cost.on != "cim":
            digital_ns += cost.latency_ns
            continue
        stage = node.meta[meta.PLACEMENT].stage
        stage_max[stage] = max(stage_max.get(stage, 0.0), cost.latency_ns)
        if cost.latency_ns / cost.duplicates > interval:
            interval = cost.latency_ns / cost.duplicates
            bottleneck = node.meta.get("nvcc_pt.lowered_from", node.name)
    fill = sum(stage_max.values())
    return {
        "pipeline_latency_ns": fill, "pipeline_interval_ns": interval, "bottleneck": bottleneck or "",
        "digital_latency_ns": digital_ns, "tokens": tokens,
        "latency_ns": fill + max(tokens - 1, 0) * interval + tokens * digital_ns,
    }


@graph_pass(requires=(meta.TILES, meta.PLACEMENT, meta.PRECISION), provides=(meta.COST,))
def estimate_cost(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    target = ctx.target
    tokens = getattr(ctx, "tokens", 1)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise CostModelError(f"tokens={tokens!r} must be a positive integer (input vectors per inference)")
    captured = captured_tokens(gm)
    for node in ctx.nodes(gm, key=meta.MATMUL):
        if is_mapped(node):
            node.meta[meta.COST] = mapped_cost(node, target, node.meta[meta.PLACEMENT].duplicates)
        else:
            node.meta[meta.COST] = digital_cost(node, target, captured)
    base = get_baseline(costs_for(target).digital_baseline)
    other = other_digital_bytes(gm)
    other_ns = base.latency_ns(0, other)
    ctx.results.update(other_digital_bytes=other, other_digital_energy_pj=base.energy_pj(0, other),
                       other_digital_latency_ns=other_ns)
    ctx.results.update(pipeline_summary(gm, tokens, other_ns))
    ctx.results["chip_area_mm2"] = chip_area_mm2(target)
    return PassResult(gm, modified=False)


def compare_with_baseline(report) -> dict[str, Any]:
    """CiM cost of the mapped ops against the same products on the target's digital baseline, per token.

    `report` is a `MappingReport` (or its dict). For an OVT bank search compiled as one
    `nn.Linear(D, num_ovts)`, this is the retrieval's cost: NVCiM-PT states its retrieval is up to
    120x faster and 60x more energy-efficient than a Jetson Orin CPU.

    Example:
        >>> cm = nvcc_pt.compile(nn.Linear(D, n_ovts), "fefet-64x64", example_inputs=(torch.randn(1, D),))
        >>> compare_with_baseline(cm.report)["energy_ratio"]
    """
    data = report.to_dict() if hasattr(report, "to_dict") else report
    mapped = [o for o in data["ops"] if o["mapped"]]
    if not mapped:
        raise CostModelError("the report has no mapped op to compare; compile with a policy that maps the product")
    cim_e = sum(o["energy_pj"] for o in mapped)
    base_e = sum(o["baseline_energy_pj"] for o in mapped)
    cim_t = data["totals"]["pipeline_latency_ns"]
    base_t = sum(o["baseline_latency_ns"] for o in mapped)
    prog = [o["programming_energy_pj"] for o in mapped]
    return {
        "baseline": data["totals"]["baseline"], "macs": sum(o["macs"] for o in mapped),
        "cim_energy_pj": cim_e, "baseline_energy_pj": base_e, "energy_ratio": base_e / cim_e if cim_e else math.inf,
        "cim_latency_ns": cim_t, "baseline_latency_ns": base_t, "speedup": base_t / cim_t if cim_t else math.inf,
        "write_all_energy_pj": None if None in prog else sum(prog),
        # Updating one stored vector (one OVT of a bank) rewrites one output's columns.
        "update_energy_pj_per_output": None if None in prog else sum(prog) / sum(o["n"] for o in mapped),
        "area_mm2": sum(o["area_mm2"] for o in mapped),
    }
