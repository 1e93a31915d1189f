"""allocate: place every mapped op's arrays on the target's chip -> macro -> array hierarchy.

Ops are placed in dataflow order; each op starts on a fresh macro, so no two ops share a
macro's periphery and the ops can run as pipeline stages at the same time. The pass also
builds a networkx dataflow graph of the mapped ops (an edge where one op's output reaches
another through digital ops only) and counts the chips needed. When the target fixes its
chip count and the model needs more, it raises `AllocationError` with the numbers.
A mapped dynamic product (attention) is rewritten per input, so it gets arrays of its own,
one grid per head (`MatmulInfo.instances`), never shared with static weights.
"""

from __future__ import annotations

import networkx as nx
from nvcc_pt.passes.estimate_cost import op_arrays, plan_duplicates
from torch import fx

from nvcc_pt import meta
from nvcc_pt.errors import AllocationError
from nvcc_pt.meta import Placement
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass, is_mapped


def dataflow_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """Mapped ops as nodes; an edge u -> v where v consumes u's output through digital ops only."""
    graph = nx.DiGraph()
    producers: dict[fx.Node, frozenset[str]] = {}
    for node in gm.graph.nodes:
        upstream: set[str] = set()
        for arg in node.all_input_nodes:
            upstream |= producers.get(arg, frozenset())
        if is_mapped(node):
            graph.add_node(node.name, module=node.meta[meta.MATMUL].module)
            graph.add_edges_from((u, node.name) for u in upstream)
            producers[node] = frozenset((node.name,))
        else:
            producers[node] = frozenset(upstream)
    return graph


@graph_pass(requires=(meta.TILES,), provides=(meta.PLACEMENT,))
def allocate(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    target = ctx.target
    per_macro, per_chip = target.arrays_per_macro, target.arrays_per_chip
    flow = dataflow_graph(gm)
    # Pipeline stage = longest path from an input, so independent ops (q, k, v) share a stage.
    stage: dict[str, int] = {}
    for name in nx.topological_sort(flow):
        stage[name] = max((stage[p] + 1 for p in flow.predecessors(name)), default=0)

    copies = plan_duplicates(gm, ctx)  # {} unless ctx.duplicate asks for copies; always within capacity
    next_array = 0
    for node in ctx.nodes(gm, mapped_only=True):
        arrays = op_arrays(node)
        dup = copies.get(node.name, 1)
        first = -(-next_array // per_macro) * per_macro  # start on a fresh macro
        last = first + arrays * dup - 1
        node.meta[meta.PLACEMENT] = Placement(
            first_array=first, arrays=arrays * dup,
            chips=tuple(range(first // per_chip, last // per_chip + 1)),
            macros=tuple(range(first // per_macro, last // per_macro + 1)),
            stage=stage[node.name], duplicates=dup,
        )
        next_array = last + 1

    chips_needed = -(-next_array // per_chip) if next_array else 0
    if target.chips is not None and chips_needed > target.chips:
        raise AllocationError(
            f"the mapped weights need {next_array} arrays on {chips_needed} chip(s) of target {target.name!r} "
            f"({per_chip} arrays each), but the target fixes chips={target.chips}. Use "
            f"target.replace(chips={chips_needed}) or chips=None, larger arrays, fewer weight bits, "
            "or a policy that maps fewer layers."
        )
    ctx.results["dataflow"] = flow
    ctx.results["arrays_allocated"] = next_array
    ctx.results["chips_needed"] = chips_needed
    ctx.results["pipeline_stages"] = max(stage.values(), default=-1) + 1
    return PassResult(gm, modified=False)
