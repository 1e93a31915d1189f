"""Convolutions as unrolled matrix products (im2col).

At each output position a convolution with weight `[C_out, C_in, *kernel]` multiplies the
weight, read as `[C_out, C_in * prod(kernel)]`, by the input patch under the kernel: one input
vector of `K = C_in * prod(kernel)` values per output position (channel-major, then kernel
row, then kernel column, the order `Tensor.reshape` and `im2col` share). `geometry(node)` reads
an ATen convolution node; `emit_unfold` writes the patches (`[..., positions, K]`) into the graph
in front of a product and `emit_fold` turns the product's `[..., positions, C_out]` back into
`[..., C_out, *spatial]`. Padding, stride and dilation are the unfold's, so the product in
between is an ordinary `y = x @ W^T + b`.

Padding modes other than zeros need nothing here: `nn.Conv*d` applies them as a separate pad
op before a convolution without padding, and that op stays digital in front of the unfold.

    >>> g = geometry(conv_node, weight.shape); g.positions, g.unsupported
    (961, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

aten = torch.ops.aten

# op -> (spatial dimensions, transposed)
CONV_OPS = {
    aten.conv1d.default: (1, False), aten.conv1d.padding: (1, False),
    aten.conv2d.default: (2, False), aten.conv2d.padding: (2, False),
    aten.conv3d.default: (3, False), aten.conv3d.padding: (3, False),
    aten.conv_transpose1d.default: (1, True), aten.conv_transpose2d.input: (2, True),
    aten.conv_transpose3d.input: (3, True), aten.convolution.default: (0, False),
}


@dataclass(frozen=True)
class ConvGeometry:
    """What an unrolled convolution needs: the kernel window, how it moves, and the output grid."""

    kernel: tuple[int, ...]
    """Kernel size per spatial dimension."""
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    """Zeros added (before, after) per spatial dimension."""
    groups: int
    transposed: bool
    batched: bool
    """False for an unbatched input `[C_in, *spatial]`."""
    in_channels: int
    out_channels: int
    in_spatial: tuple[int, ...]
    """Input positions per spatial dimension, as captured."""
    out_spatial: tuple[int, ...]
    """Output positions per spatial dimension, from the node's output shape."""

    @property
    def spatial(self) -> int:
        return len(self.kernel)

    @property
    def positions(self) -> int:
        """Output positions per example: the input vectors one example sends through the product."""
        return math.prod(self.out_spatial)

    @property
    def k(self) -> int:
        """Rows of the unrolled product of one group: `C_in / groups * prod(kernel)`."""
        return self.in_channels // self.groups * math.prod(self.kernel)

    @property
    def unsupported(self) -> str | None:
        """Why the convolution cannot be lowered as one unrolled product, or None when it can."""
        if self.transposed:
            # A transposed convolution scatters each input vector over a window of outputs (col2im with
            # overlapping adds); the crossbar op computes one output vector per input vector.
            return "transposed convolution: its outputs overlap-add across positions (col2im), not one product"
        if self.spatial not in (1, 2):
            return f"{self.spatial}-d convolution: only 1-d and 2-d convolutions are unrolled (im2col)"
        if self.groups != 1:
            # One mapped op holds one weight matrix. A grouped conv is `groups` independent products; as one
            # block-diagonal matrix it would store (groups - 1) zero blocks for every block of weights, and a
            # depthwise conv has K = prod(kernel) rows (9 of an array's 128): crossbars are the wrong home.
            return (f"grouped convolution (groups={self.groups}: {self.groups} products of K={self.k}, "
                    f"N={self.out_channels // self.groups}); each would fill a fraction of its arrays")
        return None


def _hint(dim) -> int:
    if isinstance(dim, int):
        return dim
    hint = getattr(getattr(dim, "node", None), "hint", None)
    return int(hint) if isinstance(hint, int) else 0


def _arguments(node: fx.Node) -> dict:
    """The node's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value
    return out


def _per_dim(value, dims: int) -> tuple[int, ...]:
    values = [value] if isinstance(value, int) else list(value)
    return tuple(int(v) for v in (values * dims if len(values) == 1 else values))


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(_hint(d) for d in val.shape) if isinstance(val, torch.Tensor) else ()


def geometry(node: fx.Node, weight_shape: tuple[int, ...]) -> ConvGeometry:
    """The geometry of an ATen convolution node (one of `CONV_OPS`) whose weight has `weight_shape`."""
    args = _arguments(node)
    weight = tuple(int(d) for d in weight_shape)
    spatial, transposed = CONV_OPS[node.target]
    if node.target is aten.convolution.default:
        spatial, transposed = len(weight) - 2, bool(args["transposed"])
    kernel = weight[2:]
    stride, dilation = _per_dim(args["stride"], spatial), _per_dim(args["dilation"], spatial)
    padding = args["padding"]
    if padding == "same":
        # ATen's rule: total d*(k-1), the odd one on the right.
        padding = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
    elif padding == "valid":
        padding = ((0, 0),) * spatial
    else:
        padding = tuple((p, p) for p in _per_dim(padding, spatial))
    # The node's own output shape: its input may be a node a lowering inserted, which carries none.
    x_shape, out_shape = _shape(args["input"]), _shape(node)
    groups = int(args["groups"])
    in_channels = weight[0] if transposed else weight[1] * groups
    out_channels = weight[1] * groups if transposed else weight[0]
    return ConvGeometry(kernel=kernel, stride=stride, dilation=dilation, padding=padding, groups=groups,
                        transposed=transposed, batched=len(out_shape) == spatial + 2, in_channels=in_channels,
                        out_channels=out_channels, in_spatial=x_shape[-spatial:], out_spatial=out_shape[-spatial:])


def emit_unfold(graph: fx.Graph, x: fx.Node, g: ConvGeometry) -> fx.Node:
    """Insert the patches of `x` (at the graph's insertion point): `[batch, positions, K]`."""
    call = graph.call_function
    if not g.batched:
        x = call(aten.unsqueeze.default, (x, 0))
    kernel, stride, dilation, padding = g.kernel, g.stride, g.dilation, g.padding
    if g.spatial == 1:  # a 1-d convolution is a 2-d one over a height of 1
        x = call(aten.unsqueeze.default, (x, 2))
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), ((0, 0), *padding)
    if any(before != after for before, after in padding):  # im2col pads symmetrically only
        flat = [p for before_after in reversed(padding) for p in before_after]
        x = call(aten.constant_pad_nd.default, (x, flat, 0.0))
        padding = ((0, 0),) * len(padding)
    cols = call(aten.im2col.default, (x, list(kernel), list(dilation), [p for p, _ in padding], list(stride)))
    return call(aten.transpose.int, (cols, 1, 2))


def emit_fold(graph: fx.Graph, y: fx.Node, g: ConvGeometry) -> fx.Node:
    """Insert the convolution's output from the product's `[batch, positions, C_out]`."""
    call = graph.call_function
    out = call(aten.transpose.int, (y, 1, 2))
    out = call(aten.reshape.default, (out, [-1, g.out_channels, *g.out_spatial]))
    return out if g.batched else call(aten.squeeze.dim, (out, 0))
