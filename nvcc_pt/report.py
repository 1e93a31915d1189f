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
              "placement": str | None, "stage": int | None}],
     "params": {"tied": [{"param", "aliases", "counted_as", "used_by"}]},
     "totals": {"arrays",                       # arrays holding weights
                "arrays_allocated",             # arrays reserved, counting macro alignment
                "chips", "pipeline_stages",
                "mapped_params",                # weights stored on crossbars (a tied weight once)
                "digital_params",               # every other parameter (biases, norms, embeddings)
                "model_params",                 # mapped_params + digital_params
                "mapped_macs_fraction"}}        # share of per-token weight MACs done on crossbars
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from torch import fx

from nvcc_pt import meta
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
            "placement": None, "stage": None,
        }
        if info.kind is MatmulKind.STATIC:
            static_macs += info.k * info.n
        if sel.mapped:
            grid: meta.TileGrid = node.meta[meta.TILES]
            prec: meta.Precision = node.meta[meta.PRECISION]
            noise: meta.NoiseInfo = node.meta[meta.NOISE]
            place: meta.Placement = node.meta[meta.PLACEMENT]
            row.update(arrays=grid.arrays, row_tiles=grid.row_tiles, col_tiles=grid.col_tiles, slices=grid.slices,
                       utilization=round(grid.utilization, 4), weight_bits=prec.weight_bits,
                       input_bits=prec.input_bits, adc_bits=prec.adc_bits, device=noise.device, sigma=noise.sigma,
                       placement=place.describe(), stage=place.stage)
            mapped_macs += info.k * info.n
            mapped_weights.setdefault(info.weight, []).append(info.module)
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
    data = {
        "schema": REPORT_SCHEMA, "model": model, "target": target.to_dict(), "fidelity": fidelity, "seed": seed,
        "ops": ops, "params": {"tied": tied},
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
        },
    }
    return MappingReport(data)


class MappingReport:
    """What `cm.report` is: print it, or take `to_dict()` / `to_json()` / `to_html()`."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self._data, indent=indent)
        if path is not None:
            Path(path).write_text(text)
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
        for tie in self._data["params"]["tied"]:
            out.append(f"tied weight {tie['param']} (also {', '.join(tie['aliases'])}): counted once as "
                       f"{tie['counted_as']}, used by {', '.join(tie['used_by'])}")
        return "\n".join(out)

    __repr__ = __str__

    def to_html(self, path: str | Path | None = None) -> str:
        """One self-contained HTML page with the summary and the per-op table."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in self.COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows())
        summary = html.escape(str(self).split("\n\n")[-1])
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>nvcc_pt mapping report</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 6px;font-size:12px}</style></head><body>"
            f"<h1>{html.escape(self._data['model'])} on {html.escape(self._data['target']['name'])}</h1>"
            f"<pre>{summary}</pre><table><tr>{head}</tr>{body}</table></body></html>"
        )
        if path is not None:
            Path(path).write_text(page)
        return page
