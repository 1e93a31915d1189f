"""select: decide which matmul-like ops go on crossbars, and record why each other op stays digital.

Default: every lowerable STATIC product is mapped. The policy's include/exclude module
globs, `map_lm_head=False`, and `map_dynamic` refine that. DYNAMIC products are digital
unless the policy sets `map_dynamic`: then the attention products that `decompose_attention`
made explicit (QK^T and AV, shapes known) are mapped like static ones, their right operand
written into the cells per input; other dynamic products stay digital with the reason.
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
        if not policy.map_dynamic:
            return Selection(False, "dynamic product (both operands are activations)")
        if not (info.lowerable and info.seq_axis and info.k and info.n):
            reason = info.note or "not an attention product decompose_attention made explicit"
            if "scaled_dot_product_attention" in info.op:
                reason = "attention left whole (dropout_p > 0, or attn_mask together with is_causal)"
            return Selection(False, f"dynamic product not mappable: {reason}")
    elif not info.lowerable:
        return Selection(False, f"not lowerable: {info.note}")
    module = info.module
    if not policy.matches(module, policy.include):
        return Selection(False, f"policy: {module or '<top>'} matches no include pattern {list(policy.include)}")
    if policy.exclude and policy.matches(module, policy.exclude):
        return Selection(False, f"policy: {module} matches an exclude pattern {list(policy.exclude)}")
    if not policy.map_lm_head and module.split(".")[-1] in LM_HEAD_NAMES:
        return Selection(False, "policy: output head kept digital (map_lm_head=False)")
    if info.kind is MatmulKind.DYNAMIC:
        return Selection(True, "dynamic product: operand written to crossbars per input")
    return Selection(True, "static weight: mapped to crossbars")


@graph_pass(requires=(meta.MATMUL,), provides=(meta.SELECTION,))
def select(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    for node in ctx.nodes(gm, meta.MATMUL):
        node.meta[meta.SELECTION] = decide(node.meta[meta.MATMUL], ctx)
    return PassResult(gm, modified=False)
