"""The mapping report as one self-contained HTML page: summary, tables and plots (base64 PNG).

Plots: arrays per layer, utilization per layer, energy by layer split by component, energy by
component, latency per op with the pipeline bottleneck marked, CiM against the digital
baseline, and the tile-allocation map of each chip (every array coloured by the op it holds).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

PLOT_IDS = ("arrays", "utilization", "energy-by-layer", "energy-by-component", "latency", "baseline", "tile-map")
MAX_CHIP_MAPS = 8  # a model on hundreds of chips shows the first few; the table still lists every op
_STYLE = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
          "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}td:nth-child(-n+3){text-align:left}"
          "th{background:#f3f3f3}figure{display:inline-block;margin:8px}img{max-width:100%}.k{color:#666}")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(o: dict[str, Any]) -> str:
    return o["module"] or o["name"]


def _bar(labels, values, title, ylabel, highlight=None, log=False):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels)), 3.2))
    colors = ["#d62728" if lab == highlight else "#1f77b4" for lab in labels]
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    return fig


def _plots(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{plot id: (caption, base64 png)}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ops, totals = data["ops"], data["totals"]
    mapped = [o for o in ops if o["mapped"]]
    labels = [_label(o) for o in mapped]
    out: dict[str, tuple[str, str]] = {}
    out["arrays"] = ("Arrays per layer (one copy; duplicates multiply it)",
                     _png(_bar(labels, [o["arrays"] for o in mapped], "Arrays per mapped op", "arrays")))
    out["utilization"] = ("Cell utilization of each op's arrays",
                          _png(_bar(labels, [100 * o["utilization"] for o in mapped], "Utilization", "% of cells")))

    comps = [c for c in totals.get("energy_breakdown_pj", {}) if c != "digital"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(ops)), 3.4))
    bottom = [0.0] * len(ops)
    for comp in [*comps, "digital"]:
        vals = [o["energy_breakdown_pj"].get(comp, 0.0) for o in ops]
        if any(vals):
            ax.bar(range(len(ops)), vals, bottom=bottom, label=comp)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(ops)), [_label(o) for o in ops], rotation=90, fontsize=7)
    ax.set_ylabel("pJ per token")
    ax.set_title("Energy by layer and component")
    ax.legend(fontsize=7, ncol=4)
    out["energy-by-layer"] = ("Energy per token of every product, split by component (digital ops on the baseline)",
                              _png(fig))

    breakdown = {k: v for k, v in totals.get("energy_breakdown_pj", {}).items() if v > 0}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(list(breakdown), list(breakdown.values()), color="#2ca02c")
    ax.set_xlabel("pJ per token")
    ax.set_title("Energy by component (all ops)")
    out["energy-by-component"] = ("Where the energy goes, summed over all ops", _png(fig))

    bottleneck = next((_label(o) for o in mapped if o["name"] == totals.get("bottleneck")), None)
    out["latency"] = (f"Latency of one copy of each op per token; red: the pipeline bottleneck ({bottleneck or 'none'})",
                      _png(_bar(labels, [o["latency_ns"] / max(o["duplicates"], 1) for o in mapped],
                                "Pipeline interval per op (latency / copies)", "ns", highlight=bottleneck)))

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    base = totals.get("baseline", "baseline")
    for ax, (title, cim, dig, unit) in zip(axes, (
            ("Energy per token", totals.get("cim_energy_pj", 0.0), totals.get("mapped_baseline_energy_pj", 0.0), "pJ"),
            ("Latency per token", totals.get("pipeline_latency_ns", 0.0), totals.get("mapped_baseline_latency_ns", 0.0),
             "ns"))):
        ax.bar(["CiM", base], [cim or 0.0, dig or 0.0], color=["#1f77b4", "#ff7f0e"])
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(unit)
    out["baseline"] = (f"The mapped ops on crossbars against the same products on {base}: energy ratio "
                       f"{totals.get('energy_ratio')}, speed-up {totals.get('speedup')}", _png(fig))
    out["tile-map"] = ("Tile allocation: every array of each chip, coloured by the op it holds (grey: free)",
                       _png(_tile_map(data)))
    return out


def _tile_map(data: dict[str, Any]):
    """One panel per chip: arrays in macro order, laid out as a near-square grid of macros."""
    import math

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    t = data["target"]
    per_macro, per_chip = t["arrays_per_macro"], t["arrays_per_macro"] * t["macros_per_chip"]
    chips = max(data["totals"].get("chips", 0), 1)
    shown = min(chips, MAX_CHIP_MAPS)
    grid = np.full(shown * per_chip, -1, dtype=np.int64)
    mapped = [o for o in data["ops"] if o["mapped"]]
    for i, o in enumerate(mapped):
        first = _first_array(o["placement"])
        if first is None:
            continue
        grid[first:min(first + o["arrays"] * o["duplicates"], shown * per_chip)] = i
    cmap = ListedColormap(["#e6e6e6", *[plt.get_cmap("tab20")(i % 20) for i in range(max(len(mapped), 1))]])
    fig, axes = plt.subplots(1, shown, figsize=(min(4 * shown, 16), 4), squeeze=False)
    for c in range(shown):
        arrays = grid[c * per_chip:(c + 1) * per_chip]
        used = np.flatnonzero(arrays >= 0)
        # A chip that is mostly free is drawn up to its last used macro, so small models stay visible.
        extent = per_chip
        if used.size and used[-1] + 1 < per_chip // 4:
            extent = -(-(int(used[-1]) + 1) // per_macro) * per_macro
        width = per_macro * max(1, round(math.sqrt(extent) / per_macro))
        height = -(-extent // width)
        chip = np.full(width * height, -1)
        chip[:extent] = arrays[:extent]
        ax = axes[0][c]
        ax.imshow(chip.reshape(height, width) + 1, cmap=cmap, vmin=0, vmax=len(mapped), interpolation="nearest",
                  aspect="auto")
        title = f"chip {c}" + (f" (of {chips})" if c == shown - 1 and chips > shown else "")
        if extent < per_chip:
            title += f": arrays 0-{extent - 1} of {per_chip} shown"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _first_array(placement: str | None) -> int | None:
    if not placement or "arrays " not in placement:
        return None
    return int(placement.rsplit("arrays ", 1)[1].split("-")[0])


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def render(report) -> str:
    """The HTML page of a `MappingReport`."""
    data = report.to_dict()
    totals = data["totals"]
    plots = _plots(data)
    cost_head = ["name", "module", "on", "copies", "MACs", "energy pJ", "latency ns", "area mm²", "baseline pJ",
                 "baseline ns"]
    cost_rows = [[o["name"], o["module"] or "-", o["on"] or "-", o["duplicates"], o["macs"], _fmt(o["energy_pj"]),
                  _fmt(o["latency_ns"]), _fmt(o["area_mm2"]), _fmt(o["baseline_energy_pj"]),
                  _fmt(o["baseline_latency_ns"])] for o in data["ops"]]
    summary = [[k, _fmt(v)] for k, v in totals.items() if not isinstance(v, dict)]
    comps = data.get("costs", {}).get("components", {})
    figures = "".join(
        f"<figure id='plot-{pid}'><img alt='{pid}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for pid, (caption, png) in plots.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>nvcc_pt mapping report</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(data['model'])} on {html.escape(data['target']['name'])}</h1>"
        f"<p class='k'>fidelity {html.escape(data['fidelity'])}, seed {data['seed']}; costs per token from "
        f"{html.escape(str(comps.get('source', '')))}; digital baseline {html.escape(str(totals.get('baseline')))}</p>"
        f"<h2>Summary</h2>{_table(['total', 'value'], summary)}"
        f"<h2>Plots</h2>{figures}"
        f"<h2>Mapping</h2>{_table([c for c, _ in report.COLUMNS], report.rows())}"
        f"<h2>Cost per op</h2>{_table(cost_head, cost_rows)}"
        f"<h2>Cost figures</h2>{_table(['figure', 'value'], [[k, _fmt(v)] for k, v in comps.items()])}"
        "</body></html>"
    )
    return page
