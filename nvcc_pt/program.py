"""The captured program as plain JSON: an FX graph whose ops come from an allow-list, and its tensors by name.

`encode_module(gm)` turns the captured, not yet lowered `GraphModule` (what `ExportedProgram.module()`
returns) into a JSON document and the tensors it reads; `build_module(doc, tensors)` rebuilds an equivalent
`GraphModule`. A loaded plan keeps the two in a `SavedProgram`, which offers `.module()` like the
`ExportedProgram` a compile keeps, so re-lowering (`with_fidelity`) works the same on both.

Document (`program.json`):

    {"format": "nvcc_pt.program", "version": 1,
     "attributes": [{"name": "m.lm_head.weight", "kind": "parameter" | "buffer" | "constant",
                     "tensor": "m.lm_head.weight", "dtype": "float32", "shape": [101, 36],
                     "requires_grad": false}],
     "nodes": [{"name": "input_ids", "op": "placeholder"},
               {"name": "w", "op": "get_attr", "target": "m.lm_head.weight"},
               {"name": "linear", "op": "call_function", "target": "aten.linear.default",
                "args": [{"node": "x"}, {"node": "w"}], "kwargs": {}},
               {"name": "output", "op": "output", "args": [{"node": "linear"}]}]}

An argument is JSON null, a boolean, an integer, a finite float, a string or a list, or one of the tagged
objects `{"node": name}` (an earlier node), `{"tuple": [...]}`, `{"float": "inf" | "-inf" | "nan"}`,
`{"dtype": "float32"}`, `{"device": "cpu" | "cuda:0"}`, `{"layout": "strided"}`,
`{"memory_format": "contiguous_format"}`. A `call_function` target is an operator of the `aten`, `prims`
or `nvcc_pt` namespace (`aten.linear.default`: namespace, name, overload) or one of `FUNCTIONS`. Sizes
that vary with the inputs are computed in the graph (`aten.sym_size.int` and integer arithmetic), so no
shape expression is stored and none is evaluated.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from nvcc_pt.errors import PlanFormatError

FORMAT, VERSION = "nvcc_pt.program", 1
NAMESPACES = ("aten", "prims", "nvcc_pt")
FUNCTIONS: dict[str, Any] = {
    **{f"operator.{n}": getattr(operator, n) for n in (
        "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "eq", "ne", "lt", "le", "gt",
        "ge", "and_", "or_", "not_")},
    **{f"torch.{n}": getattr(torch, n) for n in ("sym_max", "sym_min", "sym_float", "sym_int", "sym_not")},
}
"""The plain Python functions a saved graph may call (size arithmetic), by name."""
_NAME_OF_FUNCTION = {id(f): n for n, f in FUNCTIONS.items()}
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128)}
LAYOUTS = {"strided": torch.strided, "sparse_coo": torch.sparse_coo}
MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format,
                  "channels_last": torch.channels_last}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE = re.compile(r"^(?!__|self$)[A-Za-z_][A-Za-z0-9_]*$")
_PATH_PART = re.compile(r"^(?!__)[A-Za-z0-9_]+$")
_DEVICE = re.compile(r"^(cpu|cuda|meta|mps|xpu)(:[0-9]{1,3})?$")
KINDS = ("parameter", "buffer", "constant")
RESERVED = ("cim",)
"""Top-level attribute names the lowering adds (`passes/lower.py` keeps the crossbar state under `cim`)."""
ATTRIBUTE_FIELDS = {"name", "kind", "tensor", "dtype", "shape", "requires_grad"}


class SavedProgram:
    """A captured program read from a plan; `.module()` builds a fresh, un-lowered `GraphModule`."""

    def __init__(self, doc: dict[str, Any], tensors: dict[str, torch.Tensor], inputs: tuple = ()):
        self.doc = doc
        self.tensors = tensors
        self.inputs = inputs
        """The captured inputs (`InputSpec`), to give the nodes their symbolic shapes."""
        self.fresh: fx.GraphModule | None = None
        """A module already built (by the loader's checks) and not yet handed out."""

    def module(self, check_guards: bool = False) -> fx.GraphModule:
        gm, self.fresh = self.fresh, None
        if gm is None:
            gm = build_module(self.doc, self.tensors)
            propagate_shapes(gm, self.inputs)
        return gm


def propagate_shapes(gm: fx.GraphModule, inputs) -> None:
    """Give every node the `meta["val"]` capture gave it: fake tensors with symbolic sizes where the captured
    input was dynamic, so passes that read shapes (convolution geometry, attention decomposition) lower a
    loaded program as they lowered the compiled one, without fixing any dynamic size."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    def propagate() -> None:
        mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        fakes = []
        for spec in inputs:
            # 4, not 0 or 1: sizes 0 and 1 would be specialized
            example = torch.zeros([4 if s is None else s for s in spec.shape], dtype=getattr(torch, spec.dtype))
            dims = [DimDynamic.DYNAMIC if s is None else DimDynamic.STATIC for s in spec.shape]
            fakes.append(mode.from_tensor(example, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims)))
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)

    try:
        propagate()
    except RuntimeError:  # torch 2.11's composite ops (aten.linear) cannot size a symbolic input outside the Python
        with enable_python_dispatcher():  # dispatcher, which torch.export traces under (it costs a quarter more)
            propagate()


# -- writing ----------------------------------------------------------------------------------
def _unsupported(what: str) -> PlanFormatError:
    return PlanFormatError(f"the captured program holds {what}, which the plan format cannot store; the plan "
                           "was not saved. Report the model that produced it")


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        if ns not in NAMESPACES:
            raise _unsupported(f"the operator {target} of namespace {ns!r}")
        packet = target.overloadpacket.__name__.split(".")[-1]
        return f"{ns}.{packet}.{target._overloadname}"
    if id(target) in _NAME_OF_FUNCTION:
        return _NAME_OF_FUNCTION[id(target)]
    raise _unsupported(f"a call of {target!r}")


def _encode_arg(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, (bool, int, str)):
        return a
    if isinstance(a, float):
        return a if a == a and abs(a) != float("inf") else {"float": str(a)}
    if isinstance(a, tuple):
        return {"tuple": [_encode_arg(x) for x in a]}
    if isinstance(a, list):
        return [_encode_arg(x) for x in a]
    if isinstance(a, torch.dtype) and str(a).removeprefix("torch.") in DTYPES:
        return {"dtype": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if isinstance(a, torch.layout) and str(a).removeprefix("torch.") in LAYOUTS:
        return {"layout": str(a).removeprefix("torch.")}
    if isinstance(a, torch.memory_format) and str(a).removeprefix("torch.") in MEMORY_FORMATS:
        return {"memory_format": str(a).removeprefix("torch.")}
    raise _unsupported(f"an argument of type {type(a).__name__} ({str(a)[:60]})")


def _output_structure(gm: fx.GraphModule, out: fx.Node) -> Any:
    """The output node's value with the module's pytree output spec applied (a plain graph returns it)."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    flat = out.args[0]
    if info is None:
        return flat
    n = sum(node.op == "placeholder" for node in gm.graph.nodes)
    if info.in_spec is not None and info.in_spec != pytree.tree_structure((tuple(range(n)), {})):
        raise _unsupported(f"inputs structured as {info.in_spec} (only positional tensor inputs are stored)")
    return flat if info.out_spec is None else pytree.tree_unflatten(list(flat), info.out_spec)


def encode_module(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(program document, {tensor name: tensor}) of a captured, un-lowered graph module."""
    attributes, tensors, keys = [], {}, {}

    def add(name: str, value: torch.Tensor, kind: str) -> None:
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()),
                 value.dtype) if value.device.type != "meta" else id(value)
        key = keys.setdefault(ident, name)  # tied weights share one stored tensor
        tensors[key] = value.detach()
        attributes.append({"name": name, "kind": kind, "tensor": key, "dtype": str(value.dtype).removeprefix("torch."),
                           "shape": list(value.shape), "requires_grad": bool(kind == "parameter" and value.requires_grad)})

    for name, p in gm.named_parameters(remove_duplicate=False):
        add(name, p, "parameter")
    for name, b in gm.named_buffers(remove_duplicate=False):
        add(name, b, "buffer")
    known = {a["name"] for a in attributes}
    nodes = []
    for node in gm.graph.nodes:
        entry: dict[str, Any] = {"name": node.name, "op": node.op}
        if node.op == "get_attr":
            if node.target not in known:
                owner, _, leaf = node.target.rpartition(".")
                value = getattr(gm.get_submodule(owner) if owner else gm, leaf)
                if not isinstance(value, torch.Tensor):
                    raise _unsupported(f"the attribute {node.target!r} of type {type(value).__name__}")
                add(node.target, value, "constant")
                known.add(node.target)
            entry["target"] = node.target
        elif node.op == "call_function":
            entry.update(target=_target_name(node.target), args=_encode_arg(list(node.args)),
                         kwargs={k: _encode_arg(v) for k, v in node.kwargs.items()})
        elif node.op == "output":
            entry["args"] = [_encode_arg(_output_structure(gm, node))]
        elif node.op != "placeholder":
            raise _unsupported(f"a {node.op} node ({node.name})")
        nodes.append(entry)
    return {"format": FORMAT, "version": VERSION, "attributes": attributes, "nodes": nodes}, tensors


# -- reading ----------------------------------------------------------------------------------
def _bad(where: str, why: str) -> PlanFormatError:
    return PlanFormatError(f"{where}: {why}; the program is corrupted or was not written by nvcc_pt, save the plan again")


def _resolve(target: Any, where: str) -> Any:
    if not isinstance(target, str):
        raise _bad(where, f"target {str(target)[:80]!r} is not an operator name")
    if target in FUNCTIONS:
        return FUNCTIONS[target]
    parts = target.split(".")
    if len(parts) != 3 or parts[0] not in NAMESPACES or not all(_IDENT.match(p) for p in parts[1:]):
        raise _bad(where, f"calls {target[:80]!r}, which is neither an operator of {NAMESPACES} nor one of "
                          f"{sorted(FUNCTIONS)}")
    try:
        packet = getattr(getattr(torch.ops, parts[0]), parts[1])
        op = getattr(packet, parts[2]) if isinstance(packet, torch._ops.OpOverloadPacket) else None
    except (AttributeError, RuntimeError):
        op = None
    if not isinstance(op, torch._ops.OpOverload):
        raise _bad(where, f"calls {target!r}, which this torch does not have")
    return op


def _strings(a: Any) -> bool:
    return isinstance(a, str) or (isinstance(a, (list, tuple)) and any(_strings(x) for x in a))


def _check_call(op: Any, args: tuple, kwargs: dict[str, Any], where: str) -> None:
    """Arguments bind to the operator's schema, and strings go only where the schema takes strings."""
    if not isinstance(op, torch._ops.OpOverload):
        if kwargs or len(args) > 3 or _strings(args):
            raise _bad(where, f"{op.__name__} takes up to three positional non-string arguments")
        return
    schema = op._schema.arguments
    positional = [a for a in schema if not a.kwarg_only]
    by_name = {a.name: a for a in schema}
    if len(args) > len(positional) or not set(kwargs) <= set(by_name):
        raise _bad(where, f"the arguments do not fit {op}'s schema {op._schema}")
    bound = [*zip(positional, args), *((by_name[k], v) for k, v in kwargs.items())]
    for arg, value in bound:
        if _strings(value) and "str" not in str(arg.type):
            raise _bad(where, f"argument {arg.name!r} of {op} is a {arg.type}, not the string {str(value)[:60]!r}")


def _decode_arg(a: Any, nodes: dict[str, fx.Node], where: str) -> Any:
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, list):
        return [_decode_arg(x, nodes, where) for x in a]
    if not (isinstance(a, dict) and len(a) == 1):
        raise _bad(where, f"argument {str(a)[:80]} is not an encoded value")
    (tag, v), = a.items()
    if tag == "node" and isinstance(v, str) and v in nodes:
        return nodes[v]
    if tag == "tuple" and isinstance(v, list):
        return tuple(_decode_arg(x, nodes, where) for x in v)
    if tag == "float" and v in ("inf", "-inf", "nan"):
        return float(v)
    if tag == "dtype" and v in DTYPES:
        return DTYPES[v]
    if tag == "device" and isinstance(v, str) and _DEVICE.match(v):
        return torch.device(v)
    if tag == "layout" and v in LAYOUTS:
        return LAYOUTS[v]
    if tag == "memory_format" and v in MEMORY_FORMATS:
        return MEMORY_FORMATS[v]
    raise _bad(where, f"argument {str(a)[:80]} is not a known value (or names a node that does not come before)")


def _install(gm: nn.Module, attr: dict[str, Any], tensors: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
             where: str) -> None:
    if not (isinstance(attr, dict) and set(attr) == ATTRIBUTE_FIELDS):
        raise _bad(where, f"attribute entry {str(attr)[:100]} does not have exactly the fields {sorted(ATTRIBUTE_FIELDS)}")
    name, kind, key, grad = attr["name"], attr["kind"], attr["tensor"], attr["requires_grad"]
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or not all(_PATH_PART.match(p) for p in parts) or kind not in KINDS or not isinstance(grad, bool):
        raise _bad(where, f"attribute {str(name)[:80]!r} of kind {str(kind)[:20]!r} is malformed")
    if not isinstance(key, str) or key not in tensors:
        raise _bad(where, f"attribute {name!r} reads tensor {str(key)[:80]!r}, which tensors.safetensors lacks")
    if parts[0] in RESERVED:
        raise _bad(where, f"attribute {name!r} uses the name {parts[0]!r}, which lowering reserves")
    owner = gm
    for part in parts[:-1]:
        if part not in owner._modules:
            if hasattr(owner, part):
                raise _bad(where, f"attribute path {name!r} collides with {part!r}")
            owner.add_module(part, nn.Module())
        owner = owner._modules[part]
    leaf, value = parts[-1], tensors[key]
    if attr["dtype"] != str(value.dtype).removeprefix("torch.") or attr["shape"] != list(value.shape):
        raise _bad(where, f"attribute {name!r} is declared {attr['dtype']} {attr['shape']}, but tensor {key!r} is "
                          f"{value.dtype} {list(value.shape)}")
    if hasattr(owner, leaf):
        raise _bad(where, f"attribute {name!r} is defined twice or collides with a module attribute")
    if kind == "parameter":
        if not value.is_floating_point() and grad:
            raise _bad(where, f"parameter {name!r} of dtype {value.dtype} cannot require gradients")
        owner.register_parameter(leaf, params.setdefault(key, nn.Parameter(value, requires_grad=grad)))
    elif kind == "buffer":
        owner.register_buffer(leaf, value)
    else:
        setattr(owner, leaf, value)


def build_module(doc: Any, tensors: dict[str, torch.Tensor], where: str = "program.json") -> fx.GraphModule:
    """A `GraphModule` from a program document and its tensors; `PlanFormatError` on anything malformed."""
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT and set(doc) == {"format", "version", "attributes", "nodes"}):
        raise _bad(where, "it is not an nvcc_pt program document")
    if doc["version"] != VERSION:
        raise PlanFormatError(f"{where} has program version {doc['version']!r}; this nvcc_pt reads {VERSION}. "
                              "Compile the model again and save it")
    if not (isinstance(doc["attributes"], list) and isinstance(doc["nodes"], list) and doc["nodes"]):
        raise _bad(where, "attributes and nodes must be lists")
    gm = fx.GraphModule(nn.Module(), fx.Graph())
    params: dict[str, nn.Parameter] = {}
    for attr in doc["attributes"]:
        _install(gm, attr, tensors, params, where)
    attributes = {a["name"] for a in doc["attributes"]}
    graph, nodes = fx.Graph(), {}
    for i, entry in enumerate(doc["nodes"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and _NODE.match(entry["name"])):
            raise _bad(where, f"node {i} has no valid name")
        name, op, here = entry["name"], entry.get("op"), f"{where}, node {entry['name']!r}"
        last = i == len(doc["nodes"]) - 1
        if name in nodes or (op == "output") != last:
            raise _bad(here, "node names must be unique and the one output node must come last")
        if op == "placeholder" and set(entry) == {"name", "op"}:
            node = graph.create_node("placeholder", name, name=name)
        elif op == "get_attr" and set(entry) == {"name", "op", "target"}:
            if entry["target"] not in attributes:
                raise _bad(here, f"reads attribute {str(entry['target'])[:80]!r}, which is not declared")
            node = graph.create_node("get_attr", entry["target"], name=name)
        elif op == "call_function" and set(entry) == {"name", "op", "target", "args", "kwargs"}:
            if not (isinstance(entry["args"], list) and isinstance(entry["kwargs"], dict)):
                raise _bad(here, "args must be a list and kwargs an object")
            op = _resolve(entry["target"], here)
            args = tuple(_decode_arg(entry["args"], nodes, here))
            kwargs = {k: _decode_arg(v, nodes, here) for k, v in entry["kwargs"].items()}
            _check_call(op, args, kwargs, here)
            node = graph.create_node("call_function", op, args, kwargs, name=name)
        elif op == "output" and set(entry) == {"name", "op", "args"}:
            if not (isinstance(entry["args"], list) and len(entry["args"]) == 1):
                raise _bad(here, "the output node takes one argument")
            node = graph.output(_decode_arg(entry["args"][0], nodes, here))
        else:
            raise _bad(here, f"op {str(op)[:40]!r} with fields {sorted(map(str, entry))} is not a node this format has")
        if node.name != name:
            raise _bad(here, f"the name is not usable in a graph (it became {node.name!r})")
        nodes[name] = node
    try:
        graph.lint()
        gm.graph = graph
    except Exception as e:  # fx reports structural problems with several exception types
        raise _bad(where, f"the graph does not form a program ({type(e).__name__}: {str(e)[:200]})") from e
    return gm
