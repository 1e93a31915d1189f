"""Rewrite a plan directory's digests after editing it, as anyone who can write the files can.

Tests use it to get past the integrity checks and reach the checks behind them (schema, records against
graph against tensors), which must hold even for a plan whose digests are consistent.
"""

import json
from pathlib import Path

from nvcc_pt import tensorfile
from nvcc_pt.plan import PROGRAM, TENSORS, fingerprint, seal


def reseal(path: Path, doc: dict | None = None) -> None:
    """Recompute every digest of the plan at `path` (with `doc` as its plan.json when given)."""
    path = Path(path)
    doc = json.loads((path / "plan.json").read_text()) if doc is None else doc
    program_bytes, data = (path / PROGRAM).read_bytes(), (path / TENSORS).read_bytes()
    decoded = tensorfile.decode(bytearray(data), "forge")
    tensors = {k: t for k, (t, _) in decoded.items()}
    doc["integrity"] = {
        "files": {PROGRAM: tensorfile.sha256(program_bytes), TENSORS: tensorfile.sha256(data)},
        "tensors": {k: {"dtype": tensorfile.dtype_name(t.dtype), "shape": list(t.shape),
                        "sha256": tensorfile.sha256(raw)} for k, (t, raw) in decoded.items()},
        "program": fingerprint(json.loads(program_bytes), tensors),
    }
    (path / "plan.json").write_text(json.dumps(seal(doc), indent=1))
