"""lower: replace every mapped product by one call of `nvcc_pt::cim_linear`.

Rule: `linear(x, W, b)`, `addmm(b, x, W)`, `mm(x, W)` and `matmul(x, W)` with a static `W`
become `cim_linear(x, W_eff, b, state, config)`, with the weight oriented `[N, K]` and the
state held by a `CimState` module at `cim.<node>`. A convolution becomes
`unfold (im2col) -> cim_linear(patches, W.reshape(C_out, -1), b) -> fold back` (`nvcc_pt.conv`),
so it runs through the same op, one input vector per output position. A mapped dynamic product
`a @ b` (attention, `map_dynamic`) becomes `cim_matmul(a, b, key, config)`, `b` written per call,
with its seed and call count in a `WriteState` at `cim_writes.<node>`. The new node keeps the old
node's records. Digital ops, including unmapped matmuls, are left as they are.
"""

from __future__ import annotations

import torch
from nvcc_pt.passes.find_matmuls import static_value
from torch import fx, nn

from nvcc_pt import meta
from nvcc_pt.conv import CONV_OPS, emit_fold, emit_unfold, geometry
from nvcc_pt.meta import MatmulKind
from nvcc_pt.ops import CimState, WriteState
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass

aten = torch.ops.aten
STATE_ROOT = "cim"
WRITE_ROOT = "cim_writes"


def operands(node: fx.Node):
    """(x, weight operand, bias) of a lowerable product."""
    if node.target is aten.linear.default or node.target in CONV_OPS:
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        return node.args[0], node.args[1], bias
    if node.target is aten.addmm.default:
        return node.args[1], node.args[2], node.args[0]
    return node.args[0], node.args[1], None


def op_config(node: fx.Node, fidelity: str, target) -> dict:
    p: meta.Precision = node.meta[meta.PRECISION]
    grid: meta.TileGrid = node.meta[meta.TILES]
    return {
        "op": node.name, "fidelity": fidelity, "weight_bits": p.weight_bits, "input_bits": p.input_bits,
        "cell_bits": p.cell_bits, "dac_bits": p.dac_bits, "adc_bits": p.adc_bits, "sign": target.sign,
        "rows": grid.rows, "cols": grid.cols, "slices": grid.slices, "adc_range": target.adc_range,
        # Read noise is drawn per call, so the op needs its sigma; how signed inputs meet a unipolar DAC.
        "read_sigma": node.meta[meta.NOISE].read_sigma,
        "input_encoding": dict(target.extra).get("input_encoding", "two-phase"),
    }


@graph_pass(requires=(meta.TILES, meta.NOISE), provides=())
def lower(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    fidelity = ctx.results["fidelity"]
    if not hasattr(gm, STATE_ROOT):
        gm.add_module(STATE_ROOT, nn.Module())
    root = getattr(gm, STATE_ROOT)
    modified = False
    dynamic = 0
    for node in list(ctx.nodes(gm, mapped_only=True)):
        if node.meta[meta.MATMUL].kind is MatmulKind.DYNAMIC:
            _lower_dynamic(gm, node, ctx, dynamic)
            dynamic += 1
            modified = True
            continue
        x, w, bias = operands(node)
        weight = static_value(gm, w)
        if node.meta[meta.MATMUL].weight_transposed:
            weight = weight.t()
        conv = geometry(node, weight.shape) if node.target in CONV_OPS else None
        if conv is not None:
            weight = weight.reshape(weight.shape[0], -1)
        state = CimState(weight, op_config(node, fidelity, ctx.target))
        root.add_module(node.name, state)
        with gm.graph.inserting_before(node):
            prefix = f"{STATE_ROOT}.{node.name}"
            w_node = gm.graph.get_attr(f"{prefix}.weight")
            state_nodes = [gm.graph.get_attr(f"{prefix}.{s}") for s in CimState.STATE]
            if conv is not None:
                x = emit_unfold(gm.graph, x, conv)
            new = gm.graph.call_function(torch.ops.nvcc_pt.cim_linear.default,
                                         (x, w_node, bias, state_nodes, state.config_json()))
            out = emit_fold(gm.graph, new, conv) if conv is not None else new
        new.meta.update(node.meta)
        if conv is not None:
            new.meta.pop("val", None)  # the product's value is the patches' [batch, positions, C_out], not the conv's
        new.meta["nvcc_pt.lowered_from"] = node.name
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        modified = True
    if modified:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, modified)


def _lower_dynamic(gm: fx.GraphModule, node: fx.Node, ctx: PassContext, index: int) -> None:
    """`a @ b` -> `cim_matmul(a, b, key, config)`; the write noise is drawn per call from the device model."""
    if not hasattr(gm, WRITE_ROOT):
        gm.add_module(WRITE_ROOT, nn.Module())
    noise: meta.NoiseInfo = node.meta[meta.NOISE]
    config = dict(op_config(node, ctx.results["fidelity"], ctx.target), op_index=index, device=noise.device,
                  level_sigmas=list(noise.level_sigmas), stuck_at_gmin=noise.stuck_at_gmin,
                  stuck_at_gmax=noise.stuck_at_gmax)
    state = WriteState(ctx.results.get("seed", 0), config)
    getattr(gm, WRITE_ROOT).add_module(node.name, state)
    with gm.graph.inserting_before(node):
        key = gm.graph.get_attr(f"{WRITE_ROOT}.{node.name}.key")
        new = gm.graph.call_function(torch.ops.nvcc_pt.cim_matmul.default,
                                     (node.args[0], node.args[1], key, state.config_json()))
    new.meta.update(node.meta)
    new.meta["nvcc_pt.lowered_from"] = node.name
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def write_states(gm: fx.GraphModule) -> list[tuple[str, WriteState]]:
    """(node name, state) of every mapped dynamic product, in program order."""
    root = getattr(gm, WRITE_ROOT, None)
    return list(root.named_children()) if root is not None else []
