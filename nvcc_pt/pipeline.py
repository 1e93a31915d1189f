"""The default pass pipeline, top to bottom. Each line says why the pass is there."""

from __future__ import annotations

from torch import fx

from nvcc_pt.passes.allocate import allocate
from nvcc_pt.passes.annotate_noise import annotate_noise
from nvcc_pt.passes.annotate_precision import annotate_precision
from nvcc_pt.passes.decompose_attention import decompose_attention
from nvcc_pt.passes.estimate_cost import estimate_cost
from nvcc_pt.passes.find_matmuls import find_matmuls
from nvcc_pt.passes.lower import lower
from nvcc_pt.passes.partition import partition
from nvcc_pt.passes.select import select
from nvcc_pt.passmanager import PassContext, run_passes

TRANSFORMS = [
    decompose_attention,  # with map_dynamic: attention as explicit QK^T and AV products a crossbar can take
]
ANALYSIS = [
    find_matmuls,        # every product, static or dynamic: crossbars can only hold static operands
    select,              # the policy picks what goes on crossbars; each digital op keeps its reason
    annotate_precision,  # bits per op, so partition and the simulator agree on slices and cycles
    partition,           # weights -> physical columns -> arrays: the unit everything else counts
    allocate,            # arrays onto chips and macros: capacity, chips needed, pipeline stages
    annotate_noise,      # the device model each op is programmed with, resolved for its cell bits
    estimate_cost,       # energy, latency, area per op from the target's cited figures, once placement is known
]
LOWERING = [
    lower,               # mapped products become one custom op the targets know how to run
]


def analyze(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Run the analysis passes: records in `node.meta`, graph unchanged."""
    return run_passes(gm, ctx, ANALYSIS)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Transforms the policy asks for, analysis, then lowering: the executable graph."""
    return run_passes(gm, ctx, TRANSFORMS + ANALYSIS + LOWERING)
