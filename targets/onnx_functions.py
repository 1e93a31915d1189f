"""The bodies of the model-local ONNX functions `nvcc_pt.CimLinear*`, one per exported fidelity.

Each body reproduces `targets/simulator.py` for one fidelity with standard ONNX ops only:

  exact      y = x W^T + b
  quantized  per-token symmetric input quantization to `qmax = 2^(input_bits-1) - 1`
             (`scale = max(|x|, tiny) / qmax`, round half to even as torch does, clip), then
             the product with the programmed effective weight;
  noisy      the same arithmetic: the device variation lives in the weight initializer.

`weight` is the programmed effective weight `[N, K]` as the simulator multiplies by it;
`qmax` and `tiny` are attributes of each call so one function serves every op.

The crossbar levels call `CimLinear(x, levels, scale, bias)`, an overload (ONNX IR 10
function overloads, `node.overload`) that takes the programmed levels `[R, rows, S*N]` and
the weight scales `[N]` instead of the effective weight: overload `adc` (one bipolar DAC
cycle: fidelity `adc`, or `bit-serial` with `dac_bits >= input_bits`), `bit-serial`
(two-phase inputs) and `bit-serial-twos-complement`. Every mapped op thus stays one
`nvcc_pt.CimLinear` call whatever the fidelity. Their body follows
`simulator._crossbar` step by step: quantize the input per token; split it into DAC planes
`[T, B, K]` with place values `[T]`; pad K to whole row tiles and reshape to
`[R, T*B, rows]`; one batched MatMul of the inputs against the levels (columns ISAAC's encoding stores
flipped hold `top - l`, found from the levels' sums as the simulator finds them) gives every partial sum
of every tile, physical column and cycle; the ADC maps each to `Max(Min(Round(v / step), code_hi),
code_lo)` on its zero-aligned grid (per row tile, or per tile and column); flipped columns are read
back as `top * sum(digits) - code`; the codes times their steps are summed over row tiles, shifted and
added over cycles and slices, corrected for the offset reference column, scaled by the input and
weight scales, and the bias is added. The ADC grid (`targets.adc`: the range mode or `cm.calibrate`'s
range) and the place values are attributes of
each call (`crossbar_call`), computed with the simulator's own helpers so the constants are
the same float32 numbers.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxscript
import torch
from nvcc_pt.targets.adc import flips, grid, tile_rows
from nvcc_pt.targets.devices import TINY, input_planes, slice_places
from onnx import AttributeProto, TensorProto, helper
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


CROSSBAR_OVERLOADS = {"one-cycle": "adc", "two-phase": "bit-serial", "twos-complement": "bit-serial-twos-complement"}
"""`CimLinear` overload per input encoding of the crossbar levels."""


def function_for(fidelity: str, onnx_opset: int) -> ir.Function:
    """`nvcc_pt.CimLinear` with the body of `fidelity`, importing the model's default opset."""
    proto: onnx.FunctionProto = BODIES[fidelity].to_function_proto()
    proto.name = NAME
    for imp in proto.opset_import:
        if imp.domain == "":
            imp.version = onnx_opset
    return ir.serde.deserialize_function(proto)


# -- crossbar levels --------------------------------------------------------------------------
def input_encoding(cfg: dict, fidelity: str) -> str:
    """How the DAC applies one op's inputs: `one-cycle`, `two-phase` or `twos-complement` (`input_planes`)."""
    if fidelity == "adc" or cfg["dac_bits"] >= cfg["input_bits"]:
        return "one-cycle"
    # as `input_planes`: anything but two's complement is two-phase
    return "twos-complement" if cfg.get("input_encoding") == "twos-complement" else "two-phase"


def crossbar_call(cfg: dict, fidelity: str, adc_range: torch.Tensor, k: int) -> tuple[str, dict]:
    """The `CimLinear` overload and the attributes of one op's call at a crossbar fidelity.

    `adc_range` is the op's `CimState.adc_range` (empty: the spec's range mode); `k` its input size.
    The grid rides as lists per row tile (or per row tile and column): `step`, `code_lo`, `code_hi`;
    `flip_limit` per row tile is the level sum above which a column is stored flipped (ISAAC's encoding;
    a huge number where the mode does not flip) and `top` the flipped columns' digital correction.
    """
    bit_serial = fidelity == "bit-serial"
    encoding = input_encoding(cfg, fidelity)
    g = grid(cfg, adc_range.detach().cpu(), bit_serial, k)
    place_t = input_planes(torch.zeros(1, 1), cfg, bit_serial)[1]
    place_s = slice_places(cfg["cell_bits"], cfg["slices"])
    no_flip = float(torch.finfo(torch.float32).max)
    limits = [g.top * rows / 2 if flips(cfg, bit_serial, adc_range) else no_flip for rows in tile_rows(k, cfg["rows"])]
    attrs = {
        "qmax": float(2 ** (cfg["input_bits"] - 1) - 1), "tiny": float(TINY),
        "step": g.step.reshape(-1).tolist(), "code_lo": g.lo.reshape(-1).tolist(),
        "code_hi": g.hi.reshape(-1).tolist(), "flip_limit": limits, "top": g.top,
        "ref": float(2 ** (cfg["weight_bits"] - 1)) if cfg["sign"] == "offset" else 0.0,
        "place_s": place_s.tolist(),
    }
    if encoding == "two-phase":
        attrs.update(shifts=place_t[: len(place_t) // 2].tolist(), base=float(2 ** cfg["dac_bits"]))
    elif encoding == "twos-complement":
        attrs.update(shifts=place_t[:-1].tolist(), base=float(2 ** cfg["dac_bits"]), wrap=float(-place_t[-1]))
    return CROSSBAR_OVERLOADS[encoding], attrs


class _Body:
    """A function body under construction: `b("Op", *inputs, **attrs)` appends a node and names its output."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.refs: list[str] = []

    def __call__(self, op_type: str, *inputs: str, **attrs) -> str:
        out = f"_{len(self.nodes)}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ints(self, *values: int) -> str:
        return self("Constant", value_ints=list(values))

    def ref(self, name: str, many: bool = False) -> str:
        """A Constant holding the call's float (or float-list) attribute `name`."""
        node = helper.make_node("Constant", [], [f"_{len(self.nodes)}_{name}"])
        kind = AttributeProto.FLOATS if many else AttributeProto.FLOAT
        node.attribute.append(helper.make_attribute_ref("value_floats" if many else "value_float", kind,
                                                        ref_attr_name=name))
        self.nodes.append(node)
        self.refs.append(name)
        return node.output[0]


def _planes(b: _Body, xi: str, encoding: str) -> tuple[str, str]:
    """DAC planes `[T, B, K]` of the integer inputs `xi` `[B, K]` and their place values `[T]` (`input_planes`)."""
    if encoding == "one-cycle":  # a bipolar DAC applies the signed integer at once
        return b("Unsqueeze", xi, b.ints(0)), b("Constant", value_floats=[1.0])
    shifts = b.ref("shifts", many=True)
    per_plane = b("Unsqueeze", shifts, b.ints(1, 2))
    if encoding == "two-phase":  # magnitude digits of the positive entries, then of the negative ones
        value = b("Abs", xi)
        pos = b("CastLike", b("Greater", xi, b("CastLike", b("Constant", value_float=0.0), xi)), xi)
        neg = b("Sub", b("CastLike", b("Constant", value_float=1.0), xi), pos)
    else:  # the low b-1 bits of the two's-complement code, then the sign bit
        neg = b("CastLike", b("Less", xi, b("CastLike", b("Constant", value_float=0.0), xi)), xi)
        value = b("Add", xi, b("Mul", neg, b.ref("wrap")))
    digits = b("Mod", b("Floor", b("Div", b("Unsqueeze", value, b.ints(0)), per_plane)), b.ref("base"), fmod=1)
    if encoding == "two-phase":
        planes = b("Concat", b("Mul", digits, pos), b("Mul", digits, neg), axis=0)
        return planes, b("Concat", shifts, b("Neg", shifts), axis=0)
    planes = b("Concat", digits, b("Unsqueeze", neg, b.ints(0)), axis=0)
    return planes, b("Concat", shifts, b("Neg", b("Unsqueeze", b.ref("wrap"), b.ints(0))), axis=0)


def crossbar_function(encoding: str, onnx_opset: int) -> ir.Function:
    """The `nvcc_pt.CimLinear` overload of `encoding`, `(x, levels, scale, bias) -> y`; see the module docstring."""
    b = _Body()
    k = b("Shape", "x", start=-1)
    flat = b("Reshape", b("Cast", "x", to=TensorProto.FLOAT), b("Concat", b.ints(-1), k, axis=0))
    qmax = b.ref("qmax")
    absmax = b("ReduceMax", b("Abs", flat), b.ints(-1), keepdims=1)
    sx = b("Div", b("Max", absmax, b.ref("tiny")), qmax)
    xi = b("Clip", b("Round", b("Div", flat, sx)), b("Neg", qmax), qmax)
    planes, place_t = _planes(b, xi, encoding)
    # pad K to whole row tiles; every (cycle, token) row becomes a batch row of each tile's product
    tile_shape = b("Shape", "levels", end=2)
    pad = b("Sub", b("ReduceProd", tile_shape, keepdims=1), k)
    padded = b("Pad", planes, b("Concat", b.ints(0, 0, 0, 0, 0), pad, axis=0))
    xt = b("Transpose", b("Reshape", padded, b("Concat", b.ints(-1), tile_shape, axis=0)), perm=[1, 0, 2])
    # ISAAC's encoding: a column whose levels sum past its tile's limit holds top - l
    per_tile = b("Concat", b("Shape", "levels", end=1), b.ints(1, -1), axis=0)
    limit = b("Reshape", b.ref("flip_limit", many=True), per_tile)
    flipped = b("Cast", b("Greater", b("ReduceSum", "levels", b.ints(1), keepdims=1), limit), to=TensorProto.FLOAT)
    top = b.ref("top")
    levels = b("Add", "levels", b("Mul", flipped, b("Sub", top, b("Mul", "levels", b("Constant", value_float=2.0)))))
    # the ADC of each tile (and column): v / step rounded to a code and clipped, flipped columns read back
    step = b("Reshape", b.ref("step", many=True), per_tile)
    codes = b("Round", b("Div", b("MatMul", xt, levels), step))
    codes = b("Max", b("Min", codes, b("Reshape", b.ref("code_hi", many=True), per_tile)),
              b("Reshape", b.ref("code_lo", many=True), per_tile))
    digits = b("Div", b("Mul", b("ReduceSum", xt, b.ints(-1), keepdims=1), top), step)
    codes = b("Add", codes, b("Mul", flipped, b("Sub", digits, b("Mul", codes, b("Constant", value_float=2.0)))))
    # digital: in level units, summed over row tiles, shifted and added over cycles and slices
    summed = b("ReduceSum", b("Mul", codes, step), b.ints(0), keepdims=0)
    place_s = b.ref("place_s", many=True)
    grid_shape = b("Concat", b("Shape", place_t), b.ints(-1), b("Shape", place_s), b("Shape", "scale"), axis=0)
    grid = b("Reshape", summed, grid_shape)
    weighted = b("Mul", b("Mul", grid, b("Reshape", place_t, b.ints(-1, 1, 1, 1))),
                 b("Reshape", place_s, b.ints(-1, 1)))
    y = b("ReduceSum", weighted, b.ints(0, 2), keepdims=0)
    y = b("Sub", y, b("Mul", b.ref("ref"), b("ReduceSum", xi, b.ints(-1), keepdims=1)))  # offset reference column
    y = b("CastLike", b("Mul", b("Mul", y, sx), "scale"), "x")
    y = b("Reshape", y, b("Concat", b("Shape", "x", end=-1), b("Shape", "scale"), axis=0))
    b.nodes.append(helper.make_node("Add", [y, "bias"], ["y"]))
    proto = helper.make_function(DOMAIN, NAME, ["x", "levels", "scale", "bias"], ["y"], b.nodes,
                                 [helper.make_opsetid("", onnx_opset)], attributes=sorted(set(b.refs)))
    proto.overload = CROSSBAR_OVERLOADS[encoding]
    return ir.serde.deserialize_function(proto)
