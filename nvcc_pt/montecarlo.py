"""Monte Carlo over programmed instances of a compiled model: mean, spread and k-th percentile performance.

Every `cm.program(seed)` draws a new set of device variations, i.e. another chip. The k-th
percentile performance (KPP) of Yan et al., "Improving Realistic Worst-Case Performance of
NVCiM DNN Accelerators through Training with Right-Censored Gaussian Noise" (ICCAD 2023), is the
metric value that only k% of the instances fall below: a realistic worst case, where the mean
hides the bad chips and the minimum depends on how many were drawn.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.calls import build_output
from nvcc_pt.errors import InputError
from nvcc_pt.ops import CHIP_ATTR


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


class _Diverged(Exception):
    """A metric called the model differently for another instance: its calls cannot be shared."""


class _Instances:
    """Stands in for `cm` inside the metric while several programmed instances are evaluated at once.

    For the first instance (the leader) every call runs all instances in one forward, the inputs
    repeated along their leading (batch) dimension, and keeps each instance's share of the output.
    For the others, the metric runs again and each call returns that instance's share of the
    leader's call, after checking the inputs are the same ones.
    """

    def __init__(self, cm, count: int):
        self._cm, self._count = cm, count
        # which graph inputs to repeat: those with a batch dimension
        self._batched = [spec.shape[:1] == (None,) for spec in cm.plan.capture.inputs]
        self._calls: list[tuple[tuple, dict, list]] = []
        self._instance, self._next = 0, 0

    def __getattr__(self, name):
        return getattr(self._cm, name)

    def follow(self, instance: int) -> _Instances:
        self._instance, self._next = instance, 0
        return self

    def __call__(self, *args, **kwargs):
        if self._instance == 0:
            flat = self._cm.prepare_inputs(*args, **kwargs)
            repeated = tuple(torch.cat([a] * self._count) if batched else a for a, batched in zip(flat, self._batched))
            out = self._cm.run_graph(repeated)
            shares = [build_output(self._cm.plan.capture, tuple(t.chunk(self._count)[i] for t in out))
                      for i in range(self._count)]
            self._calls.append((args, kwargs, shares))
            return shares[0]
        if self._next >= len(self._calls) or not _same((args, kwargs), self._calls[self._next][:2]):
            raise _Diverged
        self._next += 1
        return self._calls[self._next - 1][2][self._instance]

    forward = __call__


def _same(a, b) -> bool:
    flat_a, spec_a = tree_flatten(a)
    flat_b, spec_b = tree_flatten(b)
    if spec_a != spec_b:
        return False
    return all(x is y or (torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y)
               for x, y in zip(flat_a, flat_b))


def _instances_per_pass(cm, requested: int | None, seeds: int) -> int:
    """How many instances one forward evaluates: `requested`, or as many as fit a memory budget (at most 16)."""
    if requested is not None:
        return min(requested, seeds)
    if cm.plan.capture.kind == "module" and cm.plan.capture.inputs[0].shape[:1] != (None,):
        return 1  # no dynamic leading (batch) dimension to fold instances into
    device = cm.device
    if device.type != "cuda" or any(getattr(s.levels, CHIP_ATTR, None) is not None for _, s in cm.plan.states()):
        return 1  # a chip regenerated per call (`simulator.REGENERATE_LEVELS`) is programmed for each seed instead
    per_instance = sum(s.programmed_bytes() for _, s in cm.plan.states())
    return max(1, min(16, seeds, torch.cuda.mem_get_info(device)[0] // 4 // max(per_instance, 1)))


def _value(metric: Callable, model, seed: int) -> float:
    value = metric(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"metric returned {value!r} for seed {seed}; it must return one finite number")
    return float(value)


def _stack_instances(cm, seeds: list[int], draw_on: str) -> None:
    """Program every seed and leave each op holding all of them stacked (`CimState`'s instance layout).

    The stacks reuse the previous group's buffers where they fit, so CUDA graphs recorded for it stay valid.
    """
    from nvcc_pt.targets.simulator import store_chip

    states = cm.plan.states()
    held = {(name, key): getattr(state, key) for name, state in states for key in ("weight", "levels")}
    stacks: dict[tuple[str, str], torch.Tensor] = {}
    for i, seed in enumerate(seeds):
        cm.program(seed, draw_on=draw_on)
        for name, state in states:
            store_chip(state)  # stacked instances are stored, regenerated chips included
            for key in ("weight", "levels"):
                value = getattr(state, key)
                if not value.numel():
                    continue
                stack = stacks.get((name, key))
                if stack is None:
                    old, shape = held[(name, key)], (len(seeds), *value.shape)
                    fits = old.shape == shape and old.dtype == value.dtype and old.device == value.device
                    stack = stacks[(name, key)] = old if fits else value.new_empty(shape)
                stack[i].copy_(value)
    for (name, key), stack in stacks.items():
        setattr(dict(states)[name], key, stack)
    cm._state_replaced()


MAX_SEEDS = 10**7
"""More instances than this in one call is a typing error (each is a forward pass)."""


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    """`seeds` as a list: N gives 0..N-1; an iterable gives its own seeds (each a valid seed)."""
    if isinstance(seeds, (str, bytes)) or not (isinstance(seeds, Iterable) or isinstance(seeds, numbers.Integral)):
        raise InputError(f"montecarlo: seeds={seeds!r} must be a count or an iterable of integer seeds")
    if not isinstance(seeds, Iterable):
        return list(range(check.integer("seeds", max(int(seeds), 0), hi=MAX_SEEDS, where="montecarlo")))
    out = []
    for s in seeds:
        out.append(check.seed("seed", s, where="montecarlo"))
        if len(out) > MAX_SEEDS:
            raise InputError(f"montecarlo: more than {MAX_SEEDS} seeds; pass fewer")
    return out


def montecarlo(cm, metric: Callable, seeds: int | Iterable[int] = 100, *, k: float = 1.0,
               higher_is_better: bool = True, progress: bool = True,
               instances_per_pass: int | None = None, draw_on: str = "cpu") -> MonteCarloResult:
    """Evaluate `metric(cm)` on `seeds` programmed instances of `cm` and summarize.

    On a GPU, several instances are evaluated per forward pass where memory allows: each op holds their
    weights stacked and the model sees its inputs repeated along the batch dimension. A metric
    that calls the model on the same inputs for every instance (a fixed evaluation set, the usual
    case) is thus run once per group of instances; one whose calls differ between instances
    (generation that feeds back its own outputs, say) is detected and evaluated one instance at a time.

    Args:
        cm: a `CompiledModel`; it is re-programmed for every seed and restored to its own seed afterwards.
        metric: a function of the compiled model returning a number (accuracy, ROUGE, loss, ...).
        seeds: how many instances (seeds 0..N-1), or the seeds themselves.
        k: the percentile of the KPP, in percent (Yan et al. use 1).
        higher_is_better: False for metrics such as loss, whose bad tail is the upper one.
        progress: show a tqdm progress bar.
        instances_per_pass: instances per forward pass; None picks, on a GPU, as many as a quarter of
            its free memory holds (at most 16), and 1 on the CPU, where a forward over I times the rows costs
            what I forwards cost; 1 turns batching off.
        draw_on: accepted for older callers, changes nothing (`CompiledModel.program`: chips are drawn where
            the model is, the same chip on every device).

    Example:
        >>> res = nvcc_pt.montecarlo(cm, lambda m: accuracy(m, batch), seeds=200, k=1)
        >>> print(res.mean, res.std, res.kpp)
    """
    seed_list = _seed_list(seeds)
    if not seed_list:
        raise InputError(f"montecarlo needs at least one seed, got seeds={seeds!r}")
    from nvcc_pt.api import CompiledModel

    check.instance("cm", cm, CompiledModel, where="montecarlo")
    if not callable(metric):
        raise InputError(f"montecarlo: metric must be a function of the compiled model, got {type(metric).__name__}")
    check.real("percentile k", k, lo=0.0, hi=100.0, where="montecarlo")
    check.boolean("higher_is_better", higher_is_better, where="montecarlo")
    check.boolean("progress", progress, where="montecarlo")
    if instances_per_pass is not None:
        check.integer("instances_per_pass", instances_per_pass, lo=1, hi=4096, where="montecarlo")
    check.choice("draw_on", draw_on, ("cpu", "device"), where="montecarlo")
    per_pass = _instances_per_pass(cm, instances_per_pass, len(seed_list))
    own_seed, own_draw = cm.seed, cm.plan.results.get("draw_on", "cpu")
    values: list[float] = []
    bar = tqdm(total=len(seed_list), desc="Monte Carlo", unit="chip", disable=not progress)
    try:
        with torch.no_grad():
            while len(values) < len(seed_list):
                group = seed_list[len(values):len(values) + per_pass]
                if len(group) > 1:
                    _stack_instances(cm, group, draw_on)
                    shared = _Instances(cm, len(group))
                    try:
                        found = [_value(metric, shared.follow(i), seed) for i, seed in enumerate(group)]
                    except _Diverged:
                        per_pass = 1  # this metric's calls depend on the instance: one at a time from here
                        continue
                else:
                    found = [_value(metric, cm.program(group[0], draw_on=draw_on), group[0])]
                values.extend(found)
                bar.update(len(found))
    finally:
        bar.close()
        cm.program(own_seed, draw_on=own_draw)
    v = torch.tensor(values, dtype=torch.float64)
    q = k / 100 if higher_is_better else 1 - k / 100
    return MonteCarloResult(mean=v.mean().item(), std=v.std().item() if len(values) > 1 else 0.0,
                            kpp=torch.quantile(v, q).item(), k=float(k), values=tuple(values), seeds=tuple(seed_list))
