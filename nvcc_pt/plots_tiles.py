"""The tile map of a mapping report: every array of each chip, coloured by the op it holds, with a legend.

The output head (`lm_head`) is drawn near black and free arrays near white, so neither can be read as an op.
Up to `len(OP_COLORS)` ops each get a colour; more ops are coloured by repeated block (`model.layers.3`).
"""

from __future__ import annotations

import math
from typing import Any

from nvcc_pt.plotstyle import FREE_COLOR, LM_HEAD_COLOR, OP_COLORS, block_of, new_figure, short_label

MAX_CHIP_MAPS = 8
"""A model on hundreds of chips shows the first few chips; the tables still list every op."""
HEADS = ("lm_head", "embed_out", "output_layer")
"""Module names (last part) of a language model's output head."""
MAX_LEGEND = 24


def _first_array(placement: str | None) -> int | None:
    if not placement or "arrays " not in placement:
        return None
    return int(placement.rsplit("arrays ", 1)[1].split("-")[0])


def _keys(mapped: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Per op, the legend entry it is drawn under; and the entries in order (the head last)."""
    by_op = len(mapped) <= len(OP_COLORS)
    keys = []
    for o in mapped:
        module = o["module"] or o["name"]
        if module.rsplit(".", 1)[-1] in HEADS:
            keys.append("head")
        else:
            keys.append(short_label(module, 32) if by_op else short_label(block_of(module), 32))
    entries = list(dict.fromkeys(k for k in keys if k != "head"))
    return keys, entries + (["head"] if "head" in keys else [])


def tile_map(data: dict[str, Any]):
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    t = data["target"]
    per_macro, per_chip = t["arrays_per_macro"], t["arrays_per_macro"] * t["macros_per_chip"]
    chips = max(data["totals"].get("chips", 0), 1)
    # Beyond MAX_CHIP_MAPS chips: the first ones and the last, which holds the output head.
    shown_ids = list(range(chips)) if chips <= MAX_CHIP_MAPS else [*range(MAX_CHIP_MAPS - 1), chips - 1]
    shown = len(shown_ids)
    mapped = [o for o in data["ops"] if o["mapped"]]
    keys, entries = _keys(mapped)
    index = {k: i for i, k in enumerate(entries)}
    grid = np.full(chips * per_chip, -1, dtype=np.int64)
    for o, key in zip(mapped, keys):
        first = _first_array(o["placement"])
        if first is not None:
            grid[first:min(first + o["arrays"] * o["duplicates"], chips * per_chip)] = index[key]
    colors = [LM_HEAD_COLOR if k == "head" else OP_COLORS[i % len(OP_COLORS)] for i, k in enumerate(entries)]
    cmap = ListedColormap([FREE_COLOR, *colors] if colors else [FREE_COLOR, FREE_COLOR])
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = new_figure(10.0, 0.6 + 3.2 * rows, rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        if i >= shown:
            ax.set_visible(False)
            continue
        c = shown_ids[i]
        arrays = grid[c * per_chip:(c + 1) * per_chip]
        used = np.flatnonzero(arrays >= 0)
        # A chip that is mostly free is drawn up to its last used macro, so small models stay visible.
        extent = per_chip
        if used.size and used[-1] + 1 < per_chip // 4:
            extent = -(-(int(used[-1]) + 1) // per_macro) * per_macro
        width = per_macro * max(1, round(math.sqrt(extent) / per_macro))
        height = -(-extent // width)
        chip = np.full(width * height, -1)
        chip[:extent] = arrays[:extent]
        ax.imshow(chip.reshape(height, width) + 1, cmap=cmap, vmin=0, vmax=max(len(colors), 1),
                  interpolation="nearest", aspect="equal")
        if width <= 64:  # every array its own square
            for x in range(1, width):
                ax.axvline(x - 0.5, color="white", linewidth=0.6 if x % per_macro else 2.0)
            for y in range(1, height):
                ax.axhline(y - 0.5, color="white", linewidth=0.6)
        title = f"chip {c}" + (f" (of {chips})" if i == shown - 1 and chips > shown else "")
        if extent < per_chip:
            title += f": arrays 0-{extent - 1} of {per_chip}"
        ax.set_title(title, fontsize=9)
        per_row = "one macro" if width == per_macro else f"{width // per_macro} macros"
        ax.set_xlabel(f"{per_row} of {per_macro} arrays per row", fontsize=7)
    handles = [Patch(facecolor=FREE_COLOR, edgecolor="#999999", label="free")]
    for k, col in zip(entries, colors):
        label = "output head (lm_head)" if k == "head" else k
        handles.append(Patch(facecolor=col, edgecolor="none", label=label))
    if len(handles) > MAX_LEGEND:
        handles = handles[:MAX_LEGEND - 1] + [Patch(facecolor="white", edgecolor="none",
                                                    label=f"... {len(handles) - MAX_LEGEND + 1} more (colours repeat)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=7, frameon=False)
    return fig
