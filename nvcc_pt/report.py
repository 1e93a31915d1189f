"""MappingReport: where every matrix product went, for a person (table, HTML) and a program (JSON).

Schema (`report.to_dict()`, version `REPORT_SCHEMA`):

    {"schema": 1,
     "model": str,                              # model class
     "target": {...},                           # TargetSpec.to_dict()
     "fidelity": str, "seed": int,
     "ops": [{"name", "module", "kind",         # kind: "static" | "dynamic"
              "mapped": bool, "reason": str,    # every digital op says why
              "k", "n",                         # logical weight [K, N] (0 when not static)
              "arrays", "row_tiles", "col_tiles", "slices", "utilization",
              "weight_bits", "input_bits", "adc_bits", "device", "sigma",
              "placement": str | None, "stage": int | None,
              "on": str | None,                 # "cim" or the digital baseline that runs the op
              "duplicates": int,                # copies of the weights (pipeline balancing)
              "macs",                           # multiply-accumulates per token (a convolution: all its positions)
              "energy_pj", "latency_ns", "area_mm2",    # per token; latency of one copy
              "energy_breakdown_pj": {component: pJ},   # array, dac, adc, shift_add, input_buffer, ...
              "programming_energy_pj": float | None,    # writing the weights once (None: no figure)
              "baseline_energy_pj", "baseline_latency_ns",  # the same product on the digital baseline
              # mapped dynamic products only (operand written per input, map_dynamic):
              "instances", "seq_len",           # heads, each on its own arrays; K or N taken at seq_len
              "write_energy_pj", "write_latency_ns",    # cell writes per token (in energy_pj / latency_ns)
              "cell_writes_per_inference",      # cells written for one sequence of seq_len tokens
              "lifetime_inferences",            # endurance-limited (None: no endurance figure)
              "extra_energy_pj", "extra_latency_ns"}],  # per token, against the digital baseline
     "params": {"tied": [{"param", "aliases", "counted_as", "used_by"}]},
     "dead_products": [{"name", "module"}],     # products whose result nothing used: dropped, not mapped
     "totals": {"arrays",                       # arrays holding weights
                "arrays_allocated",             # arrays reserved, counting macro alignment
                "chips", "pipeline_stages",
                "mapped_params",                # weights stored on crossbars (a tied weight once)
                "digital_params",               # every other parameter (biases, norms, embeddings)
                "model_params",                 # mapped_params + digital_params
                "mapped_macs_fraction",         # share of per-token weight MACs done on crossbars: mapped over
                                                # every static product, mapped or digital, convolutions included
                "arrays_placed",                # arrays holding weights, copies included
                "energy_pj", "cim_energy_pj", "digital_energy_pj",   # per token; energy_pj = sum of the rows
                "energy_breakdown_pj": {component: pJ},              # sum of the rows' breakdowns
                "other_digital_energy_pj", "other_digital_latency_ns",  # norms, softmax, elementwise ops
                                                # on the baseline as memory traffic, per token (not in energy_pj)
                "area_mm2", "chip_area_mm2",    # the mapped ops' area; one full chip
                "programming_energy_pj",        # writing every mapped weight once, or None
                "pipeline_latency_ns",          # one token through the pipeline of mapped ops
                "pipeline_interval_ns", "bottleneck",  # a token enters every interval; the op that sets it
                "tokens", "latency_ns",         # latency of `tokens` input vectors, digital ops included
                "baseline",                     # digital baseline name
                "mapped_baseline_energy_pj", "mapped_baseline_latency_ns",  # mapped ops run digitally instead
                "energy_ratio", "speedup",      # baseline / CiM for the mapped ops (energy; latency of one token)
                "dynamic": {                    # only when map_dynamic mapped a product; per token:
                            "mapped_ops", "energy_pj", "baseline_energy_pj", "extra_energy_pj",
                            "extra_latency_ns", "write_energy_pj", "write_latency_ns",
                            # per inference of seq_len tokens; the shortest-lived op's lifetime:
                            "cell_writes_per_inference", "seq_len", "lifetime_inferences"}},
     "costs": {"components": {...}, "baseline": {...}}}   # the figures used (targets/costs.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import fx

from nvcc_pt import meta
from nvcc_pt.files import write_text
from nvcc_pt.meta import MatmulKind

REPORT_SCHEMA = 1
WRAPPER_PREFIX = "m."


def _param_name(path: str) -> str:
    return path.removeprefix(WRAPPER_PREFIX)


def build_report(gm: fx.GraphModule, ctx, *, model: str, fidelity: str, seed: int) -> MappingReport:
    ops: list[dict[str, Any]] = []
    mapped_weights: dict[str, list[str]] = {}
    static_macs = mapped_macs = 0
    for node in gm.graph.nodes:
        info: meta.MatmulInfo | None = node.meta.get(meta.MATMUL)
        if info is None:
            continue
        sel: meta.Selection = node.meta[meta.SELECTION]
        row: dict[str, Any] = {
            "name": node.meta.get("nvcc_pt.lowered_from", node.name), "module": info.module, "kind": info.kind.value,
            "op": info.op, "mapped": sel.mapped, "reason": sel.reason, "k": info.k, "n": info.n,
            "arrays": 0, "row_tiles": 0, "col_tiles": 0, "slices": 0, "utilization": 0.0,
            "weight_bits": None, "input_bits": None, "adc_bits": None, "device": None, "sigma": None,
            "placement": None, "stage": None, **_cost_fields(node.meta.get(meta.COST)),
        }
        macs = row["macs"] or info.macs  # the cost's count knows einsums and batched weights at the captured shapes
        if info.kind is MatmulKind.STATIC:
            static_macs += macs
        if sel.mapped:
            grid: meta.TileGrid = node.meta[meta.TILES]
            prec: meta.Precision = node.meta[meta.PRECISION]
            noise: meta.NoiseInfo = node.meta[meta.NOISE]
            place: meta.Placement = node.meta[meta.PLACEMENT]
            row.update(arrays=grid.arrays * info.instances, row_tiles=grid.row_tiles, col_tiles=grid.col_tiles,
                       slices=grid.slices,
                       utilization=round(grid.utilization, 4), weight_bits=prec.weight_bits,
                       input_bits=prec.input_bits, adc_bits=prec.adc_bits, device=noise.device, sigma=noise.sigma,
                       placement=place.describe(), stage=place.stage)
            if info.kind is MatmulKind.STATIC:
                mapped_macs += macs
                mapped_weights.setdefault(info.weight, []).append(info.module)
            row.update(_dynamic_fields(info, node.meta.get(meta.COST)))
        ops.append(row)

    # Parameter accounting: every parameter counted once, by storage, mapped or digital.
    names_by_param: dict[int, list[str]] = {}
    params: dict[int, Any] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        if name.startswith("cim."):
            continue
        names_by_param.setdefault(id(p), []).append(_param_name(name))
        params[id(p)] = p
    mapped_params = digital_params = 0
    tied = []
    for pid, names in names_by_param.items():
        users = [m for n in names for m in mapped_weights.get(n, [])]
        numel = params[pid].numel()
        if users:
            mapped_params += numel
        else:
            digital_params += numel
        if len(names) > 1:
            tied.append({"param": names[0], "aliases": names[1:], "counted_as": "mapped" if users else "digital",
                         "used_by": users or ["digital ops"]})

    results = ctx.results
    target = ctx.target
    from nvcc_pt.targets.costs import costs_for, get_baseline  # the figures the costs were made with

    components = costs_for(target)
    baseline = get_baseline(components.digital_baseline)
    data = {
        "schema": REPORT_SCHEMA, "model": model, "target": target.to_dict(), "fidelity": fidelity, "seed": seed,
        "ops": ops, "params": {"tied": tied}, "dead_products": list(results.get("dead_products", [])),
        "totals": {
            "arrays": sum(o["arrays"] for o in ops),
            "arrays_allocated": results.get("arrays_allocated", 0),
            "chips": results.get("chips_needed", 0),
            "pipeline_stages": results.get("pipeline_stages", 0),
            "mapped_ops": sum(o["mapped"] for o in ops),
            "digital_ops": sum(not o["mapped"] for o in ops),
            "mapped_params": mapped_params, "digital_params": digital_params,
            "model_params": mapped_params + digital_params,
            "mapped_macs_fraction": round(mapped_macs / static_macs, 6) if static_macs else 0.0,
            **_cost_totals(ops, results, baseline.name),
            **_dynamic_totals(ops),
        },
        "costs": {"components": components.to_dict(), "baseline": baseline.to_dict()},
    }
    return MappingReport(data)


def _cost_lines(totals: dict[str, Any]) -> list[str]:
    """The text report's cost headline: every op per token (crossbars, digital products, other digital ops)."""
    from nvcc_pt.plotstyle import ratio, si

    other_e = totals.get("other_digital_energy_pj") or 0.0
    return [
        f"cost per token, every op: {si(totals['energy_pj'] + other_e, 'pJ')} = {si(totals['cim_energy_pj'], 'pJ')} "
        f"on crossbars + {si(totals['digital_energy_pj'], 'pJ')} digital products + {si(other_e, 'pJ')} other digital "
        f"ops; latency of {totals['tokens']} token(s) {si(totals['latency_ns'], 'ns')} (other digital ops "
        f"{si(totals.get('other_digital_latency_ns') or 0.0, 'ns')} per token)",
        f"area {si(totals['area_mm2'], 'mm2')}; pipeline {si(totals['pipeline_latency_ns'], 'ns')}, bottleneck "
        f"{totals['bottleneck']}; mapped ops vs {totals['baseline']}: {ratio(totals['energy_ratio'])} less energy, "
        f"{ratio(totals['speedup'])} the speed",
    ]


def _sig(x: float | None) -> float | None:
    """Six significant digits: what a cost estimate can claim, and stable across platforms."""
    return None if x is None else float(f"{x:.6g}")


def _cost_fields(cost: meta.CostInfo | None) -> dict[str, Any]:
    if cost is None:
        return {"on": None, "duplicates": 1, "macs": 0, "energy_pj": 0.0, "latency_ns": 0.0, "area_mm2": 0.0,
                "energy_breakdown_pj": {}, "programming_energy_pj": None, "baseline_energy_pj": 0.0,
                "baseline_latency_ns": 0.0}
    return {"on": cost.on, "duplicates": cost.duplicates, "macs": cost.macs, "energy_pj": _sig(cost.energy_pj),
            "latency_ns": _sig(cost.latency_ns), "area_mm2": _sig(cost.area_mm2),
            "energy_breakdown_pj": {k: _sig(v) for k, v in cost.breakdown_pj},
            "programming_energy_pj": _sig(cost.programming_energy_pj),
            "baseline_energy_pj": _sig(cost.baseline_energy_pj), "baseline_latency_ns": _sig(cost.baseline_latency_ns)}


def _cost_totals(ops: list[dict[str, Any]], results: dict[str, Any], baseline: str) -> dict[str, Any]:
    mapped = [o for o in ops if o["mapped"]]
    breakdown: dict[str, float] = {}
    for o in ops:
        for k, v in o["energy_breakdown_pj"].items():
            breakdown[k] = breakdown.get(k, 0.0) + v
    cim = sum(o["energy_pj"] for o in mapped)
    base_e = sum(o["baseline_energy_pj"] for o in mapped)
    base_t = sum(o["baseline_latency_ns"] for o in mapped)
    fill = results.get("pipeline_latency_ns", 0.0)
    prog = [o["programming_energy_pj"] for o in mapped]
    return {
        "arrays_placed": sum(o["arrays"] * o["duplicates"] for o in ops),
        "energy_pj": _sig(sum(o["energy_pj"] for o in ops)), "cim_energy_pj": _sig(cim),
        "digital_energy_pj": _sig(sum(o["energy_pj"] for o in ops if not o["mapped"])),
        "energy_breakdown_pj": {k: _sig(v) for k, v in breakdown.items()},
        "other_digital_energy_pj": _sig(results.get("other_digital_energy_pj", 0.0)),
        "other_digital_latency_ns": _sig(results.get("other_digital_latency_ns", 0.0)),
        "area_mm2": _sig(sum(o["area_mm2"] for o in ops)), "chip_area_mm2": _sig(results.get("chip_area_mm2", 0.0)),
        "programming_energy_pj": None if None in prog else _sig(sum(prog)),
        "pipeline_latency_ns": _sig(fill), "pipeline_interval_ns": _sig(results.get("pipeline_interval_ns", 0.0)),
        "bottleneck": results.get("bottleneck", ""), "tokens": results.get("tokens", 1),
        "latency_ns": _sig(results.get("latency_ns", 0.0)), "baseline": baseline,
        "mapped_baseline_energy_pj": _sig(base_e), "mapped_baseline_latency_ns": _sig(base_t),
        "energy_ratio": _sig(base_e / cim) if cim else None, "speedup": _sig(base_t / fill) if fill else None,
    }


def _dynamic_fields(info: meta.MatmulInfo, cost: meta.CostInfo | None) -> dict[str, Any]:
    """A mapped dynamic product's write figures (its operand is written per input); nothing for static ops."""
    if info.kind is not MatmulKind.DYNAMIC or cost is None:
        return {}
    return {"instances": info.instances, "seq_len": info.seq_len, "write_energy_pj": _sig(cost.write_energy_pj),
            "write_latency_ns": _sig(cost.write_latency_ns), "cell_writes_per_inference": cost.cell_writes_per_inference,
            "lifetime_inferences": _sig(cost.lifetime_inferences),
            "extra_energy_pj": _sig(cost.energy_pj - cost.baseline_energy_pj),
            "extra_latency_ns": _sig(cost.latency_ns - cost.baseline_latency_ns)}


def _dynamic_totals(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """`{"dynamic": ...}`: mapped dynamic products against keeping them digital, per token; cell writes and
    lifetime per inference. Empty when no dynamic product is mapped."""
    rows = [o for o in ops if o["mapped"] and o["kind"] == MatmulKind.DYNAMIC.value]
    if not rows:
        return {}
    lives = [o["lifetime_inferences"] for o in rows if o["lifetime_inferences"] is not None]
    return {"dynamic": {
        "mapped_ops": len(rows),
        "energy_pj": _sig(sum(o["energy_pj"] for o in rows)),
        "baseline_energy_pj": _sig(sum(o["baseline_energy_pj"] for o in rows)),
        "extra_energy_pj": _sig(sum(o["extra_energy_pj"] for o in rows)),
        "extra_latency_ns": _sig(sum(o["extra_latency_ns"] for o in rows)),
        "write_energy_pj": _sig(sum(o["write_energy_pj"] for o in rows)),
        "write_latency_ns": _sig(sum(o["write_latency_ns"] for o in rows)),
        "cell_writes_per_inference": sum(o["cell_writes_per_inference"] for o in rows),
        "seq_len": max((o["seq_len"] for o in rows), default=0),
        "lifetime_inferences": min(lives) if lives else None,
    }}


class MappingReport:
    """What `cm.report` is: print it, or take `to_dict()` / `to_json()` / `to_html()`."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self._data, indent=indent)
        if path is not None:
            write_text(path, text, "report")  # the old file stays whole until the new one is
        return text

    @property
    def ops(self) -> list[dict[str, Any]]:
        return self._data["ops"]

    @property
    def totals(self) -> dict[str, Any]:
        return self._data["totals"]

    def op(self, name_or_module: str) -> dict[str, Any]:
        for row in self.ops:
            if name_or_module in (row["name"], row["module"]):
                return row
        raise KeyError(f"no op or module named {name_or_module!r} in the report")

    COLUMNS = (("name", "op"), ("module", "module"), ("kind", "kind"), ("map", "mapped"), ("K", "k"), ("N", "n"),
               ("arrays", "arrays"), ("tiles", None), ("S", "slices"), ("util", "utilization"), ("w/in/adc", None),
               ("where / why digital", None))

    def rows(self) -> list[list[str]]:
        out = []
        for o in self.ops:
            bits = f"{o['weight_bits']}/{o['input_bits']}/{o['adc_bits']}" if o["mapped"] else "-"
            out.append([
                o["name"], o["module"] or "-", o["kind"], "yes" if o["mapped"] else "no", str(o["k"] or "-"),
                str(o["n"] or "-"), str(o["arrays"] or "-"),
                f"{o['row_tiles']}x{o['col_tiles']}" if o["mapped"] else "-", str(o["slices"] or "-"),
                f"{o['utilization']:.0%}" if o["mapped"] else "-", bits,
                o["placement"] if o["mapped"] else o["reason"],
            ])
        return out

    def __str__(self) -> str:
        t = self._data["target"]
        totals = self.totals
        head = [c for c, _ in self.COLUMNS]
        rows = self.rows()
        widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(len(head))]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [
            f"nvcc_pt mapping report: {self._data['model']} on {t['name']} "
            f"({t['rows']}x{t['cols']} arrays, {t['cell_bits']}-bit cells, {t['sign']}, device {t['device']['name']} "
            f"sigma {t['device']['sigma']:g}), fidelity {self._data['fidelity']}, seed {self._data['seed']}",
            line(head), line(["-" * w for w in widths]), *(line(r) for r in rows), "",
            f"mapped ops {totals['mapped_ops']}, digital ops {totals['digital_ops']}; arrays {totals['arrays']} "
            f"({totals['arrays_allocated']} allocated) on {totals['chips']} chip(s), {totals['pipeline_stages']} pipeline stages",
            f"params: {totals['mapped_params']:,} on crossbars + {totals['digital_params']:,} digital = "
            f"{totals['model_params']:,}; {totals['mapped_macs_fraction']:.1%} of per-token weight MACs on crossbars",
        ]
        if totals.get("energy_ratio") is not None:
            out += _cost_lines(totals)
        if self._data["fidelity"] == "bit-serial" and t["dac_bits"] >= t["input_bits"]:
            out.append(f"bit-serial runs as adc here: the {t['dac_bits']}-bit DAC applies all {t['input_bits']} input "
                       "bits in one cycle (lower dac_bits for bit-serial inputs)")
        for dead in self._data.get("dead_products", []):
            out.append(f"dropped {dead['name']} ({dead['module'] or 'top level'}): its result is never used, so it is "
                       "neither mapped nor run")
        dyn = totals.get("dynamic") or {}
        if dyn.get("mapped_ops"):
            life = dyn["lifetime_inferences"]
            out.append(
                f"dynamic products on crossbars: {dyn['mapped_ops']} ops, per token {dyn['extra_energy_pj'] / 1e3:+,.2f} nJ "
                f"and {dyn['extra_latency_ns']:+,.0f} ns against {totals['baseline']} (cell writes "
                f"{dyn['write_energy_pj'] / 1e3:,.2f} nJ, {dyn['write_latency_ns']:,.0f} ns); "
                f"{dyn['cell_writes_per_inference']:,} cell writes per inference of {dyn['seq_len']} tokens, "
                f"lifetime {'unknown' if life is None else f'{life:.3g}'} inferences (endurance)")
        for tie in self._data["params"]["tied"]:
            out.append(f"tied weight {tie['param']} (also {', '.join(tie['aliases'])}): counted once as "
                       f"{tie['counted_as']}, used by {', '.join(tie['used_by'])}")
        return "\n".join(out)

    __repr__ = __str__

    def plot(self, name: str = "energy"):
        """One of the HTML page's plots as a matplotlib figure, for a paper: "energy" (per op, by component),
        "energy-by-component", "latency", "baseline", "arrays", "utilization" or "tile-map".

        Example:
            >>> cm.report.plot("energy").savefig("energy.pdf")
        """
        from nvcc_pt.plots import report_figure

        return report_figure(self._data, name)

    def to_html(self, path: str | Path | None = None) -> str:
        """One self-contained HTML page: summary, mapping and cost tables, and the plots as embedded PNGs.

        Example:
            >>> cm.report.to_html("map.html")
        """
        from nvcc_pt.report_html import render

        page = render(self)
        if path is not None:
            write_text(path, page, "report")
        return page
