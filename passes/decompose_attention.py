"""decompose_attention: rewrite `scaled_dot_product_attention` as explicit ops, so its two products can be mapped.

Rule (only when the policy sets `map_dynamic`): every `aten.scaled_dot_product_attention`
with `dropout_p == 0` becomes

    scores = (q @ k^T) * scale          scale = 1/sqrt(E) unless given
    scores = scores + mask              float mask; a bool mask keeps True entries, others -inf
    scores = where(tril(ones(L, S)), scores, -inf)      when is_causal
    out    = safe_softmax(scores) @ v   a fully masked row gives zeros, as SDPA's math path does

The two products are tagged `ATTENTION` ("qk", "av") for `find_matmuls`: each one's right
operand (k^T, v) is what a crossbar must be written with per input. With `enable_gqa`, the
Hq query heads are grouped onto the Hkv key/value heads (`[B, Hkv, G*L, E] @ [B, Hkv, E, S]`)
instead of repeating k and v, so each key/value head is written once. Every other node,
attention with dropout, and graphs without attention are left alone.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import fx
from torch._guards import detect_fake_mode

from nvcc_pt.passmanager import PassContext, PassResult, graph_pass

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
ATTENTION = "nvcc_pt.attention"  # node.meta key: "qk" or "av" on the products this pass emits
PARAMS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_arguments(node: fx.Node) -> dict:
    """q, k, v and the keyword parameters of an SDPA call, with SDPA's defaults."""
    values = dict(zip(("query", "key", "value", *PARAMS), node.args))
    values.update(node.kwargs)
    defaults = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    return {**defaults, **values}


class _Emitter:
    """Inserts nodes before `anchor`, each with the module stack of `anchor` and a fake value for later passes."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node):
        self.graph, self.anchor = graph, anchor
        vals = [a.meta.get("val") for a in anchor.all_input_nodes]
        self.fake_mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])

    def __call__(self, target, *args, **kwargs) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args, kwargs)
        node.meta["nn_module_stack"] = self.anchor.meta.get("nn_module_stack", {})
        node.meta["stack_trace"] = self.anchor.meta.get("stack_trace")
        if self.fake_mode is not None:
            fake = lambda a: a.meta["val"] if isinstance(a, fx.Node) else a
            # these values only tell later passes the shapes: a guard an op evaluates on them (some torch versions'
            # matmul compares batch sizes) must not specialize the graph's dynamic inputs to the example's sizes
            shapes = self.fake_mode.shape_env
            with self.fake_mode, shapes.suppress_guards() if shapes is not None else nullcontext():
                node.meta["val"] = target(*[fake(a) if not isinstance(a, list) else [fake(x) for x in a] for a in args],
                                          **{k: fake(v) for k, v in kwargs.items()})
        return node


def _size(node: fx.Node, dim: int) -> int | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    size = val.shape[dim]
    return size if isinstance(size, int) else None


def decompose(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """Emit the explicit form of one SDPA node before it; returns the node that replaces its output."""
    p = sdpa_arguments(node)
    q, k, v = p["query"], p["key"], p["value"]
    emit = _Emitter(graph, node)
    groups = 1
    if p["enable_gqa"]:
        hq, hkv = _size(q, -3), _size(k, -3)
        if hq is None or hkv is None or hq % hkv:
            raise ValueError(f"enable_gqa needs static head counts with Hq a multiple of Hkv, got {hq} and {hkv}")
        groups = hq // hkv
    if groups > 1:  # [B, Hq, L, E] -> [B, Hkv, G*L, E]: each key/value head serves its G query heads
        q = emit(aten.flatten.using_ints, emit(aten.unflatten.int, q, -3, [-1, groups]), -3, -2)
    scale = p["scale"] if p["scale"] is not None else 1.0 / math.sqrt(_size(node.args[0], -1))
    scores = emit(aten.matmul.default, q, emit(aten.transpose.int, k, -2, -1))
    scores.meta[ATTENTION] = "qk"
    scores = emit(aten.mul.Tensor, scores, scale)
    if groups > 1:  # back to [B, Hq, L, S], where the mask broadcasts as SDPA's does
        scores = emit(aten.flatten.using_ints, emit(aten.unflatten.int, scores, -2, [groups, -1]), -4, -3)
    mask = p["attn_mask"]
    if mask is not None:
        dtype = mask.meta["val"].dtype if isinstance(mask, fx.Node) else None
        if dtype == torch.bool:
            scores = emit(aten.masked_fill.Scalar, scores, emit(aten.logical_not.default, mask), -math.inf)
        else:
            scores = emit(aten.add.Tensor, scores, mask)
    if p["is_causal"]:
        length, source = emit(aten.sym_size.int, node.args[0], -2), emit(aten.sym_size.int, k, -2)
        device = node.args[0].meta["val"].device
        ones = emit(aten.ones.default, [length, source], dtype=torch.bool, device=device)
        scores = emit(aten.masked_fill.Scalar, scores, emit(aten.logical_not.default, emit(aten.tril.default, ones)),
                      -math.inf)
    attn = emit(aten._safe_softmax.default, scores, -1)
    if groups > 1:
        attn = emit(aten.flatten.using_ints, emit(aten.unflatten.int, attn, -3, [-1, groups]), -3, -2)
    out = emit(aten.matmul.default, attn, v)
    out.meta[ATTENTION] = "av"
    if groups > 1:
        out = emit(aten.flatten.using_ints, emit(aten.unflatten.int, out, -2, [groups, -1]), -4, -3)
    return out


def decomposable(node: fx.Node) -> bool:
    p = sdpa_arguments(node)
    return node.op == "call_function" and node.target is SDPA and p["dropout_p"] == 0 and not (
        p["attn_mask"] is not None and p["is_causal"])


@graph_pass()
def decompose_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if not ctx.policy.map_dynamic:
        return PassResult(gm, modified=False)
    modified = False
    for node in list(ctx.nodes(gm)):
        if node.op == "call_function" and node.target is SDPA and decomposable(node):
            out = decompose(gm.graph, node)
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            modified = True
    if modified:
        gm.recompile()
    return PassResult(gm, modified)
