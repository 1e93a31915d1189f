"""The figures of a mapping report and of a layer analysis, as matplotlib figures (for the HTML page and papers).

Every figure has units on its axes, one colour per cost component (`plotstyle.COMPONENT_COLORS`), legends
outside the axes, and one horizontal bar per op, or per repeated block (`model.layers.3`) beyond `MAX_BARS`
ops, so labels stay readable at hundreds of ops.

    >>> fig = report_figure(cm.report.to_dict(), "energy"); fig.savefig("energy.svg")
"""

from __future__ import annotations

import statistics
from typing import Any

from nvcc_pt.errors import InputError
from nvcc_pt.plotstyle import (
    CIM_COLOR,
    COMPONENT_COLORS,
    COMPONENT_LABELS,
    DIGITAL_COLOR,
    HIGHLIGHT_COLOR,
    block_of,
    new_figure,
    percent,
    ratio,
    short_label,
    si,
    unit_axis,
)

PLOT_IDS = ("energy-by-layer", "energy-by-component", "latency", "baseline", "arrays", "utilization", "tile-map")
ALIASES = {"energy": "energy-by-layer", "components": "energy-by-component", "tiles": "tile-map"}
MAX_BARS = 48
"""Above this many ops, bar charts show one bar per repeated block instead of one per op."""
DOMINANT = 2.0
"""The bottleneck is marked only when its pipeline interval is this many times the median op's."""
LABEL_WIDTH = 40


def plot_name(name: str) -> str:
    """The plot id for `name` (an id of `PLOT_IDS` or an alias such as "energy"), or `InputError`."""
    pid = ALIASES.get(name, name)
    if pid not in PLOT_IDS:
        raise InputError(f"unknown plot {name!r}; choose one of {[*PLOT_IDS, *ALIASES]}")
    return pid


def report_figure(data: dict[str, Any], name: str):
    """The figure `name` (`PLOT_IDS` or an alias) of a report's `to_dict()`."""
    pid = plot_name(name)
    if pid == "tile-map":
        from nvcc_pt.plots_tiles import tile_map

        return tile_map(data)
    return _FIGURES[pid](data)


def groups(ops: list[dict[str, Any]]) -> tuple[list[tuple[str, list[dict[str, Any]]]], bool]:
    """[(label, ops)]: one entry per op, or per repeated block when there are more than `MAX_BARS`; and whether
    they were grouped."""
    if len(ops) <= MAX_BARS:
        # Products of one module (attention's two) are told apart by their op names.
        seen = [o["module"] or o["name"] for o in ops]
        labels = [f"{m} [{o['name']}]" if seen.count(m) > 1 else m for m, o in zip(seen, ops)]
        return [(short_label(lab, LABEL_WIDTH), [o]) for lab, o in zip(labels, ops)], False
    out: dict[str, list[dict[str, Any]]] = {}
    for o in ops:
        out.setdefault(block_of(o["module"]), []).append(o)
    return [(short_label(k, LABEL_WIDTH), v) for k, v in out.items()], True


def _hbars(n: int, title: str, width: float = 10.0):
    fig, ax = new_figure(width, 0.9 + 0.19 * max(n, 3))
    ax.set_title(title, loc="left", fontsize=10)
    ax.tick_params(axis="y", labelsize=7 if n > 24 else 8)
    return fig, ax


def _ylabels(ax, labels: list[str]) -> None:
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first op on top, in program order
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _legend_below(fig, ax, ncol: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncol, len(handles)), fontsize=8,
                   frameon=False)


def energy_by_layer(data: dict[str, Any]):
    rows, grouped = groups(data["ops"])
    comps = [c for c in COMPONENT_COLORS if any(o["energy_breakdown_pj"].get(c) for _, os in rows for o in os)]
    comps += sorted({c for _, os in rows for o in os for c in o["energy_breakdown_pj"]} - set(comps))
    values = {c: [sum(o["energy_breakdown_pj"].get(c, 0.0) for o in os) for _, os in rows] for c in comps}
    totals = [sum(v[i] for v in values.values()) for i in range(len(rows))]
    fig, ax = _hbars(len(rows), "Energy per token" + (" by block" if grouped else " by op") + ", by component")
    ax.set_xlabel("energy per token")
    f = unit_axis(ax, "x", "pJ", totals)
    left = [0.0] * len(rows)
    for c in comps:
        vals = [v * f for v in values[c]]
        ax.barh(range(len(rows)), vals, left=left, color=COMPONENT_COLORS.get(c, "#999999"),
                label=COMPONENT_LABELS.get(c, c.replace("_", " ")), height=0.75)
        left = [a + b for a, b in zip(left, vals)]
    _ylabels(ax, [lab for lab, _ in rows])
    _legend_below(fig, ax, 5)
    return fig


def energy_by_component(data: dict[str, Any]):
    totals = data["totals"]
    parts = {c: v for c, v in totals.get("energy_breakdown_pj", {}).items() if v > 0}
    if totals.get("other_digital_energy_pj"):
        parts["other_digital"] = totals["other_digital_energy_pj"]
    names = sorted(parts, key=lambda c: -parts[c])
    fig, ax = _hbars(len(names), "Energy per token by component, all ops", width=10.0)
    ax.set_xlabel("energy per token")
    f = unit_axis(ax, "x", "pJ", list(parts.values()))
    vals = [parts[c] * f for c in names]
    ax.barh(range(len(names)), vals, color=[COMPONENT_COLORS.get(c, "#999999") for c in names], height=0.7)
    for i, c in enumerate(names):
        ax.annotate(f" {si(parts[c], 'pJ')} ({percent(parts[c] / sum(parts.values()), 2)})", (vals[i], i),
                    va="center", fontsize=8)
    ax.set_xlim(0, max(vals, default=1) * 1.35)  # room for the value labels
    _ylabels(ax, [COMPONENT_LABELS.get(c, c.replace("_", " ")) for c in names])
    return fig


def bottleneck(data: dict[str, Any]) -> str | None:
    """The bottleneck op's name when it clearly dominates: its pipeline interval over `DOMINANT` x the median."""
    mapped = [o for o in data["ops"] if o["mapped"]]
    intervals = {o["name"]: o["latency_ns"] / max(o["duplicates"], 1) for o in mapped}
    name = data["totals"].get("bottleneck")
    if len(intervals) < 2 or name not in intervals:
        return None
    median = statistics.median(intervals.values())
    return name if median > 0 and intervals[name] > DOMINANT * median else None


def latency(data: dict[str, Any]):
    mapped = [o for o in data["ops"] if o["mapped"]]
    rows, grouped = groups(mapped)
    vals = [max(o["latency_ns"] / max(o["duplicates"], 1) for o in os) for _, os in rows]
    worst = bottleneck(data)
    fig, ax = _hbars(len(rows), "Pipeline interval per " + ("block (its slowest op)" if grouped else "op")
                     + ": latency of one copy / copies")
    ax.set_xlabel("time per token")
    f = unit_axis(ax, "x", "ns", vals)
    colors = [HIGHLIGHT_COLOR if worst in {o["name"] for o in os} else CIM_COLOR for _, os in rows]
    ax.barh(range(len(rows)), [v * f for v in vals], color=colors, height=0.75)
    if worst is not None:
        from matplotlib.patches import Patch

        module = next(o["module"] for o in mapped if o["name"] == worst)
        label = f"bottleneck: {worst}" + (f" ({module})" if module else "")
        fig.legend(handles=[Patch(color=HIGHLIGHT_COLOR, label=label)], loc="outside lower center", fontsize=8,
                   frameon=False)
    _ylabels(ax, [lab for lab, _ in rows])
    return fig


def baseline(data: dict[str, Any]):
    t = data["totals"]
    base = t.get("baseline", "baseline")
    fig, axes = new_figure(10.0, 2.4, 1, 2)
    for ax, (title, cim, dig, unit) in zip(axes[0], (
            ("Energy per token", t.get("cim_energy_pj"), t.get("mapped_baseline_energy_pj"), "pJ"),
            ("Latency of one token", t.get("pipeline_latency_ns"), t.get("mapped_baseline_latency_ns"), "ns"))):
        vals = [cim or 0.0, dig or 0.0]
        ax.set_xlabel(title.lower())
        f = unit_axis(ax, "x", unit, vals)
        ax.barh([0, 1], [v * f for v in vals], color=[CIM_COLOR, DIGITAL_COLOR], height=0.6)
        for i, v in enumerate(vals):
            ax.annotate(f" {si(v, unit)}", (v * f, i), va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * f * 1.4 if max(vals) else 1)
        ax.set_yticks([0, 1], ["crossbars", short_label(base, 20)])
        ax.set_ylim(1.6, -0.6)
        ax.set_title(title + " of the mapped ops", loc="left", fontsize=10)
    return fig


def arrays(data: dict[str, Any]):
    rows, grouped = groups([o for o in data["ops"] if o["mapped"]])
    one = [sum(o["arrays"] for o in os) for _, os in rows]
    copies = [sum(o["arrays"] * (max(o["duplicates"], 1) - 1) for o in os) for _, os in rows]
    fig, ax = _hbars(len(rows), "Crossbar arrays per " + ("block" if grouped else "op"))
    ax.barh(range(len(rows)), one, color=CIM_COLOR, height=0.75, label="one copy of the weights")
    if any(copies):
        ax.barh(range(len(rows)), copies, left=one, color="#a1c9f4", height=0.75, label="duplicates (pipeline)")
    ax.set_xlabel("arrays (count)")
    _ylabels(ax, [lab for lab, _ in rows])
    _legend_below(fig, ax, 2)
    return fig


def utilization(data: dict[str, Any]):
    rows, grouped = groups([o for o in data["ops"] if o["mapped"]])
    # A block's utilization weighs each op by its arrays: the share of the block's cells that hold weights.
    vals = [100 * sum(o["utilization"] * o["arrays"] for o in os) / max(sum(o["arrays"] for o in os), 1)
            for _, os in rows]
    fig, ax = _hbars(len(rows), "Cell utilization of each " + ("block's" if grouped else "op's") + " arrays")
    ax.barh(range(len(rows)), vals, color=CIM_COLOR, height=0.75)
    ax.set_xlim(0, 100)
    ax.set_xlabel("cells holding weights (%)")
    _ylabels(ax, [lab for lab, _ in rows])
    return fig


_FIGURES = {"energy-by-layer": energy_by_layer, "energy-by-component": energy_by_component, "latency": latency,
            "baseline": baseline, "arrays": arrays, "utilization": utilization}


def captions(data: dict[str, Any]) -> dict[str, str]:
    """The caption under each plot of the HTML page, numbers rounded for a reader."""
    t = data["totals"]
    grouped = len(data["ops"]) > MAX_BARS
    per = "per repeated block (ops summed)" if grouped else "per op"
    worst = bottleneck(data)
    other = t.get("other_digital_energy_pj") or 0.0
    return {
        "energy-by-layer": f"Energy per token of every matrix product {per}, split by component; products left "
                           f"digital run on {t.get('baseline')}. Not shown: {si(other, 'pJ')} of other digital ops "
                           "(norms, softmax, elementwise).",
        "energy-by-component": f"Where the {si((t.get('energy_pj') or 0.0) + other, 'pJ')} per token go, summed "
                               "over all ops, other digital ops included.",
        "latency": ("Pipeline interval of each mapped op; a token enters every interval. " +
                    (f"Red: the bottleneck {worst}, over {DOMINANT:g}x the median op's interval." if worst else
                     f"No op is over {DOMINANT:g}x the median interval, so none is marked as the bottleneck.")),
        "baseline": f"The mapped ops on crossbars against the same products on {t.get('baseline')}: "
                    f"{ratio(t.get('energy_ratio'))} less energy, speed-up {ratio(t.get('speedup'))}.",
        "arrays": f"Crossbar arrays {per}: one copy of the weights, and the copies made to balance the pipeline.",
        "utilization": f"Share of the arrays' cells that hold weights, {per}.",
        "tile-map": "Where every array of each chip went: coloured by the op (or block) it holds, black the output "
                    "head, light grey free; white lines separate arrays (thick: macros)." + _chips_shown(t),
    }


def _chips_shown(totals: dict[str, Any]) -> str:
    from nvcc_pt.plots_tiles import MAX_CHIP_MAPS

    chips = totals.get("chips", 0)
    if chips <= MAX_CHIP_MAPS:
        return ""
    return f" Shown: chips 0-{MAX_CHIP_MAPS - 2} and {chips - 1} (the output head's) of {chips}."


def analysis_figure(data: dict[str, Any], sort: bool = False):
    """Per op of a `LayerAnalysis`: share of the end-to-end error, own SNR, and the ADC's clipping and codes used."""
    ops = sorted(data["ops"], key=lambda r: -r["share"]) if sort else list(data["ops"])
    worst = {w["name"] for w in data["worst"]}
    has_adc = any(r["clip_rate"] is not None for r in ops)
    n = len(ops)
    fig, axes = new_figure(12.0 if has_adc else 9.0, 1.2 + 0.19 * max(n, 3), 1, 3 if has_adc else 2, sharey=True)
    axes = axes[0]
    colors = [HIGHLIGHT_COLOR if r["name"] in worst else CIM_COLOR for r in ops]
    y = range(n)
    axes[0].barh(y, [100 * r["share"] for r in ops], color=colors, height=0.75)
    axes[0].set_xlabel("share of end-to-end error power (%)")
    snr = [r["snr_db"] if r["snr_db"] is not None else 0.0 for r in ops]
    axes[1].barh(y, snr, color=colors, height=0.75)
    axes[1].set_xlabel("own SNR vs exact (dB)")
    if has_adc:
        axes[2].barh([i - 0.2 for i in y], [100 * (r["clip_rate"] or 0.0) for r in ops], height=0.4,
                     color=DIGITAL_COLOR, label="ADC reads clipped")
        axes[2].barh([i + 0.2 for i in y], [100 * (r["codes_used"] or 0.0) for r in ops], height=0.4,
                     color="#8172b2", label="ADC codes used (span)")
        axes[2].set_xlabel("ADC reads clipped, codes used (%)")
        axes[2].set_xlim(0, 100)
        fig.legend(*axes[2].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8,
                   frameon=False)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(list(y), [short_label(r["module"] or r["name"], LABEL_WIDTH) for r in ops],
                       fontsize=7 if n > 24 else 8)
    axes[0].set_ylim(n - 0.5, -0.5)
    e = data["end_to_end"]
    fig.suptitle(f"{data['model']} on {data['target']} at {data['fidelity']}: end-to-end relative error "
                 f"{e['rel_error']:.3g}; red: the ops that hurt most", fontsize=10, x=0.01, ha="left")
    return fig
