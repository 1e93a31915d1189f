"""nvcc_pt.montecarlo: statistics over programmed instances."""

from __future__ import annotations

import pytest
import torch

import nvcc_pt

K, N, B = 37, 45, 6


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.ReLU(), torch.nn.Linear(N, 29))
    x = torch.randn(B, K, generator=torch.Generator().manual_seed(1))
    spec = nvcc_pt.get_target("rram4-128x128").replace(rows=16, cols=24)
    cm = nvcc_pt.compile(model, target=spec, example_inputs=(x,), seed=7)
    ref = model(x).detach()
    return cm, x, ref


def _error(x, ref):
    return lambda m: ((m(x) - ref).norm() / ref.norm()).item()


def test_statistics_over_seeds(setup):
    cm, x, ref = setup
    before = cm(x)
    res = nvcc_pt.montecarlo(cm, _error(x, ref), seeds=12, k=10, higher_is_better=False, progress=False)
    assert res.seeds == tuple(range(12)) and len(set(res.values)) == 12  # every seed a different chip
    values = torch.tensor(res.values, dtype=torch.float64)
    assert res.mean == pytest.approx(values.mean().item())
    assert res.std == pytest.approx(values.std().item()) and res.std > 0
    assert res.kpp == pytest.approx(torch.quantile(values, 0.9).item())  # lower is better: the upper tail
    assert res.kpp > res.mean
    assert cm.seed == 7 and torch.equal(cm(x), before)  # the model is left as it was
    again = nvcc_pt.montecarlo(cm, _error(x, ref), seeds=[3, 5], progress=False)
    assert again.values == (res.values[3], res.values[5])  # a seed is the same chip every time


def test_kpp_of_a_higher_is_better_metric_is_the_lower_tail(setup):
    cm, x, ref = setup
    res = nvcc_pt.montecarlo(cm, lambda m: -_error(x, ref)(m), seeds=8, k=5, progress=False)
    assert res.kpp == pytest.approx(torch.quantile(torch.tensor(res.values, dtype=torch.float64), 0.05).item())
    assert res.kpp < res.mean


def test_bad_arguments(setup):
    cm, x, ref = setup
    with pytest.raises(nvcc_pt.InputError, match="at least one seed"):
        nvcc_pt.montecarlo(cm, _error(x, ref), seeds=0)
    with pytest.raises(nvcc_pt.InputError, match="percentile"):
        nvcc_pt.montecarlo(cm, _error(x, ref), seeds=2, k=120)
    with pytest.raises(nvcc_pt.InputError, match="one finite number"):
        nvcc_pt.montecarlo(cm, lambda m: m(x), seeds=2, progress=False)
    assert cm.seed == 7
