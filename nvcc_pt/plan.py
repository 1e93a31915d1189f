"""ExecutablePlan: what lowering emits and the targets consume, and its on-disk format.

A plan directory (format and threat model: docs/plan-format.md) holds
  plan.json            schema version, target, fidelity, seed, capture info, per-op records, the mapping
                       report, and the SHA-256 digests of the other files, of every tensor and of itself
  program.json         the captured graph before lowering, as JSON with allow-listed ops (`nvcc_pt.program`)
  tensors.safetensors  the graph's weights and the programmed state of every mapped op
Loading parses JSON and safetensors with checked parsers, verifies every digest, checks the records, graph
and tensors against each other, and re-applies the recorded lowering: nothing in the directory is executed,
unpickled or evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx

from nvcc_pt import meta, tensorfile
from nvcc_pt.capture import CaptureInfo
from nvcc_pt.errors import PlanFormatError
from nvcc_pt.files import directory_writer, recover_directory
from nvcc_pt.jsonfile import dumps_canonical, loads_strict
from nvcc_pt.ops import FIDELITIES, CimState
from nvcc_pt.program import DTYPES, SavedProgram, build_module, encode_module, propagate_shapes

PLAN_SCHEMA = 3
PLAN, PROGRAM, TENSORS = "plan.json", "program.json", "tensors.safetensors"
FILES = (PLAN, PROGRAM, TENSORS)
OLD_FILES = ("program.pt2",)
"""Files of earlier schemas: a save may replace a directory holding them; a load never opens them."""
SOFT_PROMPT = "__soft_prompt__"
GRAPH_PREFIX = "program/"
MAX_JSON_BYTES = 1 << 30


@dataclass
class ExecutablePlan:
    """The lowered graph plus everything needed to re-create it."""

    graph_module: fx.GraphModule
    exported: Any
    """The captured program before lowering: an `ExportedProgram` after a compile, a `SavedProgram` after a
    load; both give a fresh un-lowered `GraphModule` from `.module()`."""
    target: Any  # TargetSpec
    fidelity: str
    seed: int
    capture: CaptureInfo
    records: dict[str, dict[str, Any]]
    """Per original node name: {meta key: record}."""
    results: dict[str, Any] = field(default_factory=dict)

    def states(self) -> list[tuple[str, CimState]]:
        """(node name, state) of every mapped op, in program order."""
        root = getattr(self.graph_module, "cim", None)
        return list(root.named_children()) if root is not None else []

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "target": self.target.to_dict(),
            "fidelity": self.fidelity,
            "seed": self.seed,
            "capture": self.capture.to_dict(),
            "results": {k: v for k, v in self.results.items() if isinstance(v, (int, float, str))},
            "records": {name: {k: meta.record_to_dict(r) for k, r in recs.items()} for name, recs in self.records.items()},
        }


def collect_records(gm: fx.GraphModule) -> dict[str, dict[str, Any]]:
    out = {}
    for node in gm.graph.nodes:
        recs = {k: node.meta[k] for k in meta.RECORD_TYPES if k in node.meta}
        if recs:
            out[node.meta.get("nvcc_pt.lowered_from", node.name)] = recs
    return out


def attach_records(gm: fx.GraphModule, records: dict[str, dict[str, Any]]) -> None:
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [name for name in records if name not in by_name]
    if missing:
        raise PlanFormatError(f"plan records name nodes {missing[:5]} that the saved program does not have; "
                              "the plan directory mixes files from different compiles, compile again")
    for name, recs in records.items():
        by_name[name].meta.update(recs)


def _program(exported: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if isinstance(exported, SavedProgram):
        doc, tensors = exported.doc, exported.tensors
    else:
        doc, tensors = encode_module(exported.module(check_guards=False))
    return doc, {GRAPH_PREFIX + k: v for k, v in tensors.items()}


def fingerprint(program: dict[str, Any], tensors: dict[str, Any]) -> str:
    """SHA-256 of the graph and of the dtype and shape of every tensor it reads (not their values)."""
    shapes = {k: [str(t.dtype), list(t.shape)] for k, t in tensors.items() if k.startswith(GRAPH_PREFIX)}
    return tensorfile.sha256(dumps_canonical({"program": program, "tensors": shapes}))


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with its `digest`: the SHA-256 of its canonical JSON without that field."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return {**body, "digest": tensorfile.sha256(dumps_canonical(body))}


def save_plan(plan: ExecutablePlan, path: str | Path, report: dict[str, Any] | None = None,
              extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the plan directory; the path holds the previous plan until the new one is complete."""
    path = Path(path)
    if path.exists() and not path.is_symlink() and (
            not path.is_dir() or any(p.name not in FILES + OLD_FILES for p in path.iterdir())):
        raise PlanFormatError(f"{path} exists and is not a plan directory; choose a new path")
    program, tensors = _program(plan.exported)
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    for name, state in plan.states():
        held = dict(zip(("weight", "levels"), state.stored_chip()))  # as stored where regenerated
        for buf in ("weight", *state.STATE):
            tensors[f"{name}.{buf}"] = held.get(buf, getattr(state, buf)).detach().cpu().contiguous()
    data, tensor_info = tensorfile.encode(tensors)
    program_bytes = json.dumps(program, indent=1).encode("utf-8")
    doc = plan.to_json()
    if report is not None:
        doc["report"] = report
    doc["integrity"] = {
        "files": {PROGRAM: tensorfile.sha256(program_bytes), TENSORS: tensorfile.sha256(data)},
        "tensors": tensor_info,
        "program": fingerprint(program, tensors),
    }
    plan_bytes = json.dumps(seal(doc), indent=1).encode("utf-8")
    with directory_writer(path, "plan directory", replaceable=lambda p: True) as tmp:
        (tmp / PROGRAM).write_bytes(program_bytes)
        (tmp / TENSORS).write_bytes(data)
        (tmp / PLAN).write_bytes(plan_bytes)
    return path


@dataclass
class LoadedPlan:
    """A plan directory's contents, every part checked: what `nvcc_pt.load` builds a `CompiledModel` from."""

    target: Any
    fidelity: str
    seed: int
    capture: CaptureInfo
    records: dict[str, dict[str, Any]]
    results: dict[str, Any]
    program: SavedProgram
    states: dict[str, torch.Tensor]
    """Programmed state tensors by `<op>.<buffer>`."""
    soft_prompt: torch.Tensor | None


def _read(path: Path, name: str, limit: int | None = None) -> bytes:
    f = path / name
    if f.is_symlink() or not f.is_file():
        what = "a symbolic link" if f.is_symlink() else "missing" if not f.exists() else "not a regular file"
        raise PlanFormatError(f"plan directory {path} lacks {[name]}: {f} is {what}; it is incomplete or was "
                              "tampered with, save the plan again")
    size = f.stat().st_size
    if limit is not None and size > limit:
        raise PlanFormatError(f"{f} is {size} bytes, more than any plan file nvcc_pt writes ({limit}); refusing to read it")
    try:
        with open(f, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise PlanFormatError(f"{f} cannot be read ({e.strerror or e}); check the file's permissions") from e


def _check_digest(path: Path, name: str, data: bytes, want: Any) -> None:
    if tensorfile.sha256(data) != want:
        raise PlanFormatError(f"{path / name} does not match the SHA-256 digest that plan.json records for it: the "
                              "file is corrupted, truncated, or comes from another save. Save the plan again")


def _field(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise PlanFormatError(f"{where} lacks the field {key!r}; the file is corrupted, save the plan again")
    return doc[key]


def read_plan_doc(path: Path) -> dict[str, Any]:
    """plan.json of a directory, parsed, of this schema and matching its own digest."""
    where = str(path / PLAN)
    doc = loads_strict(_read(path, PLAN, MAX_JSON_BYTES), where)
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == 1:
        raise PlanFormatError(f"{where} is a plan of schema version 1, which kept the program in program.pt2, a "
                              "format that runs code when loaded; this nvcc_pt reads schema version "
                              f"{PLAN_SCHEMA} and never opens it. Compile the model again with this version and "
                              "save it (cm.save(path))")
    if schema == 2:
        raise PlanFormatError(f"{where} is a plan of schema version 2, whose programmed state was drawn from torch "
                              "generators; this nvcc_pt draws every chip from a keyed Philox generator (schema version "
                              f"{PLAN_SCHEMA}), so its seed would name a different chip than the one saved. Compile the "
                              "model again with this version (the same seed gives the new chip) and save it (cm.save(path))")
    if schema != PLAN_SCHEMA:
        raise PlanFormatError(f"{where} has schema version {schema!r}; this nvcc_pt reads version {PLAN_SCHEMA}. "
                              "Recompile the model with this version")
    if doc.get("digest") != seal(doc)["digest"]:
        raise PlanFormatError(f"{where} does not match its own SHA-256 digest: the file is corrupted or was edited. "
                              "Save the plan again")
    return doc


def read_plan(path: str | Path) -> LoadedPlan:
    """Read and check a plan directory; every problem is a `PlanFormatError` naming the file."""
    from nvcc_pt.plan_check import check_records, expected_tensors, from_json, records_from_json, results_from_json
    from nvcc_pt.targets.spec import TargetSpec

    path = Path(path)
    recover_directory(path)
    if not path.is_dir():
        raise PlanFormatError(f"plan directory {path} does not exist; save one with cm.save({str(path)!r})")
    doc = read_plan_doc(path)
    where = str(path / PLAN)
    integrity = _field(doc, "integrity", where)
    files = integrity.get("files") if isinstance(integrity, dict) else None
    infos = integrity.get("tensors") if isinstance(integrity, dict) else None
    if not (isinstance(files, dict) and set(files) == {PROGRAM, TENSORS} and isinstance(infos, dict)):
        raise PlanFormatError(f"{where} integrity must give the digests of {[PROGRAM, TENSORS]} and of every tensor")
    program_bytes = _read(path, PROGRAM, MAX_JSON_BYTES)
    _check_digest(path, PROGRAM, program_bytes, files[PROGRAM])
    data = bytearray(_read(path, TENSORS))
    _check_digest(path, TENSORS, data, files[TENSORS])
    tensors = _tensors(data, infos, str(path / TENSORS))
    program_doc = loads_strict(program_bytes, str(path / PROGRAM))
    if fingerprint(program_doc, tensors) != integrity.get("program"):
        raise PlanFormatError(f"{path / PROGRAM} and {TENSORS} do not form the program plan.json was saved with "
                              "(graph fingerprint differs); the directory mixes files of different saves")

    target = from_json(_field(doc, "target", where), TargetSpec, f"{where} target")
    capture = _capture(_field(doc, "capture", where), f"{where} capture")
    fidelity = _field(doc, "fidelity", where)
    seed = _field(doc, "seed", where)
    if fidelity not in FIDELITIES or type(seed) is not int or not 0 <= seed < 2 ** 63:
        raise PlanFormatError(f"{where}: fidelity {str(fidelity)[:40]!r} / seed {str(seed)[:40]!r} is not one of "
                              f"{FIDELITIES} / an integer in [0, 2**63)")
    results = results_from_json(doc.get("results", {}), where)
    if not isinstance(doc.get("report", {}), dict):
        raise PlanFormatError(f"{where}: report must be an object; save the plan again")
    records = records_from_json(_field(doc, "records", where), where)

    graph = {k.removeprefix(GRAPH_PREFIX): t for k, t in tensors.items() if k.startswith(GRAPH_PREFIX)}
    program = SavedProgram(program_doc, graph, capture.inputs)
    gm = build_module(program_doc, graph, str(path / PROGRAM))
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(capture.inputs):
        raise PlanFormatError(f"{where}: the captured inputs {[i.name for i in capture.inputs]} do not match the "
                              f"program's inputs {placeholders}; the directory mixes files of different saves")
    propagate_shapes(gm, capture.inputs)
    program.fresh = gm
    if results.get("map_dynamic"):  # the records of mapped attention name the nodes its decomposition makes
        from nvcc_pt.passes.decompose_attention import decompose_attention
        from nvcc_pt.passmanager import MappingPolicy, PassContext, run_passes

        gm = run_passes(gm, PassContext(target=target, policy=MappingPolicy(map_dynamic=True)), [decompose_attention])
    check_records(records, gm, target, where)
    calibrated = {k.removesuffix(".adc_range"): "op" if t.dim() == 1 else "column"
                  for k, t in tensors.items() if k.endswith(".adc_range") and t.numel()}
    expected = expected_tensors(records, gm, fidelity, calibrated)
    prompt_spec = next((i for i in capture.inputs if i.name == "soft_prompt"), None)
    if prompt_spec is not None:
        # the plan's default prompt, `[n_virtual, hidden]`: the graph input also takes one per row
        expected[SOFT_PROMPT] = (DTYPES[prompt_spec.dtype], prompt_spec.shape[-2:])
    used = {a["tensor"] for a in program_doc["attributes"]}
    extra = sorted(k for k in tensors if k not in expected and k.removeprefix(GRAPH_PREFIX) not in used)
    missing = sorted(k for k in expected if k not in tensors)
    if extra or missing:
        why = "the programmed weights are missing" if missing else "no part of the plan uses them"
        raise PlanFormatError(f"{path / TENSORS} lacks {missing[:5]} / holds unexpected {extra[:5]}: {why}; save the "
                              "plan again")
    for key, (dtype, shape) in expected.items():
        t = tensors[key]
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise PlanFormatError(f"{path / TENSORS}: {key} has dtype {t.dtype} and shape {tuple(t.shape)}; the records "
                                  f"imply {dtype} and {tuple(shape)}. The plan is corrupted, save it again")
    states = {k: t for k, t in tensors.items() if k in expected and k != SOFT_PROMPT}
    return LoadedPlan(target, fidelity, seed, capture, records, results, program, states, tensors.get(SOFT_PROMPT))


def _tensors(data: bytearray, infos: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The tensors of the file, each matching the dtype, shape and digest plan.json records for it."""
    decoded = tensorfile.decode(data, where)
    if set(decoded) != set(infos):
        raise PlanFormatError(f"{where} holds tensors {sorted(set(decoded) - set(infos))[:5]} that plan.json does not "
                              f"record, and lacks {sorted(set(infos) - set(decoded))[:5]}; save the plan again")
    for name, (t, raw) in decoded.items():
        info = infos[name]
        if not (isinstance(info, dict) and info.get("dtype") == tensorfile.dtype_name(t.dtype)
                and info.get("shape") == list(t.shape) and info.get("sha256") == tensorfile.sha256(raw)):
            raise PlanFormatError(f"{where}: tensor {name!r} does not match the dtype, shape and SHA-256 digest "
                                  "plan.json records for it; the file is corrupted, save the plan again")
    return {name: t for name, (t, _) in decoded.items()}


def _capture(d: Any, where: str) -> CaptureInfo:
    from nvcc_pt.plan_check import from_json

    info = from_json(d, CaptureInfo, where)
    inputs = info.inputs
    bad = [i for i in inputs if i.dtype not in DTYPES or any(s is not None and s < 0 for s in i.shape)]
    if info.kind not in ("causal-lm", "soft-prompt-lm", "module") or bad or info.num_virtual_tokens < 0 \
            or info.vocab_size < 0:
        raise PlanFormatError(f"{where} is malformed (kind {info.kind!r}, inputs {bad[:2]}); save the plan again")
    return info
