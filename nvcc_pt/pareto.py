"""Design-space search over a sweep's table: per-point statistics, the Pareto front and the cheapest design.

A sweep's table has one row per (point, chip). `summarize` folds the chips of each point into the
metric's mean, standard deviation and k-th percentile performance (KPP: the value only k% of the
chips do worse than; Yan et al., ICCAD 2023, as in `nvcc_pt.montecarlo`), next to the point's cost per
token. `pareto_front` keeps the designs no other design beats on every objective at once, and
`cheapest` answers "the cheapest design whose KPP stays within X of the float model".

Example:
    >>> summary = summarize(table, {"perplexity": False}, k=1.0)
    >>> front = pareto_front(summary, {"perplexity.kpp": False, "energy_pj": False})
    >>> best = cheapest(summary, "perplexity", within=0.05, relative=True, higher_is_better=False)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nvcc_pt import validate as check
from nvcc_pt.errors import SweepError
from nvcc_pt.sweep_engine import COST_COLUMNS
from nvcc_pt.sweep_grid import config_types

STATS = ("mean", "std", "kpp")
DEFAULT_COSTS = ("energy_pj", "latency_ns", "area_mm2")


def metric_names(table) -> list[str]:
    """The metrics a sweep's table holds (its `metric.<name>` columns)."""
    return [c.removeprefix("metric.") for c in table.columns if c.startswith("metric.")]


def summarize(table, higher_is_better: dict[str, bool], k: float = 1.0):
    """One row per point: its configuration, `chips`, `<metric>.mean/.std/.kpp` and its cost columns.

    `higher_is_better` gives each metric's direction, which decides the tail the KPP is taken from.
    """
    import pandas as pd

    check.real("percentile k", k, lo=0.0, hi=100.0, where="summarize", error=SweepError)
    if table is None or len(table) == 0:
        return pd.DataFrame()
    config = [c for c in config_types() if c in table.columns]
    rows = []
    for _, group in table.groupby("point_id", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {c: first[c] for c in config}
        row["chips"] = len(group)
        for name in metric_names(table):
            values = group[f"metric.{name}"].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            q = k / 100 if higher_is_better.get(name, True) else 1 - k / 100
            row[f"{name}.mean"] = values.mean() if len(values) else np.nan
            row[f"{name}.std"] = values.std(ddof=1) if len(values) > 1 else (0.0 if len(values) else np.nan)
            row[f"{name}.kpp"] = np.quantile(values, q) if len(values) else np.nan
        for c in (*COST_COLUMNS, "error"):
            if c in group.columns:
                row[c] = first[c]
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(frame, objectives: dict[str, bool]) -> np.ndarray:
    """True for the rows no other row dominates: at least as good on every objective and better on one.

    `objectives` maps a column to True when higher is better. Rows with a missing or infinite objective
    are never on the front (a design that failed, or a metric that diverged).

    Example:
        >>> pareto_mask(df, {"perplexity.kpp": False, "energy_pj": False})
    """
    if not objectives:
        raise SweepError("pareto_mask needs at least one objective column")
    missing = [c for c in objectives if c not in frame.columns]
    if missing:
        raise SweepError(f"the table has no column(s) {missing}; columns are {list(frame.columns)}")
    # Every objective as one to minimize.
    values = np.column_stack([frame[c].to_numpy(dtype=float) * (-1.0 if up else 1.0) for c, up in objectives.items()])
    valid = np.isfinite(values).all(axis=1)
    mask = np.zeros(len(frame), dtype=bool)
    candidates = values[valid]
    for i in np.flatnonzero(valid):
        dominated = ((candidates <= values[i]).all(axis=1) & (candidates < values[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def _designs(summary):
    return summary[~summary["reference"].astype(bool)] if "reference" in summary.columns else summary


def _metric_column(summary, metric: str, stat: str) -> str:
    check.choice("stat", stat, STATS, where="sweep search", error=SweepError)
    column = f"{metric}.{stat}"
    if column not in summary.columns:
        names = sorted({c.rsplit(".", 1)[0] for c in summary.columns if c.endswith(".kpp")})
        raise SweepError(f"the sweep has no metric {metric!r}; its metrics are {names}")
    return column


def pareto_front(summary, metric: str, *, higher_is_better: bool, stat: str = "kpp",
                 costs: tuple[str, ...] = DEFAULT_COSTS):
    """The designs on the Pareto front of `metric` (its `stat` over chips) against `costs`, cheapest energy first.

    The float reference is not a design and is left out.

    Example:
        >>> pareto_front(summary, "perplexity", higher_is_better=False, costs=("energy_pj",))
    """
    column = _metric_column(summary, metric, stat)
    designs = _designs(summary)
    mask = pareto_mask(designs, {column: higher_is_better, **{c: False for c in costs}})
    order = [c for c in (*costs, column) if c in designs.columns]
    return designs[mask].sort_values(order, kind="stable")


def reference_value(summary, metric: str) -> float:
    """The float model's `metric` (the reference point's mean); `SweepError` when the sweep has none."""
    column = _metric_column(summary, metric, "mean")
    ref = summary[summary["reference"].astype(bool)] if "reference" in summary.columns else summary.iloc[:0]
    if ref.empty or not np.isfinite(ref[column].iloc[0]):
        raise SweepError("the sweep has no float reference point; run it with reference=True (the default) or "
                         "pass reference= the float model's metric value")
    return float(ref[column].iloc[0])


def cheapest(summary, metric: str, within: float, *, higher_is_better: bool, relative: bool = False,
             stat: str = "kpp", cost: str = "energy_pj", reference: float | None = None):
    """The cheapest design (lowest `cost`) whose `metric` `stat` stays within `within` of the float model.

    Within means no worse than the reference by `within` (an absolute difference, or a fraction of the
    reference with `relative=True`). Ties in cost go to the better metric. Returns the summary row
    (a pandas Series); `SweepError` names the best value reached when no design qualifies.

    Example:
        >>> cheapest(summary, "perplexity", 0.05, relative=True, higher_is_better=False)["adc_bits"]
    """
    check.real("within", within, lo=0.0, where="cheapest", error=SweepError)
    column = _metric_column(summary, metric, stat)
    if cost not in summary.columns:
        raise SweepError(f"cost column {cost!r} is not in the sweep; cost columns are {list(COST_COLUMNS)}")
    ref = reference_value(summary, metric) if reference is None else float(reference)
    margin = within * abs(ref) if relative else within
    designs = _designs(summary)
    values = designs[column].to_numpy(dtype=float)
    ok = values >= ref - margin if higher_is_better else values <= ref + margin
    if not ok.any():
        finite = values[np.isfinite(values)]
        best = (finite.max() if higher_is_better else finite.min()) if len(finite) else float("nan")
        bound = ref - margin if higher_is_better else ref + margin
        raise SweepError(f"no design keeps {metric} {stat} within {within:g}{' (relative)' if relative else ''} of the "
                         f"float model's {ref:.6g} (bound {bound:.6g}); the best reached is {best:.6g}. Loosen the "
                         "bound or sweep better designs (more ADC bits, lower sigma)")
    chosen = designs[ok].sort_values([cost, column], ascending=[True, not higher_is_better], kind="stable")
    return chosen.iloc[0]
