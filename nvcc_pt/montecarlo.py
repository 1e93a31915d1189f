"""Monte Carlo over programmed instances of a compiled model: mean, spread and k-th percentile performance.

Every `cm.program(seed)` draws a new set of device variations, i.e. another chip. The k-th
percentile performance (KPP) of Yan et al., "Improving Realistic Worst-Case Performance of
NVCiM DNN Accelerators through Training with Right-Censored Gaussian Noise" (ICCAD 2023), is the
metric value that only k% of the instances fall below: a realistic worst case, where the mean
hides the bad chips and the minimum depends on how many were drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from nvcc_pt.errors import InputError


@dataclass(frozen=True)
class MonteCarloResult:
    """Statistics of a metric over programmed instances."""

    mean: float
    """Mean of the metric over the instances."""
    std: float
    """Sample standard deviation (0 for a single instance)."""
    kpp: float
    """k-th percentile performance: the value k% of the instances do worse than (linear interpolation)."""
    k: float
    """The percentile, in percent."""
    values: tuple[float, ...]
    """The metric of each instance, in seed order."""
    seeds: tuple[int, ...]
    """The programming seed of each instance."""


def montecarlo(cm, metric: Callable, seeds: int | Iterable[int] = 100, *, k: float = 1.0,
               higher_is_better: bool = True, progress: bool = True) -> MonteCarloResult:
    """Evaluate `metric(cm)` on `seeds` programmed instances of `cm` and summarize.

    Args:
        cm: a `CompiledModel`; it is re-programmed for every seed and restored to its own seed afterwards.
        metric: a function of the compiled model returning a number (accuracy, ROUGE, loss, ...).
        seeds: how many instances (seeds 0..N-1), or the seeds themselves.
        k: the percentile of the KPP, in percent (Yan et al. use 1).
        higher_is_better: False for metrics such as loss, whose bad tail is the upper one.
        progress: show a tqdm progress bar.

    Example:
        >>> res = nvcc_pt.montecarlo(cm, lambda m: accuracy(m, batch), seeds=200, k=1)
        >>> print(res.mean, res.std, res.kpp)
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise InputError(f"montecarlo needs at least one seed, got seeds={seeds!r}")
    if not 0 <= k <= 100:
        raise InputError(f"montecarlo: k={k!r} is a percentile and must lie in [0, 100]")
    own_seed = cm.seed
    values = []
    try:
        with torch.no_grad():
            for seed in tqdm(seed_list, desc="Monte Carlo", unit="chip", disable=not progress):
                value = metric(cm.program(seed))
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise InputError(f"metric returned {value!r} for seed {seed}; it must return one finite number")
                values.append(float(value))
    finally:
        cm.program(own_seed)
    v = torch.tensor(values, dtype=torch.float64)
    q = k / 100 if higher_is_better else 1 - k / 100
    return MonteCarloResult(mean=v.mean().item(), std=v.std().item() if len(values) > 1 else 0.0,
                            kpp=torch.quantile(v, q).item(), k=float(k), values=tuple(values), seeds=tuple(seed_list))
