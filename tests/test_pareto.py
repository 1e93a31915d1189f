"""Design-space search on synthetic tables: the Pareto front, KPP over chips and the cheapest design."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")

from nvcc_pt.errors import SweepError  # noqa: E402
from nvcc_pt.pareto import cheapest, pareto_front, pareto_mask, summarize  # noqa: E402


def _summary(points: list[tuple[float, float, float]], reference: float | None = 1.0):
    """Synthetic per-point summary: (loss KPP, energy, latency) per design, plus a float reference row."""
    rows = [{"point_id": f"p{i}", "reference": False, "adc_bits": i, "loss.mean": m, "loss.std": 0.0, "loss.kpp": m,
             "energy_pj": e, "latency_ns": t, "area_mm2": 1.0, "error": ""} for i, (m, e, t) in enumerate(points)]
    if reference is not None:
        rows.insert(0, {"point_id": "ref", "reference": True, "adc_bits": 99, "loss.mean": reference, "loss.std": 0.0,
                        "loss.kpp": reference, "energy_pj": 0.0, "latency_ns": 0.0, "area_mm2": 0.0, "error": ""})
    return pd.DataFrame(rows)


def _brute_front(values: np.ndarray) -> set[int]:
    """Indices no other row dominates (all objectives minimized), by the definition."""
    out = set()
    for i, v in enumerate(values):
        if not np.isfinite(v).all():
            continue
        if not any(np.isfinite(w).all() and (w <= v).all() and (w < v).any() for w in values):
            out.add(i)
    return out


def test_front_of_a_known_table():
    #            loss  energy latency
    points = [(1.0, 10.0, 5.0),   # 0 front: best loss
              (2.0, 5.0, 5.0),    # 1 front
              (3.0, 1.0, 5.0),    # 2 front: cheapest
              (2.5, 6.0, 5.0),    # 3 dominated by 1
              (1.0, 11.0, 5.0),   # 4 dominated by 0
              (2.0, 5.0, 4.0),    # 5 front on latency only: dominates 1 once latency counts
              (math.nan, 0.1, 0.1)]  # 6 a failed design: never on the front
    s = _summary(points, reference=None)
    two = pareto_mask(s, {"loss.kpp": False, "energy_pj": False})
    assert set(np.flatnonzero(two)) == {0, 1, 2, 5}  # 1 and 5 tie on loss and energy: neither dominates
    front = pareto_front(s, "loss", higher_is_better=False, costs=("energy_pj", "latency_ns"))
    assert list(front["adc_bits"]) == [2, 5, 0]  # cheapest energy first; 1 is now dominated by 5
    up = pareto_mask(s.assign(acc=-s["loss.kpp"]), {"acc": True, "energy_pj": False})
    assert (up == two).all()  # maximizing the negation is the same front


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_the_definition_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(40, 3)).astype(float)  # small integers: many ties
    values[rng.random(40) < 0.1, 0] = np.nan
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    mask = pareto_mask(frame, {"a": False, "b": False, "c": True})
    assert set(np.flatnonzero(mask)) == _brute_front(values * [1, 1, -1])


def test_cheapest_within_a_bound_of_the_float_model():
    s = _summary([(1.04, 10.0, 1.0), (1.2, 5.0, 1.0), (1.04, 8.0, 1.0), (1.5, 1.0, 1.0)])
    assert cheapest(s, "loss", 0.05, higher_is_better=False)["adc_bits"] == 2
    assert cheapest(s, "loss", 0.25, higher_is_better=False)["adc_bits"] == 1
    assert cheapest(s, "loss", 0.05, higher_is_better=False, relative=True)["adc_bits"] == 2
    assert cheapest(s, "loss", 0.05, higher_is_better=False, cost="latency_ns")["adc_bits"] == 0  # tie: lower loss
    with pytest.raises(SweepError, match=r"best reached is 1\.04"):
        cheapest(s, "loss", 0.01, higher_is_better=False)
    acc = s.assign(**{"acc.kpp": 2 - s["loss.kpp"], "acc.mean": 2 - s["loss.mean"]})
    assert cheapest(acc, "acc", 0.05, higher_is_better=True)["adc_bits"] == 2
    with pytest.raises(SweepError, match="no float reference"):
        cheapest(_summary([(1.0, 1.0, 1.0)], reference=None), "loss", 0.1, higher_is_better=False)
    with pytest.raises(SweepError, match="no metric 'ppl'"):
        cheapest(s, "ppl", 0.1, higher_is_better=False)


def test_summary_kpp_is_the_montecarlo_percentile():
    values = [3.0, 1.0, 2.0, 7.0, 5.0]
    table = pd.DataFrame({"point_id": ["p"] * 5, "reference": [False] * 5, "chip": range(5), "metric.acc": values,
                          "energy_pj": [1.0] * 5})
    for up, q in ((True, 0.1), (False, 0.9)):
        row = summarize(table, {"acc": up}, k=10.0).iloc[0]
        assert row["acc.kpp"] == pytest.approx(torch.quantile(torch.tensor(values, dtype=torch.float64), q).item())
        assert row["acc.mean"] == pytest.approx(3.6) and row["chips"] == 5
        assert row["acc.std"] == pytest.approx(np.std(values, ddof=1))
