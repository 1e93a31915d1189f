"""select: decide which matmul-like ops go on crossbars, and record why each other op stays digital.

Default: every lowerable STATIC product is mapped. The policy's include/exclude module
globs, `map_lm_head=False`, and `map_dynamic` refine that. DYNAMIC products are digital
unless the policy maps them (their operands would be written to the cells per input).
"""

from __future__ import annotations

from torch import fx

from nvcc_pt import meta
from nvcc_pt.meta import MatmulKind, Selection
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass

LM_HEAD_NAMES = ("lm_head", "embed_out", "output", "score")


def decide(info: meta.MatmulInfo, ctx: PassContext) -> Selection:
    policy = ctx.policy
    if info.kind is MatmulKind.DYNAMIC:
        # Dynamic products need both operands re-written into cells per input; the
        # crossbar op implements weight-stationary products only.
        return Selection(False, "dynamic product (both operands are activations)")
    if not info.lowerable:
        return Selection(False, f"not lowerable: {info.note}")
    module = info.module
    if not policy.matches(module, policy.include):
        return Selection(False, f"policy: {module or '<top>'} matches no include pattern {list(policy.include)}")
    if policy.exclude and policy.matches(module, policy.exclude):
        return Selection(False, f"policy: {module} matches an exclude pattern {list(policy.exclude)}")
    if not policy.map_lm_head and module.split(".")[-1] in LM_HEAD_NAMES:
        return Selection(False, "policy: output head kept digital (map_lm_head=False)")
    return Selection(True, "static weight: mapped to crossbars")


@graph_pass(requires=(meta.MATMUL,), provides=(meta.SELECTION,))
def select(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    for node in ctx.nodes(gm, meta.MATMUL):
        node.meta[meta.SELECTION] = decide(node.meta[meta.MATMUL], ctx)
    return PassResult(gm, modified=False)
