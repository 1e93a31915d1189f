"""Offline metrics of the LaMP benchmark (Salemi et al., ACL 2024, Sec. 4): accuracy and macro F1 for
classification, MAE and RMSE for rating, ROUGE-1 and ROUGE-L F-measures for generation.

ROUGE is computed here (lower-cased alphanumeric tokens, no stemming) so nothing is downloaded; numbers
match `rouge-score` with `use_stemmer=False` up to its tokenizer's handling of non-ASCII text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from nvcc_pt.errors import InputError


def _check(preds: Sequence, golds: Sequence, numbers_too: bool = False) -> None:
    kinds = (str, int, float) if numbers_too else (str,)
    for name, seq in (("predictions", preds), ("references", golds)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise InputError(f"{name} must be a list of strings, got {type(seq).__name__}")
        for v in seq:
            if isinstance(v, bool) or not isinstance(v, kinds):
                what = "strings or numbers" if numbers_too else "strings"
                raise InputError(f"{name} must all be {what}; found {v!r:.80} ({type(v).__name__})")
    if len(preds) != len(golds):
        raise InputError(f"{len(preds)} predictions for {len(golds)} references; give one prediction per reference")
    if not golds:
        raise InputError("no references to score; give at least one (prediction, reference) pair")


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of exact matches (after stripping whitespace)."""
    _check(preds, golds)
    return sum(p.strip() == g.strip() for p, g in zip(preds, golds)) / len(golds)


def f1_macro(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Macro-averaged F1 over `labels` (default: every label that occurs in `golds`)."""
    _check(preds, golds)
    preds, golds = [p.strip() for p in preds], [g.strip() for g in golds]
    labels = sorted(set(golds)) if labels is None else list(labels)
    if not labels or not all(isinstance(label, str) for label in labels):
        raise InputError(f"f1: labels={labels!r:.80} must be a non-empty list of strings (or None for the golds' labels)")
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds))
        fp = sum(p == label and g != label for p, g in zip(preds, golds))
        fn = sum(p != label and g == label for p, g in zip(preds, golds))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _to_float(x: str | float) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def mae(preds: Sequence[str | float], golds: Sequence[str | float]) -> float:
    """Mean absolute error; a prediction that is not a number counts as the largest error on the 1-5 scale (4)."""
    _check(preds, golds, numbers_too=True)
    errs = [abs(_to_float(p) - _to_float(g)) for p, g in zip(preds, golds)]
    return sum(4.0 if math.isnan(e) else e for e in errs) / len(errs)


def rmse(preds: Sequence[str | float], golds: Sequence[str | float]) -> float:
    """Root mean squared error; a prediction that is not a number counts as an error of 4."""
    _check(preds, golds, numbers_too=True)
    errs = [abs(_to_float(p) - _to_float(g)) for p, g in zip(preds, golds)]
    return math.sqrt(sum((4.0 if math.isnan(e) else e) ** 2 for e in errs) / len(errs))


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _f(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge1(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Mean ROUGE-1 F-measure (unigram overlap)."""
    _check(preds, golds)
    total = 0.0
    for p, g in zip(preds, golds):
        tp, tg = _tokens(p), _tokens(g)
        total += _f(sum((Counter(tp) & Counter(tg)).values()), len(tp), len(tg))
    return total / len(golds)


def rouge_l(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence)."""
    _check(preds, golds)
    total = 0.0
    for p, g in zip(preds, golds):
        tp, tg = _tokens(p), _tokens(g)
        total += _f(_lcs(tp, tg), len(tp), len(tg))
    return total / len(golds)


METRICS = {"accuracy": accuracy, "f1": f1_macro, "mae": mae, "rmse": rmse, "rouge1": rouge1, "rougeL": rouge_l}
"""Every metric by the name the harness and the CLI use."""

LOWER_IS_BETTER = frozenset({"mae", "rmse"})
