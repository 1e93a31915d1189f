"""annotate_precision: weight, input, cell, DAC and ADC bits for every mapped op.

The target gives the defaults; `precision={"glob": {"weight_bits": 4, ...}}` overrides them
per layer (module-name globs, later entries win), which is how layer-wise mixed precision
is expressed. Digital ops get no record.
"""

from __future__ import annotations

import fnmatch

from torch import fx

from nvcc_pt import meta
from nvcc_pt.errors import TargetError
from nvcc_pt.meta import Precision
from nvcc_pt.passmanager import PassContext, PassResult, graph_pass

FIELDS = ("weight_bits", "input_bits", "cell_bits", "dac_bits", "adc_bits")


def precision_for(module: str, ctx: PassContext) -> Precision:
    t = ctx.target
    bits = {f: getattr(t, f) for f in FIELDS}
    for pattern, override in ctx.precision.items():
        if fnmatch.fnmatchcase(module, pattern):
            unknown = set(override) - set(FIELDS)
            if unknown:
                raise TargetError(f"precision override {pattern!r} has unknown field(s) {sorted(unknown)}; use {FIELDS}")
            bits.update(override)
    try:
        # Validate the combination exactly as a target would.
        t.replace(**{k: v for k, v in bits.items()})
    except TargetError as e:
        raise TargetError(f"precision for {module!r}: {e}") from None
    return Precision(**bits)


@graph_pass(requires=(meta.SELECTION,), provides=(meta.PRECISION,))
def annotate_precision(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    for node in ctx.nodes(gm, mapped_only=True):
        node.meta[meta.PRECISION] = precision_for(node.meta[meta.MATMUL].module, ctx)
    return PassResult(gm, modified=False)
