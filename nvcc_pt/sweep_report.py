"""The sweep report: the task metric against energy per token with the Pareto front, and a summary to read.

`plot_sweep(result)` returns the matplotlib figure (for papers); `write_report(result, directory)` writes
`sweep.svg`, `sweep.png` (200 dpi), `sweep.md` and `sweep.html` (self-contained, the SVG inline).
Every axis carries its unit; the legend sits below the axes, where it covers nothing.

Example:
    >>> res = nvcc_pt.read_sweep("adc.parquet")
    >>> res.report("adc-report", within=0.05, relative=True)
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from nvcc_pt.errors import SweepError
from nvcc_pt.files import write_bytes, write_text
from nvcc_pt.pareto import pareto_front, pareto_mask, reference_value
from nvcc_pt.sweep_grid import config_types

METRIC_UNITS = {"perplexity": "dimensionless", "relative_error": "fraction of the float logits' norm"}
_HIDDEN = {"point_id", "reference"}
_FRONT = "#d62728"
_OTHER = "#9e9e9e"


def _energy_unit(values_pj: np.ndarray) -> tuple[float, str]:
    top = float(np.nanmax(values_pj)) if len(values_pj) and np.isfinite(values_pj).any() else 0.0
    for scale, unit in ((1e6, "µJ"), (1e3, "nJ")):
        if top >= scale:
            return scale, unit
    return 1.0, "pJ"


def fmt(x: Any) -> str:
    """A number as a person reads it: 4 significant digits, thousands separated, no exponent below 10^9."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "—" if math.isnan(x) else ("∞" if x > 0 else "-∞")
    if x == int(x) and abs(x) < 1e9:
        return f"{int(x):,}"
    if abs(x) >= 1e9 or abs(x) < 1e-3:
        return f"{x:.3e}"
    return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"


def varied_columns(summary) -> list[str]:
    """The configuration columns whose values differ between the designs (what tells them apart)."""
    designs = summary[~summary["reference"].astype(bool)] if "reference" in summary.columns else summary
    return [c for c in config_types() if c in designs.columns and c not in _HIDDEN
            and designs[c].astype(str).nunique() > 1]


def _label(row, columns: list[str]) -> str:
    return ", ".join(f"{c}={fmt(row[c])}" for c in columns) or str(row.get("target", ""))


def _metric_label(metric: str, stat: str, k: float, chips: int) -> str:
    unit = METRIC_UNITS.get(metric, "as the metric returns it")
    what = {"kpp": f"KPP (k = {k:g} %) of {chips} chips", "mean": f"mean over {chips} chips",
            "std": f"std over {chips} chips"}[stat]
    return f"{metric}, {what}\n({unit})"


def _coincident(frame, x: np.ndarray, y: np.ndarray) -> dict[tuple[float, float], list]:
    """Rows grouped by where they are drawn: designs with equal metric and energy share one label."""
    out: dict[tuple[float, float], list] = {}
    for (_, row), xi, yi in zip(frame.iterrows(), x, y):
        out.setdefault((float(xi), float(yi)), []).append(row)
    return out


def _group_label(rows: list, columns: list[str]) -> str:
    if len(rows) == 1:
        return _label(rows[0], columns)
    parts = []
    for c in columns:
        values = sorted({fmt(r[c]) for r in rows})
        parts.append(f"{c}={values[0]}" if len(values) == 1 else f"{c} ∈ {{{', '.join(values)}}}")
    return f"{len(rows)} designs: " + ", ".join(parts)


def plot_sweep(result, metric: str | None = None, *, stat: str = "kpp", k: float = 1.0, within: float | None = None,
               relative: bool = False):
    """The metric (`stat` over chips) of every design against its energy per token; the front highlighted.

    The highlighted front is the two-objective one drawn (metric and energy); the float model is a dashed
    line, and with `within` the bound and the cheapest design within it are marked.

    Example:
        >>> fig = plot_sweep(res, within=0.05, relative=True); fig.savefig("sweep.pdf")
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = metric or result.metric
    up = result.higher_is_better.get(metric, True)
    summary = result.summary(k)
    designs = summary[~summary["reference"].astype(bool)]
    ok = designs[np.isfinite(designs[f"{metric}.{stat}"].to_numpy(dtype=float))]
    if ok.empty:
        raise SweepError(f"no design of the sweep has a finite {metric}; nothing to plot")
    scale, unit = _energy_unit(ok["energy_pj"].to_numpy(dtype=float))
    x, y = ok["energy_pj"].to_numpy(dtype=float) / scale, ok[f"{metric}.{stat}"].to_numpy(dtype=float)
    front = pareto_mask(ok, {f"{metric}.{stat}": up, "energy_pj": False})
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ax.scatter(x[~front], y[~front], s=28, color=_OTHER, label="design", zorder=2)
    if stat == "kpp":
        ax.scatter(x, ok[f"{metric}.mean"].to_numpy(dtype=float), s=22, facecolors="none", edgecolors="#1f77b4",
                   label=f"mean over {int(ok['chips'].max())} chips", zorder=2)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color=_FRONT, lw=1.2, zorder=3)
    ax.scatter(x[front], y[front], s=48, color=_FRONT, label=f"Pareto front ({stat.upper()} vs energy)", zorder=4)
    if x.max() > 20 * max(x.min(), 1e-300):
        ax.set_xscale("log")
    columns = varied_columns(summary)
    mid = (x.min() + x.max()) / 2 if ax.get_xscale() == "linear" else math.sqrt(x.min() * x.max())
    for (xi, yi), rows in _coincident(ok[front], x[front], y[front]).items():
        right = xi > mid  # labels point inwards, so none runs off the figure
        ax.annotate(_group_label(rows, columns), (xi, yi), textcoords="offset points", xytext=(-6 if right else 6, 4),
                    ha="right" if right else "left", fontsize=7, color="#444")
    if "reference" in summary.columns and summary["reference"].astype(bool).any():
        ref = reference_value(summary, metric)
        ax.axhline(ref, color="#2ca02c", ls="--", lw=1, label=f"float model ({fmt(ref)})")
        if within is not None:
            margin = within * abs(ref) if relative else within
            bound = ref - margin if up else ref + margin
            ax.axhline(bound, color="#2ca02c", ls=":", lw=1,
                       label=f"float model {'-' if up else '+'} {fmt(within * 100) + ' %' if relative else fmt(within)}")
            try:
                best = result.cheapest(within, metric, relative=relative, stat=stat, k=k)
                ax.scatter([best["energy_pj"] / scale], [best[f"{metric}.{stat}"]], marker="*", s=220,
                           color="#ff7f0e", edgecolors="black", zorder=5, label="cheapest within the bound")
            except SweepError:
                pass  # no design within the bound: the plot shows how far they are
    ax.set_xlabel(f"energy per token, every op ({unit})")
    ax.set_ylabel(_metric_label(metric, stat, k, int(ok["chips"].max())))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False, fontsize=8)
    return fig


def _table(rows: list[list[str]], head: list[str]) -> tuple[str, str]:
    """(Markdown, HTML) of one table."""
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return "\n".join(md), f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _design_rows(frame, columns: list[str], metric: str, k: float) -> tuple[list[str], list[list[str]]]:
    escale, eunit = _energy_unit(frame["energy_pj"].to_numpy(dtype=float))
    head = [*columns, f"{metric} mean", f"{metric} KPP ({k:g} %)", f"energy per token ({eunit})",
            "latency per token (µs)", "area (mm²)"]
    rows = [[fmt(r[c]) for c in columns] + [fmt(r[f"{metric}.mean"]), fmt(r[f"{metric}.kpp"]),
                                            fmt(r["energy_pj"] / escale), fmt(r["latency_ns"] / 1e3),
                                            fmt(r["area_mm2"])] for _, r in frame.iterrows()]
    return head, rows


def summary_sections(result, metric: str, *, within: float | None, relative: bool, k: float) -> list[tuple[str, str, str]]:
    """(title, Markdown, HTML) sections of the report: headline, cheapest design, front, failures."""
    summary = result.summary(k)
    designs = summary[~summary["reference"].astype(bool)]
    columns = varied_columns(summary) or ["target"]
    chips = int(designs["chips"].max()) if len(designs) else 0
    head = [f"{len(designs)} designs × up to {chips} programmed chips, {len(result.table)} rows in `{result.path}`."]
    has_ref = summary["reference"].astype(bool).any()
    if has_ref:
        head.append(f"Float model (fidelity exact): {metric} = {fmt(reference_value(summary, metric))}.")
    head.append(f"KPP (k = {k:g} %) is the value only {k:g} % of programmed chips do worse than "
                "(Yan et al., ICCAD 2023). Energy counts every op per token; area is the mapped products' arrays "
                "and periphery.")
    text = html.escape(" ".join(head))
    sections = [("Summary", " ".join(head), "<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", text) + "</p>")]
    if within is not None and has_ref:
        bound = f"{fmt(within * 100)} %" if relative else fmt(within)
        try:
            best = result.cheapest(within, metric, relative=relative, k=k)
            h, rows = _design_rows(best.to_frame().T, columns, metric, k)
            md, ht = _table(rows, h)
            sections.append((f"Cheapest design within {bound} of the float model", md, ht))
        except SweepError as e:
            sections.append((f"Cheapest design within {bound} of the float model", str(e),
                             f"<p>{html.escape(str(e))}</p>"))
    front = pareto_front(summary, metric, higher_is_better=result.higher_is_better.get(metric, True))
    h, rows = _design_rows(front, columns, metric, k)
    md, ht = _table(rows, h)
    sections.append((f"Pareto front: {metric} KPP against energy, latency and area per token", md, ht))
    failed = designs[designs.get("error", "").astype(str) != ""] if "error" in designs.columns else designs.iloc[:0]
    if len(failed):
        rows = [[_label(r, columns), str(r["error"])[:200]] for _, r in failed.iterrows()]
        md, ht = _table(rows, ["design", "why it was not evaluated"])
        sections.append(("Designs the compiler refused", md, ht))
    return sections


def front_lines(result, *, within: float | None = None, relative: bool = False, k: float = 1.0) -> list[str]:
    """The report's sections as plain text lines, for a terminal."""
    lines = []
    for title, md, _ in summary_sections(result, result.metric, within=within, relative=relative, k=k):
        lines += ["", title, md]
    return lines


def write_report(result, directory: str | Path, *, metric: str, within: float | None = None, relative: bool = False,
                 k: float = 1.0) -> dict[str, Path]:
    """Write `sweep.svg`, `sweep.png`, `sweep.md` and `sweep.html` into `directory`; returns them by kind."""
    import io

    import matplotlib.pyplot as plt

    directory = Path(directory)
    fig = plot_sweep(result, metric, k=k, within=within, relative=relative)
    svg, png = io.BytesIO(), io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, and it scales with the page
        fig.savefig(svg, format="svg")
    fig.savefig(png, format="png", dpi=200)
    plt.close(fig)
    sections = summary_sections(result, metric, within=within, relative=relative, k=k)
    title = f"Sweep: {metric} against cost per token"
    md = [f"# {title}", ""]
    for name, text, _ in sections:
        md += [f"## {name}", "", text, ""]
    md += ["![the metric of every design against its energy per token](sweep.svg)", ""]
    svg_text = svg.getvalue().decode("utf-8")
    svg_text = svg_text[svg_text.index("<svg"):]  # inline: drop the XML prolog and doctype
    style = ("body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}th{background:#f3f3f3}figure{margin:16px 0}figure svg{width:100%;height:auto}")
    body = "".join(f"<h2>{html.escape(name)}</h2>{part}" for name, _, part in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}"
            f"</style></head><body><h1>{html.escape(title)}</h1>{body}<figure>{svg_text}<figcaption>{html.escape(metric)}"
            " of every design against its energy per token; the red step line is the front of the two.</figcaption>"
            "</figure></body></html>")
    files = {"svg": directory / "sweep.svg", "png": directory / "sweep.png", "markdown": directory / "sweep.md",
             "html": directory / "sweep.html"}
    write_bytes(files["svg"], svg.getvalue(), "sweep plot")
    write_bytes(files["png"], png.getvalue(), "sweep plot")
    write_text(files["markdown"], "\n".join(md), "sweep summary")
    write_text(files["html"], page, "sweep report")
    return files
