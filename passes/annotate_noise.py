"""annotate_noise: the device model and parameters each mapped op is programmed with.

Level sigmas are resolved here for the op's cell precision, so a per-layer `cell_bits`
override meets a state-dependent device model with the right number of levels (and
fails clearly when the model has fixed levels that do not match). The record also carries the
variation model (`per-cell` or `per-weight`, docs/devices.md) and its band factor, so a saved plan
reprograms with the model it was compiled with.
"""

from __future__ import annotations

from torch import fx

from nvcc_pt import meta
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass


@graph_pass(requires=(meta.PRECISION,), provides=(meta.NOISE,))
def annotate_noise(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    device = ctx.target.device
    for node in ctx.nodes(gm, mapped_only=True):
        node.meta[meta.NOISE] = device.noise_record(2 ** node.meta[meta.PRECISION].cell_bits)
    return PassResult(gm, modified=False)
