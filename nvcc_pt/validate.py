"""Argument checks shared by every public entry point.

Each check returns the value (coerced where that loses nothing, such as a NumPy integer to `int`)
or raises the given `NvccPtError` subclass with a message naming the argument, the value and
what to pass instead. `where` prefixes the message with the call that was given the value.

Example:
    >>> from nvcc_pt.validate import integer
    >>> integer("seed", 3, lo=0, where="program")
    3
    >>> integer("seed", "x", lo=0, where="program")
    Traceback (most recent call last):
    nvcc_pt.errors.InputError: program: seed='x' must be an integer >= 0 (got str)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from nvcc_pt.errors import InputError, NvccPtError

SEED_MAX = 2**63 - 1
"""Largest seed: torch generators take 64-bit seeds, and seeds are mixed with op indices below 2^63."""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None, where: str = "",
            error: type[NvccPtError] = InputError) -> int:
    """`value` as an `int` in `[lo, hi]`; bools, floats (even 2.0) and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be an integer{_bounds(lo, hi)} "
                    f"(got {type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{_prefix(where)}{name}={value} is out of range; it must be an integer{_bounds(lo, hi)}")
    return value


def real(name: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         where: str = "", error: type[NvccPtError] = InputError) -> float:
    """`value` as a finite `float` in `[lo, hi]` (`(lo, hi]` with `lo_open`); NaN, infinities, bools, strings refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be a number (got {type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{_prefix(where)}{name}={value} must be a finite number")
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        low = f"> {lo}" if lo_open else f">= {lo}"
        span = (f"{low} and <= {hi}" if hi is not None else low) if lo is not None else f"<= {hi}"
        raise error(f"{_prefix(where)}{name}={value} is out of range; it must be {span}")
    return value


def optional_real(name: str, value: Any, **bounds: Any) -> float | None:
    """`real`, or None."""
    return None if value is None else real(name, value, **bounds)


def seed(name: str, value: Any, *, where: str = "", error: type[NvccPtError] = InputError) -> int:
    """A random seed: an integer in `[0, 2^63 - 1]`."""
    return integer(name, value, lo=0, hi=SEED_MAX, where=where, error=error)


def text(name: str, value: Any, *, where: str = "", nonempty: bool = True,
         error: type[NvccPtError] = InputError) -> str:
    """A `str` (non-empty unless told)."""
    if not isinstance(value, str):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be a string (got {type(value).__name__})")
    if nonempty and not value:
        raise error(f"{_prefix(where)}{name} must be a non-empty string")
    return value


def choice(name: str, value: Any, options: Iterable[Any], *, where: str = "",
           error: type[NvccPtError] = InputError) -> Any:
    """One of `options`, compared by equality and type (so `1` is not `True`)."""
    options = tuple(options)
    for option in options:
        if type(value) is type(option) and value == option:
            return value
    raise error(f"{_prefix(where)}{name}={_short(value)} is not one of {options}")


def boolean(name: str, value: Any, *, where: str = "", error: type[NvccPtError] = InputError) -> bool:
    """A real `bool` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be True or False (got {type(value).__name__})")
    return value


def instance(name: str, value: Any, kinds: type | tuple[type, ...], *, where: str = "",
             error: type[NvccPtError] = InputError) -> Any:
    """`value` if it is an instance of `kinds`."""
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise error(f"{_prefix(where)}{name} must be a {names}, got {type(value).__name__} {_short(value)}")
    return value


def finite_tensor(name: str, value: Any, *, where: str = "", dims: int | None = None,
                  error: type[NvccPtError] = InputError):
    """A floating-point `torch.Tensor` (with `dims` dimensions if given) whose entries are all finite."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise error(f"{_prefix(where)}{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        raise error(f"{_prefix(where)}{name} must have {dims} dimension(s), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise error(f"{_prefix(where)}{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise error(f"{_prefix(where)}{name} holds NaN or infinite entries; pass finite values")
    return value


def path(name: str, value: Any, *, where: str = "", error: type[NvccPtError] = InputError):
    """A file-system path (`str` or `os.PathLike`), non-empty and without NUL characters."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be a path (str or pathlib.Path), "
                    f"got {type(value).__name__}")
    as_text = os.fspath(value)
    if not as_text or "\0" in str(as_text):
        raise error(f"{_prefix(where)}{name}={_short(value)} is not a usable path; give a file or directory name")
    return value


def fidelity(value: Any, *, where: str = "") -> str:
    """One of `nvcc_pt.FIDELITIES`."""
    from nvcc_pt.errors import FidelityError
    from nvcc_pt.ops import FIDELITIES

    if not isinstance(value, str) or value not in FIDELITIES:
        raise FidelityError(f"{_prefix(where)}unknown fidelity {_short(value)}; choose one of {FIDELITIES}")
    return value


def globs(name: str, value: Any, *, where: str = "", error: type[NvccPtError] = InputError) -> tuple[str, ...]:
    """A tuple (or list) of glob strings, as a tuple; a bare string is refused (it would be read letter by letter)."""
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise error(f"{_prefix(where)}{name}={_short(value)} must be a tuple of glob strings, such as ('lm_head',)")
    return tuple(value)


def compile_options(*, seed_value: Any, fidelity_value: Any, precision: Any, soft_prompt: Any, constant_prompt: Any,
                    duplicate: Any, tokens: Any) -> None:
    """The options of `nvcc_pt.compile` other than the model, its example inputs, the target and the policy."""
    where = "compile"
    seed("seed", seed_value, where=where)
    fidelity(fidelity_value, where=where)
    if precision is not None:
        if not isinstance(precision, dict):
            raise InputError(f"compile: precision={_short(precision)} must be a dict mapping module-name globs to "
                             "bit overrides, such as {'*.mlp.*': {'weight_bits': 4}}")
        for pattern, override in precision.items():
            text("precision key", pattern, where=where)
            if not isinstance(override, dict) or not all(isinstance(k, str) for k in override):
                raise InputError(f"compile: precision[{pattern!r}]={_short(override)} must be a dict of bit fields, "
                                 "such as {'weight_bits': 4}")
    if soft_prompt is not None:
        finite_tensor("soft_prompt", soft_prompt, where=where, dims=2)
    boolean("constant_prompt", constant_prompt, where=where)
    if not isinstance(duplicate, (bool, dict)):
        raise InputError(f"compile: duplicate={_short(duplicate)} must be True, False or a dict "
                         "{op or module glob: copies}")
    if isinstance(duplicate, dict):  # the counts are checked against the chips' capacity (`DuplicationError`)
        for pattern in duplicate:
            text("duplicate key", pattern, where=where)
    integer("tokens", tokens, lo=1, hi=2**31, where=where)


# argparse types: a bad command-line value becomes argparse's usage error (exit status 2), not a traceback.
def _arg(convert, text: str):
    import argparse

    try:
        return convert(text)
    except (NvccPtError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def arg_count(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _arg(lambda t: integer("value", _int(t), lo=0, hi=2**31), text)


def arg_positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _arg(lambda t: integer("value", _int(t), lo=1, hi=2**31), text)


def arg_seed(text: str) -> int:
    """argparse type: a seed, 0 to 2^63 - 1."""
    return _arg(lambda t: seed("seed", _int(t)), text)


def arg_real(text: str) -> float:
    """argparse type: a finite number."""
    return _arg(lambda t: real("value", float(t)), text)


def arg_positive_real(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _arg(lambda t: real("value", float(t), lo=0.0, lo_open=True), text)


def arg_reals(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated finite numbers >= 0, at least one."""
    values = _arg(lambda t: tuple(real("value", float(x), lo=0.0) for x in t.split(",") if x.strip()), text)
    if not values:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} holds no numbers; give comma-separated values such as 0.05,0.1")
    return values


def _int(text: str) -> int:
    if len(text) > 30:  # int() of thousands of digits is slow and refused; any such value is out of range
        raise ValueError(f"{text[:30]!r}... is too long to be a count")
    return int(text)


__all__ = ["arg_count", "arg_positive", "arg_real", "arg_reals", "arg_positive_real", "arg_seed", "SEED_MAX", "boolean", "choice", "compile_options", "fidelity", "finite_tensor", "globs", "instance",
           "integer", "optional_real", "path", "real", "seed", "text"]
