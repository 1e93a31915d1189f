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
    with pytest.raises(nvcc_pt.InputError, match="draw_on"):
        nvcc_pt.montecarlo(cm, _error(x, ref), seeds=2, draw_on="gpu")
    with pytest.raises(nvcc_pt.InputError, match="draw_on"):
        cm.program(7, draw_on="elsewhere")
    assert cm.seed == 7


def _sequential_and_batched(cm, metric, seeds, per_pass):
    one = nvcc_pt.montecarlo(cm, metric, seeds=seeds, progress=False, instances_per_pass=1)
    many = nvcc_pt.montecarlo(cm, metric, seeds=seeds, progress=False, instances_per_pass=per_pass)
    return one, many


@pytest.mark.parametrize("fidelity", ["noisy", "adc", "bit-serial"])
def test_instances_evaluated_together_match_one_at_a_time(setup, fidelity):
    cm, x, ref = setup
    cm = cm.with_fidelity(fidelity)
    two_calls = lambda m: _error(x, ref)(m) + _error(x[:3], ref[:3])(m)  # noqa: E731
    one, many = _sequential_and_batched(cm, two_calls, 7, 3)  # groups of 3, 3 and 1
    assert many.values == pytest.approx(one.values, rel=1e-5) and len(set(many.values)) == 7
    assert cm.seed == 7 and cm.plan.states()[0][1].weight.dim() == 2  # left programmed as it was


def test_a_metric_whose_calls_differ_per_instance_is_run_one_at_a_time(setup):
    cm, x, ref = setup
    calls = []

    def feeds_back(m):  # the second call's input depends on this instance's first output
        calls.append(1)
        return m(torch.nn.functional.pad(m(x), (0, K - 29))).norm().item()

    one, many = _sequential_and_batched(cm, feeds_back, 5, 5)
    assert many.values == pytest.approx(one.values, rel=1e-5)
    assert len(calls) == 5 + 2 + 5  # sequential; then the leader, one diverging follower, and the 5 again


def test_instances_of_a_whole_llm_share_forward_passes():
    from nvcc_pt.models import build_model

    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    cm = nvcc_pt.compile(build_model("builtin:tiny-llama"), "rram1-128x128", fidelity="noisy", seed=1)
    logits = cm(ids).logits
    loss = lambda m: torch.nn.functional.cross_entropy(m(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()  # noqa: E731
    one, many = _sequential_and_batched(cm, loss, 4, 4)
    assert many.values == pytest.approx(one.values, rel=1e-5) and len(set(many.values)) == 4
    assert torch.equal(cm(ids).logits, logits)
    with pytest.raises(nvcc_pt.InputError, match="instances_per_pass"):
        nvcc_pt.montecarlo(cm, loss, seeds=2, instances_per_pass=0)


def test_instances_of_a_prompted_lm_share_passes_but_not_the_prompt():
    from nvcc_pt.models import build_model
    from nvcc_pt.prompt import SoftPromptLM

    lm = SoftPromptLM(build_model("builtin:tiny-llama"), num_virtual_tokens=3, seed=1)
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(0))
    prompt = lm.prompt.detach() + 0.1
    cm = nvcc_pt.compile(lm, "rram4-128x128", fidelity="noisy", seed=1)
    norm = lambda m: m(ids, soft_prompt=prompt).logits.norm().item()  # noqa: E731
    one, many = _sequential_and_batched(cm, norm, 3, 3)
    assert many.values == pytest.approx(one.values, rel=1e-5) and len(set(many.values)) == 3
