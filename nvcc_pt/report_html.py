"""The mapping report as one self-contained HTML page: a summary a person reads, the plots, and the tables.

Plots (`nvcc_pt.plots`, the same figures `report.plot(name)` returns) are embedded as SVG: sharp at any
zoom, text that stays text. Values carry units with SI prefixes (`plotstyle.si`); the page loads nothing.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

from nvcc_pt.plots import PLOT_IDS, captions, report_figure
from nvcc_pt.plotstyle import number, percent, ratio, si

__all__ = ["PLOT_IDS", "render", "summary_rows", "svg"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}"
          "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;"
          "text-align:left;white-space:nowrap}th{white-space:normal}td.n,th.n{text-align:right}th{background:#f3f3f3}"
          "table.ops td,table.ops th{font-size:12px}"
          "table.summary td{text-align:left}table.summary td:first-child{font-weight:500}td.sub{padding-left:24px;font-weight:400!important}"
          "figure{display:block;margin:24px 0}img{width:100%;height:auto}figcaption{color:#555;font-size:14px}"
          ".k{color:#666}.wide{overflow-x:auto}")


def svg(fig) -> bytes:
    """`fig` as SVG bytes, the same for the same figure (no date, fixed ids)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "nvcc_pt", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<div class='wide'><table class='{cls}'><tr>{th}</tr>{body}</table></div>"


_NUMBER = re.compile(r"^[-+]?[\d<][\d,.]*( ?[^\s]*)?$|^-$")


def _cell(c: Any) -> str:
    """A table cell; numbers (with their unit) right-aligned, words left."""
    if isinstance(c, tuple):  # (text, css class)
        return f"<td class='{c[1]}'>{html.escape(str(c[0]))}</td>"
    text = str(c)
    return f"<td class='n'>{html.escape(text)}</td>" if _NUMBER.match(text) else f"<td>{html.escape(text)}</td>"


def summary_rows(data: dict[str, Any]) -> list[list[Any]]:
    """[label, value] rows of the summary table: the totals a reader looks for, in words and units."""
    t = data["totals"]
    other_e, other_t = t.get("other_digital_energy_pj") or 0.0, t.get("other_digital_latency_ns") or 0.0
    sub = lambda label: (label, "sub")
    rows = [
        ["Energy per token, every op", si((t.get("energy_pj") or 0.0) + other_e, "pJ")],
        [sub("on crossbars"), si(t.get("cim_energy_pj"), "pJ")],
        [sub(f"matrix products left digital ({t['digital_ops']})"), si(t.get("digital_energy_pj"), "pJ")],
        [sub("other digital ops (norms, softmax, elementwise)"), si(other_e, "pJ")],
        [f"Latency of {t.get('tokens', 1)} token(s), every op", si((t.get("latency_ns") or 0.0), "ns")],
        [sub("one token through the crossbar pipeline"), si(t.get("pipeline_latency_ns"), "ns")],
        [sub("pipeline interval (a new token every)"), si(t.get("pipeline_interval_ns"), "ns")],
        [sub("other digital ops per token"), si(other_t, "ns")],
        ["Pipeline bottleneck", _op_label(data, t.get("bottleneck"))],
        [f"Mapped ops against {t.get('baseline')}", f"{ratio(t.get('energy_ratio'))} less energy, "
                                                    f"speed-up {ratio(t.get('speedup'))}"],
        ["Area of the mapped ops", si(t.get("area_mm2"), "mm2")],
        ["Chips (area of one)", f"{t['chips']} ({si(t.get('chip_area_mm2'), 'mm2')})"],
        ["Crossbar arrays", f"{t['arrays']:,} hold weights, {t['arrays_placed']:,} with copies, "
                            f"{t['arrays_allocated']:,} allocated"],
        ["Pipeline stages", f"{t['pipeline_stages']}"],
        ["Matrix products", f"{t['mapped_ops']} on crossbars, {t['digital_ops']} digital"],
        ["Parameters on crossbars", f"{t['mapped_params']:,} of {t['model_params']:,} "
                                    f"({percent(t['mapped_params'] / max(t['model_params'], 1))})"],
        ["Weight MACs per token on crossbars", percent(t["mapped_macs_fraction"])],
        ["Programming energy (all weights once)", si(t.get("programming_energy_pj"), "pJ")],
    ]
    dyn = t.get("dynamic")
    if dyn:
        life = dyn.get("lifetime_inferences")
        rows += [
            ["Dynamic products on crossbars", f"{dyn['mapped_ops']}: {si(dyn['extra_energy_pj'], 'pJ')} and "
                                              f"{si(dyn['extra_latency_ns'], 'ns')} per token against digital"],
            [sub("cell writes per inference"), f"{dyn['cell_writes_per_inference']:,} ({dyn['seq_len']} tokens)"],
            [sub("lifetime (endurance)"), "unknown" if life is None else f"{number(life, 3)} inferences"],
        ]
    return rows


def _op_label(data: dict[str, Any], name: str | None) -> str:
    for o in data["ops"]:
        if o["name"] == name:
            return f"{name} ({o['module']})" if o["module"] else name
    return name or "-"


_UNITS = (("_pj_per_conversion", " (pJ per conversion)"), ("_pj_per_byte", " (pJ/B)"), ("_pj", " (pJ)"),
          ("_ns", " (ns)"), ("_mm2", " (mm²)"), ("_gb_s", " (GB/s)"), ("_mhz", " (MHz)"), ("_msps", " (MS/s)"),
          ("_nm", " (nm)"), ("_w", " (W)"), ("_per_s", " (per s)"))


def _figure_name(key: str) -> str:
    """A cost figure's key in words: `adc_energy_pj_per_conversion` -> "ADC energy (pJ per conversion)"."""
    for suffix, unit in _UNITS:
        if key.endswith(suffix):
            key, tail = key[: -len(suffix)], unit
            break
    else:
        tail = ""
    words = key.replace("_", " ")
    for short in ("adc", "dac"):
        words = words.replace(short, short.upper())
    return words[:1].upper() + words[1:] + tail


def _number(v: Any) -> str:
    if isinstance(v, float):
        return number(v)
    return "-" if v is None else str(v)


def render(report) -> str:
    """The HTML page of a `MappingReport`."""
    data = report.to_dict()
    t = data["totals"]
    caption = captions(data)
    figures = []
    for pid in PLOT_IDS:
        image = base64.b64encode(svg(report_figure(data, pid))).decode("ascii")
        figures.append(f"<figure id='plot-{pid}'><img alt='{pid}' src='data:image/svg+xml;base64,{image}'>"
                       f"<figcaption>{html.escape(caption[pid])}</figcaption></figure>")
    cost_head = ["op", "module", "on", "copies", "MACs per token", "energy per token", "latency", "area",
                 "baseline energy", "baseline latency"]
    cost_rows = [[o["name"], o["module"] or "-", o["on"] or "-", o["duplicates"], f"{o['macs']:,}",
                  si(o["energy_pj"], "pJ"), si(o["latency_ns"], "ns"), si(o["area_mm2"], "mm2"),
                  si(o["baseline_energy_pj"], "pJ"), si(o["baseline_latency_ns"], "ns")] for o in data["ops"]]
    comps = data.get("costs", {}).get("components", {})
    figures_rows = [[_figure_name(k), _number(v)] for k, v in comps.items() if k != "source"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>nvcc_pt mapping report</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(data['model'])} on {html.escape(data['target']['name'])}</h1>"
        f"<p class='k'>Fidelity {html.escape(data['fidelity'])}, seed {data['seed']}. Costs per token from "
        f"{html.escape(str(comps.get('source', '')))}; digital baseline {html.escape(str(t.get('baseline')))}.</p>"
        f"<h2>Summary</h2>{_table(['quantity', 'value'], summary_rows(data), 'summary')}"
        f"<h2>Plots</h2>{''.join(figures)}"
        f"<h2>Mapping</h2>{_table([c for c, _ in report.COLUMNS], report.rows(), 'ops')}"
        f"<h2>Cost per op</h2>{_table(cost_head, cost_rows, 'ops')}"
        f"<h2>Cost figures</h2>{_table(['figure', 'value'], figures_rows)}"
        "</body></html>"
    )
