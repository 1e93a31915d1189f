"""Strict JSON for files nvcc_pt reads from users: one meaning per document, or `PlanFormatError`.

Refused: invalid UTF-8, `NaN`/`Infinity` and numbers that overflow to them, duplicate keys (two readers
could disagree on which wins), nesting deeper than `MAX_DEPTH`, and anything `json` itself refuses.

    >>> loads_strict(b'{"a": [1, 2.5]}', "plan.json")
    {'a': [1, 2.5]}
"""

from __future__ import annotations

import json
import math
from typing import Any

from nvcc_pt.errors import PlanFormatError

MAX_DEPTH = 64
"""Deeper than any document nvcc_pt writes; bounds the work of every reader that walks a document."""


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {k[:80]!r}")
        out[k] = v
    return out


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows a float")
    return value


def depth(doc: Any) -> int:
    """Nesting depth of a parsed document (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        value, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(value, dict):
            stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, d + 1) for v in value)
    return deepest


def loads_strict(data: bytes, where: str) -> Any:
    """Parse `data` as strict JSON; `where` names the file in the error."""
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except RecursionError as e:
        raise PlanFormatError(f"{where} is not valid JSON (nested too deeply); the file is corrupted or hostile, "
                              "save the plan again") from e
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise PlanFormatError(f"{where} is not valid JSON ({str(e)[:200]}); the file is corrupted, save the plan again") from e
    if depth(doc) > MAX_DEPTH:
        raise PlanFormatError(f"{where} nests deeper than {MAX_DEPTH} levels; no nvcc_pt file does, it is corrupted "
                              "or hostile")
    return doc


def dumps_canonical(doc: Any) -> bytes:
    """One byte string per document: sorted keys, no spaces (what digests are taken over)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
