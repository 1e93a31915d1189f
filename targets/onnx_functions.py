"""The bodies of the model-local ONNX function `nvcc_pt.CimLinear`, one per exported fidelity.

Each body reproduces `targets/simulator.py` for one fidelity with standard ONNX ops only:

  exact      y = x W^T + b
  quantized  per-token symmetric input quantization to `qmax = 2^(input_bits-1) - 1`
             (`scale = max(|x|, tiny) / qmax`, round half to even as torch does, clip), then
             the product with the programmed effective weight;
  noisy      the same arithmetic: the device variation lives in the weight initializer.

`weight` is the programmed effective weight `[N, K]` as the simulator multiplies by it;
`qmax` and `tiny` are attributes of each call so one function serves every op.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxscript
from onnxscript import opset18 as op

DOMAIN = "nvcc_pt"
NAME = "CimLinear"

_nvcc = onnxscript.values.Opset(DOMAIN, 1)


@onnxscript.script(opset=_nvcc, default_opset=op)
def cim_linear_exact(x, weight, bias):
    return op.Add(op.MatMul(x, op.Transpose(weight, perm=[1, 0])), bias)


@onnxscript.script(opset=_nvcc, default_opset=op)
def cim_linear_quantized(x, weight, bias, qmax: float, tiny: float):
    q = op.CastLike(op.Constant(value_float=qmax), x)
    floor = op.CastLike(op.Constant(value_float=tiny), x)
    absmax = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1)
    scale = op.Div(op.Max(absmax, floor), q)
    xq = op.Mul(op.Clip(op.Round(op.Div(x, scale)), op.Neg(q), q), scale)
    return op.Add(op.MatMul(xq, op.Transpose(weight, perm=[1, 0])), bias)


BODIES = {"exact": cim_linear_exact, "quantized": cim_linear_quantized, "noisy": cim_linear_quantized}


def function_for(fidelity: str, onnx_opset: int) -> ir.Function:
    """`nvcc_pt.CimLinear` with the body of `fidelity`, importing the model's default opset."""
    proto: onnx.FunctionProto = BODIES[fidelity].to_function_proto()
    proto.name = NAME
    for imp in proto.opset_import:
        if imp.domain == "":
            imp.version = onnx_opset
    return ir.serde.deserialize_function(proto)
