"""find_matmuls: classify every matmul-like node.

Rule: an operand is *static* when it is a parameter, buffer or constant, reached through
view-like ops only (transpose, view, reshape, ...). A product with a static operand is
STATIC (weight-stationary, a crossbar candidate); one whose operands are all activations
is DYNAMIC (attention QK^T, AV). Only `y = x @ W^T + b` shapes are lowerable: a static
left operand, a batched static operand or an einsum stays digital with a note.
A 1-d or 2-d convolution with a static weight is STATIC with its unrolled shape
(`K = C_in * prod(kernel)`, `N = C_out`, one input vector per output position, `nvcc_pt.conv`);
transposed, grouped and 3-d convolutions stay digital with the reason.
The QK^T
and AV products `decompose_attention` emits are DYNAMIC with the K and N of their right
operand at the captured sequence length, and its heads; other dynamic products are not
lowerable.
Nodes that are not matmul-like are left alone.
"""

from __future__ import annotations

import math

import torch
from nvcc_pt.passes.decompose_attention import ATTENTION
from torch import fx

from nvcc_pt import meta
from nvcc_pt.capture import WRAPPED
from nvcc_pt.conv import CONV_OPS, geometry
from nvcc_pt.meta import MatmulInfo, MatmulKind
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass

aten = torch.ops.aten

MATMUL_OPS = {
    aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default, aten.bmm.default,
    aten.baddbmm.default, aten.einsum.default, aten.scaled_dot_product_attention.default,
}
VIEW_OPS = {
    aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default, aten.reshape.default,
    aten._unsafe_view.default, aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim, aten.detach.default,
    aten.alias.default, aten.clone.default, aten.contiguous.default, aten.to.dtype, aten._to_copy.default,
}


def static_root(node) -> fx.Node | None:
    """The `get_attr` node `node` is a view of, or None when it depends on an activation."""
    while isinstance(node, fx.Node):
        if node.op == "get_attr":
            return node
        if node.op == "call_function" and node.target in VIEW_OPS:
            node = node.args[0]
            continue
        return None
    return None


def static_value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """Evaluate a static operand: the attribute with its view-like ops applied."""
    if node.op == "get_attr":
        return _attr(gm, node.target)
    args = [static_value(gm, a) if isinstance(a, fx.Node) else a for a in node.args]
    return node.target(*args, **node.kwargs)


def _attr(gm: fx.GraphModule, path: str) -> torch.Tensor:
    obj = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def user_name(path: str) -> str:
    """A module or attribute path as the user's model names it (without the capture wrapper)."""
    return path.removeprefix(f"{WRAPPED}.") if path != WRAPPED else ""


def owning_module(node: fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return user_name(path), cls_name


def _shape(node) -> tuple:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def size_hint(dim) -> int | None:
    """A dimension's size in the captured example, without guarding on a symbolic one (which would
    specialize the exported program's dynamic shapes)."""
    if isinstance(dim, int):
        return dim
    hint = getattr(getattr(dim, "node", None), "hint", None)
    return hint if isinstance(hint, int) else None


def _int(x) -> int:
    return int(x) if isinstance(x, int) or (hasattr(x, "node") and x.node.is_constant()) else 0


def attention_product(node: fx.Node, module: str, module_type: str) -> MatmulInfo:
    """An attention product `a @ b` that `decompose_attention` emitted: `b` (k^T or v) is written per input.

    K and N are taken at the captured example's sequence length; `instances` counts b's heads.
    """
    val = node.args[1].meta.get("val")
    dims = [size_hint(d) for d in val.shape] if isinstance(val, torch.Tensor) else []
    part = node.meta[ATTENTION]
    seq_axis = "n" if part == "qk" else "k"
    if None in dims or len(dims) < 2:
        return MatmulInfo(str(node.target), MatmulKind.DYNAMIC, module, module_type, 0, 0, lowerable=False,
                          note=f"attention {part}: operand shape unknown")
    k, n = dims[-2], dims[-1]
    note = "attention QK^T: K^T written per input" if part == "qk" else "attention AV: V written per input"
    return MatmulInfo(str(node.target), MatmulKind.DYNAMIC, module, module_type, k, n, note=note,
                      instances=math.prod(dims[1:-2]), seq_len=k if seq_axis == "k" else n, seq_axis=seq_axis)


def classify(gm: fx.GraphModule, node: fx.Node) -> MatmulInfo:
    op = node.target
    module, module_type = owning_module(node)
    name = str(op)
    if ATTENTION in node.meta:
        return attention_product(node, module, module_type)
    if op is aten.scaled_dot_product_attention.default:
        q, k = _shape(node.args[0]), _shape(node.args[1])
        return MatmulInfo(name, MatmulKind.DYNAMIC, module, module_type, _int(q[-1]) if q else 0,
                          _int(k[-2]) if len(k) > 1 else 0, note="attention QK^T and AV")
    if op in CONV_OPS:
        return _classify_conv(gm, node, name, module, module_type)
    if op is aten.einsum.default:
        operands = node.args[1]
        roots = [static_root(a) for a in operands]
        if any(roots):
            root = next(r for r in roots if r is not None)
            return MatmulInfo(name, MatmulKind.STATIC, module, module_type, 0, 0, weight=user_name(root.target),
                              lowerable=False, note="einsum with a stationary operand; rewrite it as a linear to map it")
        return MatmulInfo(name, MatmulKind.DYNAMIC, module, module_type, 0, 0)

    if op is aten.linear.default:
        x, w = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        transposed = False
    elif op is aten.addmm.default:
        bias, x, w = node.args[0], node.args[1], node.args[2]
        transposed = True
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return _static_or_dynamic(name, module, module_type, node, w, x, note="addmm with alpha/beta != 1")
    else:  # mm, matmul, bmm, baddbmm
        if op is aten.baddbmm.default:
            x, w = node.args[1], node.args[2]
        else:
            x, w = node.args[0], node.args[1]
        bias, transposed = None, True
        if static_root(x) is not None and static_root(w) is None:
            return _static_or_dynamic(name, module, module_type, node, x, w, note="stationary left operand (W @ x)")
        if op in (aten.bmm.default, aten.baddbmm.default) or len(_shape(w)) != 2:
            return _static_or_dynamic(name, module, module_type, node, w, x, note="batched stationary operand")

    root = static_root(w)
    if root is None or static_root(x) is not None:
        xs, ws = _shape(x), _shape(w)
        return MatmulInfo(name, MatmulKind.DYNAMIC, module, module_type,
                          _int(xs[-1]) if xs else 0, _int(ws[-1]) if ws else 0, lowerable=False,
                          note="only attention products that map_dynamic decomposes are mapped")
    shape = _shape(w) or tuple(static_value(gm, w).shape)
    n, k = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    bias_root = static_root(bias) if isinstance(bias, fx.Node) else None
    return MatmulInfo(name, MatmulKind.STATIC, module, module_type, int(k), int(n), weight=user_name(root.target),
                      weight_transposed=transposed, bias=user_name(bias_root.target) if bias_root is not None else None)


def _classify_conv(gm: fx.GraphModule, node: fx.Node, name: str, module: str, module_type: str) -> MatmulInfo:
    x, w = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    root = static_root(w)
    g = geometry(node, _shape(w) or (static_value(gm, w).shape if root is not None else ()))
    if root is None or static_root(x) is not None:
        return MatmulInfo(name, MatmulKind.DYNAMIC, module, module_type, g.k, g.out_channels, vectors=g.positions)
    if g.transposed:  # each input position meets the whole weight: C_in x (C_out/groups * prod(kernel)) MACs
        k, n, vectors = g.in_channels, g.out_channels // g.groups * math.prod(g.kernel), math.prod(g.in_spatial)
    else:  # per output position, every group's K x N/groups block
        k, n, vectors = g.k, g.out_channels, g.positions
    bias_root = static_root(bias) if isinstance(bias, fx.Node) else None
    reason = g.unsupported
    return MatmulInfo(name, MatmulKind.STATIC, module, module_type, k, n, weight=user_name(root.target),
                      bias=user_name(bias_root.target) if bias_root is not None else None, lowerable=reason is None,
                      note=reason or f"convolution unrolled: {g.positions} output positions", vectors=vectors)


def _static_or_dynamic(name, module, module_type, node, stationary, other, note) -> MatmulInfo:
    root = static_root(stationary)
    if root is None:
        return MatmulInfo(name, MatmulKind.DYNAMIC, module, module_type, 0, 0)
    return MatmulInfo(name, MatmulKind.STATIC, module, module_type, 0, 0, weight=user_name(root.target),
                      lowerable=False, note=note)


@graph_pass(provides=(meta.MATMUL,))
def find_matmuls(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    for node in ctx.nodes(gm):
        if node.op == "call_function" and (node.target in MATMUL_OPS or node.target in CONV_OPS):
            node.meta[meta.MATMUL] = classify(gm, node)
    return PassResult(gm, modified=False)
