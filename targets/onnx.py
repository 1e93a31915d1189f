"""ONNX export of a compiled plan, with CiM annotations, that stock onnxruntime runs.

`export_onnx(cm, path)` runs `torch.onnx.export(dynamo=True)` on the lowered program with a
translation for `nvcc_pt::cim_linear`. The translation traces a standard-op body (the
fidelity's own, or at the crossbar levels the quantized one, which has the same output type
and shape) so the exporter can type everything downstream, and remembers which nodes it
emitted; afterwards each such group is replaced by one call of the model-local function
`nvcc_pt.CimLinear(x, weight, bias)`, or at `adc` / `bit-serial` of its overload
`CimLinear(x, levels, scale, bias)` whose inputs are the programmed levels
(`onnx_functions.py`). (Functions are added after the exporter is done because its opset
conversion inlines every local function.)

Plans with mapped dynamic products (`map_dynamic`) are refused with an `ExportError`.

Every call node carries the op's mapping in `metadata_props` (`ANNOTATION_KEYS`); the model
carries the mapping report JSON and the plan schema version (`MODEL_KEYS`). Programmed
weights are initializers; models over `EXTERNAL_DATA_THRESHOLD_BYTES` keep them in a
`<name>.data` file beside the model. The file is written to a temporary directory beside
the target and renamed into place (`nvcc_pt.files`), so the path holds the old file or the
new one, and a failure (`FileWriteError` for a full disk) leaves the old file as it was.

    >>> cm.export_onnx("model.onnx")
    >>> nvcc_pt.read_onnx_annotations("model.onnx")["ops"]["linear"]["cim.tiles"]
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from nvcc_pt.targets.onnx_functions import (
    BODIES,
    DOMAIN,
    NAME,
    crossbar_call,
    crossbar_function,
    function_for,
    input_encoding,
)
from nvcc_pt.targets.simulator import CROSSBAR
from torch.export import Dim

from nvcc_pt import meta
from nvcc_pt.errors import ExportError, InputError
from nvcc_pt.files import move_into_place, scratch_directory
from nvcc_pt.ops import CHIP_ATTR, parse_config
from nvcc_pt.plan import PLAN_SCHEMA

SUPPORTED_FIDELITIES = (*BODIES, *CROSSBAR)
"""Fidelity levels whose arithmetic the exported file reproduces."""
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
"""Initializer bytes above which weights go to an external data file (protobuf stops at 2 GiB)."""
ANNOTATION_KEYS = ("cim.op", "cim.module", "cim.tiles", "cim.crossbar", "cim.bits", "cim.device", "cim.sigma",
                   "cim.placement", "cim.fidelity")
MODEL_KEYS = {"report": "nvcc_pt.report", "plan_schema": "nvcc_pt.plan_schema", "fidelity": "nvcc_pt.fidelity",
              "seed": "nvcc_pt.seed", "target": "nvcc_pt.target"}


@dataclass
class _Call:
    """One translated `cim_linear`: its operands, result and the nodes the traced body emitted."""

    config: dict[str, Any]
    x: ir.Value
    weight: ir.Value
    bias: ir.Value | None
    state: list[ir.Value]
    y: ir.Value
    nodes: list[ir.Node]


def export_onnx(cm, path: str | os.PathLike) -> Path:
    """Write `cm`'s lowered program to `path` as ONNX; see the module docstring."""
    path = Path(path)
    _check_path(path)
    if cm.fidelity not in SUPPORTED_FIDELITIES:
        raise ExportError(f"fidelity {cm.fidelity!r} cannot be exported to ONNX yet; the exporter supports "
                          f"{SUPPORTED_FIDELITIES}. Export cm.with_fidelity('noisy') (same seed, same programmed "
                          "weights, ideal ADC) instead")
    _check_programmed(cm)
    _check_no_dynamic(cm)
    noisy_reads = [n for n, st in cm.plan.states() if st.config.get("read_sigma", 0.0) > 0]
    if cm.fidelity in ("noisy", *CROSSBAR) and noisy_reads:
        warnings.warn(f"ops {noisy_reads[:3]}... have read noise, which the simulator draws afresh per call; the "
                      "ONNX file computes the noise-free read of the programmed weights", stacklevel=3)
    args, dynamic, input_names, output_names = _example_inputs(cm)
    calls: list[_Call] = []
    held = [(state, state.weight, state.levels) for _, state in cm.plan.states()]
    try:  # the file holds float32 levels (the values the simulator multiplies by; it stores them as float16), and
        # the effective weight and levels of chips the simulator regenerates per call
        for state, _, _ in held:
            weight, levels = state.stored_chip()
            state.weight, state.levels = weight, levels.float()
        model = _run_exporter(cm.graph_module, args, dynamic, input_names, output_names, calls)
        _outline(model, calls, cm.fidelity, {st.config["op"]: st for _, st in cm.plan.states()})
    finally:
        for state, weight, levels in held:
            state.weight, state.levels = weight, levels
    _annotate(model, cm, calls)
    _write(model, path)
    return path


# -- checks -----------------------------------------------------------------------------------
def _check_path(path: Path) -> None:
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give a file path such as {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: directory {path.parent} does not exist; create it first")


def _check_programmed(cm) -> None:
    for name, state in cm.plan.states():
        w = state.weight
        if w is None or w.device.type == "meta" or tuple(w.shape) != tuple(state.source.shape):
            shape = None if w is None else tuple(w.shape)
            raise ExportError(f"op {name!r} has no programmed weights (weight {shape}, expected "
                              f"{tuple(state.source.shape)}); program the plan with cm.program(seed) or load it "
                              "from a complete plan directory")
        if cm.fidelity != "exact" and state.scale.numel() != state.source.shape[0]:
            raise ExportError(f"op {name!r} lacks its programmed weight scales for fidelity {cm.fidelity!r}; "
                              "program the plan with cm.program(seed)")
        if cm.fidelity in CROSSBAR and state.levels.numel() == 0 and getattr(state.levels, CHIP_ATTR, None) is None:
            raise ExportError(f"op {name!r} holds no programmed levels for fidelity {cm.fidelity!r}; program the "
                              "plan with cm.program(seed) or cm.with_fidelity(...)")


def _check_no_dynamic(cm) -> None:
    """Mapped dynamic products write their operand with fresh noise on every call, which a static file cannot
    reproduce; the exporter refuses them at every fidelity rather than export different arithmetic."""
    from nvcc_pt.passes.lower import write_states

    dynamic = [name for name, _ in write_states(cm.graph_module)]
    if dynamic:
        raise ExportError(f"ops {dynamic[:4]} are dynamic products (attention QK^T / AV) mapped with map_dynamic: "
                          "their operand is written into cells per input with fresh write noise, which the ONNX "
                          "exporter does not translate. Compile without map_dynamic (policy={'map_dynamic': False}) "
                          "to export")


def _example_inputs(cm) -> tuple[tuple, tuple, list[str], list[str]]:
    """Example arguments, dynamic shapes, input and output names from the capture info."""
    from nvcc_pt.capture import TOKEN_INPUTS

    info = cm.plan.capture
    gen = torch.Generator().manual_seed(0)
    batch, seq = Dim("batch", min=1, max=65536), Dim("seq", min=1, max=65536)
    named: dict[str, torch.Tensor] = {}
    for spec in info.inputs:
        if spec.name == "soft_prompt":
            continue  # filled in from the plan's own prompt below
        shape = tuple(5 if s is None else s for s in spec.shape)
        dtype = getattr(torch, spec.dtype)
        if spec.name == "input_ids":
            named[spec.name] = torch.randint(0, max(info.vocab_size, 2), shape, generator=gen)
        elif spec.name == "attention_mask":
            named[spec.name] = torch.ones(shape, dtype=dtype)
        elif dtype.is_floating_point:
            named[spec.name] = torch.randn(shape, generator=gen).to(dtype)
        else:
            named[spec.name] = torch.zeros(shape, dtype=dtype)
    flat = cm.prepare_inputs(**{k: v.to(cm.device) for k, v in named.items()})
    dynamic = []
    for spec in info.inputs:
        dims = {d: (batch if d == 0 else seq if spec.name in TOKEN_INPUTS else Dim(f"{spec.name}_{d}", min=1, max=65536))
                for d, s in enumerate(spec.shape) if s is None}
        dynamic.append(dims or None)
    out = info.output
    outputs = list(out["fields"]) if out.get("type") in ("model_output", "dict") else \
        ["output"] if out.get("type") == "tensor" else [f"output_{i}" for i in range(out.get("count", 1))]
    return flat, tuple(dynamic), [s.name for s in info.inputs], outputs


# -- export -----------------------------------------------------------------------------------
def _translation(calls: list[_Call]):
    """The `cim_linear` translation: trace the fidelity's body and remember what it emitted."""
    from onnxscript import opset18 as op

    def cim_linear(x, weight, bias, state, config):
        cfg = parse_config(config)
        body = BODIES.get("quantized" if cfg["fidelity"] in CROSSBAR else cfg["fidelity"])
        if body is None:
            raise ExportError(f"op {cfg['op']!r} runs at fidelity {cfg['fidelity']!r}; the ONNX exporter supports "
                              f"{SUPPORTED_FIDELITIES}")
        b = bias if bias is not None else op.CastLike(
            op.ConstantOfShape(op.Constant(value_ints=[weight.shape[0]])), x)
        attrs = {} if cfg["fidelity"] == "exact" else _quant_attrs(cfg, x)
        y = body.function(x, weight, b, **attrs)
        calls.append(_Call(dict(cfg), x, weight, bias, list(state), y, _emitted(y, {x, weight, bias})))
        return y

    return cim_linear


def _quant_attrs(cfg: dict[str, Any], x: ir.Value) -> dict[str, float]:
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32
    return {"qmax": float(2 ** (cfg["input_bits"] - 1) - 1), "tiny": float(np.finfo(dtype).tiny)}


def _emitted(y: ir.Value, stop: set) -> list[ir.Node]:
    """The nodes between the operands `stop` and `y`: what one traced body emitted."""
    seen: dict[int, ir.Node] = {}
    todo = [y.producer()]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        todo.extend(v.producer() for v in node.inputs if v is not None and v not in stop)
    return list(seen.values())


def _run_exporter(gm, args, dynamic, input_names, output_names, calls: list[_Call]) -> ir.Model:
    table = {torch.ops.nvcc_pt.cim_linear.default: _translation(calls)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(gm, args, dynamo=True, custom_translation_table=table, dynamic_shapes=dynamic,
                                        input_names=input_names, output_names=output_names, optimize=False,
                                        verbose=False, report=False)
    except Exception as e:  # the exporter wraps everything in its own error types
        raise _export_error(e) from e
    return program.model


def _export_error(e: BaseException) -> ExportError:
    chain, cur = [], e
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, ExportError):
            return c
    text = "\n".join(str(c) for c in chain)
    missing = (re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'", text)
               or re.search(r"No ONNX function found for (\S+?)\.?(?:\s|$)()", text))
    if missing:
        name = ".".join(p for p in missing.groups() if p)
        return ExportError(f"the ONNX exporter cannot translate op {name!r}: it has no ONNX translation. Keep that op "
                           "out of the compiled model, or register one with torch.onnx's custom_translation_table")
    last = str(chain[-1]).strip().splitlines()
    return ExportError(f"torch.onnx.export failed: {type(chain[-1]).__name__}: {(last[0] if last else '')[:400]}")


# -- the CimLinear function and annotations -------------------------------------------------
def _outline(model: ir.Model, calls: list[_Call], fidelity: str, states: dict) -> None:
    """Replace each traced body by one call of `nvcc_pt.CimLinear` (at the crossbar levels, of an overload of it).

    `states`: op name -> its `CimState`, for the ADC range and the row-tile count.
    """
    graph = model.graph
    opset = model.opset_imports.get("", 18)
    if fidelity not in CROSSBAR:
        func = function_for(fidelity, opset)
        model.functions[func.identifier()] = func
    model.opset_imports[DOMAIN] = 1
    zeros: dict[tuple, ir.Value] = {}
    for call in calls:
        bias = call.bias if call.bias is not None else _zero_bias(graph, call.weight, zeros)
        overload, inputs = "", [call.x, call.weight, bias]
        attrs: list[ir.Attr] = []
        if fidelity in CROSSBAR:
            scale, levels, _ = call.state
            state = states[call.config["op"]]
            overload, values = crossbar_call(state.config, fidelity, state.adc_range, state.weight.shape[-1])
            inputs = [call.x, levels, scale, bias]
            for value in (levels, scale):  # the exporter dropped them while nothing read them
                if value.name not in graph.initializers:
                    graph.register_initializer(value)
            attrs = [ir.AttrFloat32s(k, v) if isinstance(v, list) else ir.AttrFloat32(k, v) for k, v in values.items()]
            func = crossbar_function(input_encoding(state.config, fidelity), opset)
            model.functions.setdefault(func.identifier(), func)
        elif fidelity != "exact":
            attrs = [ir.AttrFloat32(k, v) for k, v in _quant_attrs(call.config, call.x).items()]
        node = ir.Node(DOMAIN, NAME, inputs, attributes=attrs, overload=overload, num_outputs=1,
                       name=f"cim/{call.config['op']}")
        out = node.outputs[0]
        out.dtype, out.shape = call.y.dtype, call.y.shape
        graph.insert_before(call.y.producer(), node)
        name = call.y.name
        call.y.replace_all_uses_with(out, replace_graph_outputs=True)
        graph.remove(call.nodes, safe=True)
        out.name = name
    if fidelity in CROSSBAR:  # the crossbar functions read the levels; the effective weights stay out of the file
        for call in calls:
            for value in (call.weight, *call.state):
                if not value.uses() and value.name in graph.initializers:
                    graph.initializers.pop(value.name)


def _zero_bias(graph: ir.Graph, weight: ir.Value, cache: dict) -> ir.Value:
    n, dtype = weight.shape[0], weight.dtype
    if (n, dtype) not in cache:
        tensor = ir.tensor(np.zeros(n, dtype=dtype.numpy()), name=f"nvcc_pt.zero_bias.{n}.{dtype.name.lower()}")
        value = ir.Value(name=tensor.name, shape=ir.Shape([n]), type=ir.TensorType(dtype), const_value=tensor)
        graph.register_initializer(value)
        cache[(n, dtype)] = value
    return cache[(n, dtype)]


def op_annotations(records: dict[str, Any], name: str, fidelity: str) -> dict[str, str]:
    """The `cim.*` metadata of one mapped op, from its plan records."""
    info: meta.MatmulInfo = records[meta.MATMUL]
    grid: meta.TileGrid = records[meta.TILES]
    prec: meta.Precision = records[meta.PRECISION]
    noise: meta.NoiseInfo = records[meta.NOISE]
    place: meta.Placement | None = records.get(meta.PLACEMENT)
    return {
        "cim.op": name,
        "cim.module": info.module,
        "cim.tiles": f"{grid.row_tiles}x{grid.col_tiles} ({grid.arrays} arrays, K={grid.k}, N={grid.n}, "
                     f"S={grid.slices}, P={grid.sign_columns}, util {grid.utilization:.1%})",
        "cim.crossbar": f"{grid.rows}x{grid.cols}",
        "cim.bits": f"w{prec.weight_bits}/in{prec.input_bits}/cell{prec.cell_bits}/dac{prec.dac_bits}/adc{prec.adc_bits}",
        "cim.device": noise.device,
        "cim.sigma": f"{noise.sigma:g}",
        "cim.placement": place.describe() if place is not None else "",
        "cim.fidelity": fidelity,
    }


def _annotate(model: ir.Model, cm, calls: list[_Call]) -> None:
    by_node = {n.name: n for n in model.graph if n.domain == DOMAIN}
    for call in calls:
        name = call.config["op"]
        node = by_node[f"cim/{name}"]
        node.metadata_props.update(op_annotations(cm.plan.records[name], name, cm.fidelity))
    props = model.metadata_props
    props[MODEL_KEYS["report"]] = json.dumps(cm.report.to_dict(), sort_keys=True)
    props[MODEL_KEYS["plan_schema"]] = str(PLAN_SCHEMA)
    props[MODEL_KEYS["fidelity"]] = cm.fidelity
    props[MODEL_KEYS["seed"]] = str(cm.seed)
    props[MODEL_KEYS["target"]] = cm.target.name
    model.producer_name = "nvcc_pt"


# -- files ------------------------------------------------------------------------------------
def _write(model: ir.Model, path: Path) -> None:
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data_name = f"{path.name}.data" if size > EXTERNAL_DATA_THRESHOLD_BYTES else None
    with scratch_directory(path) as tmp:
        ir.save(model, tmp / path.name, external_data=data_name)
        # Each file is replaced atomically; the pair is not (a crash between the two renames leaves the new
        # weights beside the old model), so the data goes first and the model, which names it, last.
        if data_name is not None:
            move_into_place(tmp / data_name, path.parent / data_name, "ONNX external data file")
        move_into_place(tmp / path.name, path, "ONNX file")


def read_onnx_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """The CiM annotations of an exported file: model-level fields and `ops` (op name -> `cim.*` dict).

    Example:
        >>> ann = nvcc_pt.read_onnx_annotations("model.onnx")
        >>> ann["plan_schema"], ann["report"]["totals"]["arrays"], ann["ops"]["linear"]["cim.placement"]
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError
        raise InputError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if MODEL_KEYS["plan_schema"] not in props:
        raise InputError(f"{path} carries no nvcc_pt annotations; export it with cm.export_onnx()")
    try:
        out: dict[str, Any] = {
            "plan_schema": int(props[MODEL_KEYS["plan_schema"]]),
            "fidelity": props.get(MODEL_KEYS["fidelity"]),
            "seed": int(props[MODEL_KEYS["seed"]]) if MODEL_KEYS["seed"] in props else None,
            "target": props.get(MODEL_KEYS["target"]),
            "report": json.loads(props[MODEL_KEYS["report"]]) if MODEL_KEYS["report"] in props else None,
            "ops": {},
        }
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path} carries malformed nvcc_pt annotations ({type(e).__name__}: {e}); export it again") from e
    for node in proto.graph.node:
        if node.domain == DOMAIN:
            ann = {p.key: p.value for p in node.metadata_props if p.key.startswith("cim.")}
            out["ops"][ann.get("cim.op", node.name)] = ann
    return out
