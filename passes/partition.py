"""partition: logical weight [K, N] -> physical conductance matrix -> grid of arrays.

The physical matrix is [K, N*S*P]: `S = ceil(magnitude_bits / cell_bits)` slices per
weight, `P = 2` sign columns for differential encoding and 1 for offset (DESIGN.md,
Numerics). It is cut into `rows x cols` arrays: `ceil(K/rows) * ceil(N*S*P/cols)` of them.
"""

from __future__ import annotations

import math

from torch import fx

from nvcc_pt import meta
from nvcc_pt.meta import TileGrid
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass


def tile_grid(k: int, n: int, target, precision: meta.Precision) -> TileGrid:
    magnitude = precision.weight_bits - 1 if target.sign == "differential" else precision.weight_bits
    slices = math.ceil(magnitude / precision.cell_bits)
    return TileGrid(k=k, n=n, rows=target.rows, cols=target.cols, slices=slices, sign_columns=target.sign_columns)


@graph_pass(requires=(meta.PRECISION,), provides=(meta.TILES,))
def partition(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    for node in ctx.nodes(gm, mapped_only=True):
        info = node.meta[meta.MATMUL]
        node.meta[meta.TILES] = tile_grid(info.k, info.n, ctx.target, node.meta[meta.PRECISION])
    return PassResult(gm, modified=False)
