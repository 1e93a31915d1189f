"""ExecutablePlan: what lowering emits and the targets consume, and its on-disk format.

A plan directory holds
  plan.json            schema version, target, fidelity, seed, capture info, per-op records
  tensors.safetensors  the programmed state of every mapped op (effective weights, scales, levels)
  program.pt2          the captured program in torch.export's own format
Loading re-applies the recorded lowering to the captured program and restores the
programmed tensors; nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx

from nvcc_pt import meta
from nvcc_pt.capture import CaptureInfo
from nvcc_pt.errors import PlanFormatError
from nvcc_pt.ops import CimState

PLAN_SCHEMA = 1
FILES = ("plan.json", "tensors.safetensors", "program.pt2")


@dataclass
class ExecutablePlan:
    """The lowered graph plus everything needed to re-create it."""

    graph_module: fx.GraphModule
    exported: torch.export.ExportedProgram
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


def save_plan(plan: ExecutablePlan, path: str | Path, report: dict[str, Any] | None = None,
              extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the plan directory atomically: on failure nothing is left at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(p.name not in FILES for p in path.iterdir())):
        raise PlanFormatError(f"{path} exists and is not a plan directory; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".plan-", dir=path.parent))
    try:
        doc = plan.to_json()
        if report is not None:
            doc["report"] = report
        (tmp / "plan.json").write_text(json.dumps(doc, indent=1))
        tensors = dict(extra_tensors or {})
        for name, state in plan.states():
            for buf, value in state.named_buffers(remove_duplicate=False):
                if buf in state.STATE or buf == "weight":
                    tensors[f"{name}.{buf}"] = value.detach().cpu().contiguous().clone()
        save_file(tensors, str(tmp / "tensors.safetensors"))
        torch.export.save(plan.exported, str(tmp / "program.pt2"))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_plan_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.export.ExportedProgram]:
    """(plan.json, programmed tensors, captured program) of a plan directory, checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise PlanFormatError(f"plan directory {path} does not exist; save one with cm.save({str(path)!r})")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PlanFormatError(f"plan directory {path} lacks {missing}; it is incomplete, save the plan again")
    try:
        doc = json.loads((path / "plan.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanFormatError(f"{path / 'plan.json'} is not valid JSON ({e}); the file is corrupted, save the plan again") from e
    if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise PlanFormatError(f"{path / 'plan.json'} has schema version {found!r}; this nvcc_pt reads version "
                              f"{PLAN_SCHEMA}. Recompile the model with this version")
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise PlanFormatError(f"{path / 'tensors.safetensors'} cannot be read ({e}); the file is corrupted") from e
    try:
        exported = torch.export.load(str(path / "program.pt2"))
    except Exception as e:  # torch's loader raises several types for a damaged archive
        raise PlanFormatError(f"{path / 'program.pt2'} cannot be loaded ({type(e).__name__}: {e}); "
                              "the file is corrupted or from another torch version, save the plan again") from e
    return doc, tensors, exported


def decode_records(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    try:
        return {name: {k: meta.record_from_dict(k, r) for k, r in recs.items()} for name, recs in doc["records"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise PlanFormatError(f"plan.json records are malformed ({type(e).__name__}: {e}); save the plan again") from e
