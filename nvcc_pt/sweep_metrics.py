"""Task metrics for sweeps: any function of a compiled model, and two built-ins a TOML file can name.

A metric is `metric(cm) -> float` or `-> dict[str, float]` (several metrics from one evaluation); a
sweep evaluates it once per programmed chip. The built-ins measure a causal LM against its own float
model on a corpus drawn from that model (so they need no data set and suit randomly initialized models):

- `perplexity`: exp of the mean next-token negative log-likelihood of the corpus (lower is better).
- `relative_error`: `||logits - float logits|| / ||float logits||` on the corpus (lower is better; the
  float model scores 0).

The corpus is `batch` sequences of `tokens` ids sampled from the float model itself (seeded), so the
float model's perplexity is low and a design's rise above it measures what the hardware loses.

Example:
    >>> metric = builtin_metric("perplexity", batch=4, tokens=32, seed=0)
    >>> nvcc_pt.sweep("builtin:tiny-llama", {"adc_bits": [4, 8]}, metric, chips=4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError, SweepError

BUILTIN_METRICS = ("perplexity", "relative_error")


@dataclass(frozen=True)
class BuiltinMetric:
    """A built-in metric by name, with its corpus size; `prepare(model)` binds it to a float model."""

    name: str
    """`perplexity` or `relative_error`."""
    batch: int = 4
    """Sequences in the corpus."""
    tokens: int = 32
    """Tokens per sequence."""
    seed: int = 0
    """Seeds the corpus drawn from the float model."""

    def __post_init__(self) -> None:
        check.choice("metric", self.name, BUILTIN_METRICS, where="sweep", error=SweepError)
        check.integer("batch", self.batch, lo=1, hi=4096, where=f"metric {self.name!r}", error=SweepError)
        check.integer("tokens", self.tokens, lo=2, hi=65536, where=f"metric {self.name!r}", error=SweepError)
        check.seed("seed", self.seed, where=f"metric {self.name!r}", error=SweepError)

    @property
    def higher_is_better(self) -> bool:
        return False

    @property
    def key(self) -> dict[str, Any]:
        """What identifies the metric in a sweep's output."""
        return {"builtin": self.name, "batch": self.batch, "tokens": self.tokens, "seed": self.seed}

    def prepare(self, model: torch.nn.Module) -> Callable:
        """The metric as a function of a compiled model, with the corpus and float logits computed once."""
        ids = sample_corpus(model, self.batch, self.tokens, self.seed)
        on = ids.to(next(model.parameters()).device)
        with torch.no_grad():
            reference = _logits(model(input_ids=on, use_cache=False) if _is_hf(model) else model(on))
        return _Bound(self.name, ids, reference.float().cpu())

    def __call__(self, cm) -> float:
        raise InputError(f"built-in metric {self.name!r} must be bound to its float model first: "
                         "metric.prepare(model)(cm)")


class _Bound:
    def __init__(self, name: str, ids: torch.Tensor, reference: torch.Tensor):
        self.name, self.ids, self.reference = name, ids, reference

    def __call__(self, cm) -> float:
        ids = self.ids.to(cm.device)
        with torch.no_grad():
            logits = _logits(cm(ids)).float()
        if self.name == "relative_error":
            ref = self.reference.to(logits.device)
            return ((logits - ref).norm() / ref.norm()).item()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return math.exp(nll.item())


def _is_hf(model) -> bool:
    return hasattr(model, "config") and hasattr(model, "generation_config")


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def sample_corpus(model: torch.nn.Module, batch: int, tokens: int, seed: int) -> torch.Tensor:
    """`[batch, tokens]` ids sampled from a causal LM's own next-token distribution, seeded.

    Example:
        >>> sample_corpus(build_model("builtin:tiny-llama"), 2, 8, 0).shape
        torch.Size([2, 8])
    """
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 2:
        raise InputError(f"the built-in metrics need a causal LM with config.vocab_size; {type(model).__name__} has "
                         "none. Pass a function of the compiled model as the metric instead")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, 1), generator=gen)
    device = next(model.parameters()).device
    with torch.no_grad():
        for _ in range(tokens - 1):  # no KV cache: the corpus is small, and every model family runs this way
            out = model(input_ids=ids.to(device), use_cache=False) if _is_hf(model) else model(ids.to(device))
            probs = torch.softmax(_logits(out)[:, -1].float().cpu(), dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return ids


def resolve_metric(metric: Any, name: str | None = None) -> tuple[Any, str, dict[str, Any]]:
    """`(metric, column name, identity)` for a callable, a `BuiltinMetric`, a built-in name or a TOML table.

    The identity is stored with the sweep's results; rerunning into the same output with another metric
    is refused. A plain function is identified by `name` or its qualified name.
    """
    if isinstance(metric, str):
        metric = BuiltinMetric(metric)
    elif isinstance(metric, dict):
        metric = builtin_metric(**metric)
    if isinstance(metric, BuiltinMetric):
        return metric, name or metric.name, {**metric.key, "name": name or metric.name}
    if not callable(metric):
        raise SweepError(f"metric must be a function of the compiled model (cm -> float or dict), a built-in name "
                         f"{BUILTIN_METRICS} or a BuiltinMetric, got {type(metric).__name__}")
    qualname = f"{getattr(metric, '__module__', '')}.{getattr(metric, '__qualname__', type(metric).__qualname__)}"
    if name is not None:
        check.text("metric_name", name, where="sweep", error=SweepError)
    return metric, name or getattr(metric, "__name__", "metric"), {"callable": name or qualname,
                                                                    "name": name or getattr(metric, "__name__", "metric")}


def builtin_metric(name: str, **options: Any) -> BuiltinMetric:
    """A `BuiltinMetric` from a name and its options (`batch`, `tokens`, `seed`), as a TOML `[metric]` gives them."""
    known = {"batch", "tokens", "seed"}
    unknown = set(options) - known
    if unknown:
        raise SweepError(f"metric {name!r} has no option(s) {sorted(unknown)}; options are {sorted(known)}")
    return BuiltinMetric(name, **options)


def values_of(result: Any, name: str, point: str) -> dict[str, float]:
    """A metric's return value as {column: number}; anything else raises `InputError` naming the point."""
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        result = result.item()
    items = result.items() if isinstance(result, dict) else [(name, result)]
    out = {}
    for key, value in items:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"metric {name!r} returned {result!r} at {point}; it must return a number or a dict of "
                             "names to numbers")
        out[key] = float(value)
    return out
