"""One look for every figure and table nvcc_pt draws: a colour per cost component, values with SI prefixes and
units, and op labels that stay readable at hundreds of ops.

    >>> si(235_800, "pJ")
    '235.8 nJ'
    >>> short_label("model.layers.11.self_attn.q_proj", 20)
    '…11.self_attn.q_proj'
"""

from __future__ import annotations

import math
import re

COMPONENT_COLORS = {
    "array": "#4c72b0", "dac": "#55a868", "adc": "#c44e52", "shift_add": "#8172b2", "input_buffer": "#ccb974",
    "output_buffer": "#64b5cd", "interconnect": "#937860", "programming": "#da8bc3", "digital": "#8c8c8c",
    "other_digital": "#4d4d4d",
}
"""Every plot that splits a cost by component uses these colours, so ADC red means the ADC everywhere."""
COMPONENT_LABELS = {
    "array": "crossbar arrays", "dac": "DACs", "adc": "ADCs", "shift_add": "shift-and-add",
    "input_buffer": "input buffers", "output_buffer": "output buffers", "interconnect": "interconnect",
    "programming": "cell writes (dynamic operands)", "digital": "digital products", "other_digital": "other digital ops",
}
CIM_COLOR, DIGITAL_COLOR, HIGHLIGHT_COLOR = "#4c72b0", "#dd8452", "#c44e52"
"""Crossbars, the digital baseline, and the one mark that means "look here" (a bottleneck, a layer that hurts)."""
FREE_COLOR, LM_HEAD_COLOR = "#f2f2f2", "#222222"
"""A tile map's free arrays (near white) and its output head (near black): neither can be mistaken for an op."""
OP_COLORS = ("#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#937860", "#da8bc3", "#dd8452", "#a1c9f4",
             "#8de5a1", "#d0bbff", "#fffea3", "#b9f2f0", "#debb9b", "#fab0e4")
"""Colours of a tile map's blocks (no grey, no red, no black: those mean free, highlight and the head)."""
DPI = 200
_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"),
             (1e-12, "p"), (1e-15, "f"))
_SCALE = {"p": 1e-12, "n": 1e-9, "µ": 1e-6, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
_BASES = ("J", "s", "W", "m²", "mm²", "B", "Hz", "B/s", "MAC/s")


def _split_unit(unit: str) -> tuple[float, str]:
    """(factor to base unit, base unit) of a unit such as "pJ" or "ns"; (1, unit) for units without a base."""
    if unit == "mm2" or unit == "mm²":
        return 1.0, "mm²"  # areas stay in mm²: "0.37 mm²" reads better than "370 000 µm²"
    for base in _BASES:
        if unit.endswith(base) and len(unit) == len(base) + 1 and unit[0] in _SCALE:
            return _SCALE[unit[0]], base
    return 1.0, unit


def si(value: float | None, unit: str = "", digits: int = 4) -> str:
    """`value` in `unit` with an SI prefix and `digits` significant digits: `si(235_800, "pJ") == "235.8 nJ"`.

    None is "-"; units other than J, s, W, B, Hz (and their prefixed forms) keep their name.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    factor, base = _split_unit(unit)
    if base == unit and factor == 1.0 and unit not in _BASES:
        return f"{_sig(value, digits)} {unit}".strip()
    x = value * factor
    if value == 0:
        return f"0 {base if base == 'mm²' else unit}"
    if base == "mm²":
        return f"{_sig(x, digits)} {base}"
    for scale, prefix in _PREFIXES:
        if abs(x) >= scale * 0.9995:
            return f"{_sig(x / scale, digits)} {prefix}{base}"
    return f"{_sig(x / 1e-15, digits)} f{base}"


def _sig(x: float, digits: int) -> str:
    """`x` rounded to `digits` significant digits, without an exponent or trailing zeros."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    decimals = max(digits - 1 - int(math.floor(math.log10(abs(x)))), 0)
    text = f"{round(x, decimals):,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(x: float, digits: int = 4) -> str:
    """A plain number to `digits` significant digits, never with an exponent: `number(2.5e-05) == "0.000025"`."""
    return _sig(x, digits)


def ratio(value: float | None, digits: int = 3) -> str:
    """A ratio with sensible rounding and an x: `ratio(0.0525819) == "0.0526x"`, `ratio(78.8084) == "78.8x"`."""
    return "-" if value is None else f"{_sig(value, digits)}x"


def percent(value: float | None, digits: int = 3) -> str:
    """A fraction as a percentage: `percent(0.2109) == "21.1 %"`."""
    if value is None:
        return "-"
    if 0 < abs(value) < 1e-4:
        return "<0.01 %"
    return f"{_sig(100 * value, digits)} %"


def short_label(name: str, width: int = 28) -> str:
    """A module name cut from the left to `width` characters: the end of a dotted path says which layer it is."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


_BLOCK = re.compile(r"^(.*?\.(?:layers|layer|h|blocks|block)\.\d+)\.")


def block_of(module: str) -> str:
    """The repeated block a module belongs to (`model.layers.3` for `model.layers.3.mlp.up_proj`), or the module."""
    m = _BLOCK.match(module or "")
    return m.group(1) if m else (module or "top level")


def unit_axis(ax, axis: str, unit: str, values) -> float:
    """Label `axis` ("x" or "y") of `ax` with the SI-prefixed form of `unit` that suits `values`; returns the
    factor to multiply the values by (pJ values of about 1e5 are drawn in nJ)."""
    factor, base = _split_unit(unit)
    top = max((abs(v) for v in values), default=0.0) * factor
    scale, prefix = 1.0, ""
    if top and base not in ("mm²",) and (base in _BASES):
        scale, prefix = next(((s, p) for s, p in _PREFIXES if top >= s * 0.9995), (1e-15, "f"))
        return _label_axis(ax, axis, f"{prefix}{base}", factor / scale)
    return _label_axis(ax, axis, unit, 1.0)


def _label_axis(ax, axis: str, unit: str, factor: float) -> float:
    label = (ax.get_xlabel() if axis == "x" else ax.get_ylabel()) or ""
    text = f"{label} ({unit})" if label else unit
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(text)
    return factor


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, squeeze: bool = True, **kw):
    """A figure and its axes in the project's style, outside pyplot: nothing to close, no backend to pick, and
    Jupyter still shows it. Figures are `width` x `height` inches; one axes is returned bare if `squeeze`, else
    every layout gives a 2-d array of axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
    return fig, (axes[0][0] if squeeze and rows == cols == 1 else axes)
