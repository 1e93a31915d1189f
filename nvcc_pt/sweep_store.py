"""Where a sweep's results live: a directory of Parquet parts, one per finished point, and `_sweep.json`.

Each part (`point-<id>-<chips digest>.parquet`) holds one row per programmed chip of one point and is
written whole or not at all (`nvcc_pt.files.write_with`: a temporary sibling renamed into place), so a
sweep killed at any moment leaves only complete parts, and the next run computes only the (point, chip)
pairs that no part holds. `_sweep.json` and every part's Parquet metadata carry the sweep's identity
(model, metric, compile options): results of another sweep at the same path are refused, never mixed or
overwritten. pandas and pyarrow skip names starting with `_` or `.`, so `pandas.read_parquet(path)` reads
the directory as one table.

Example:
    >>> store = SweepStore("sweep.parquet", identity)
    >>> store.done()            # {point_id: {chip, ...}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nvcc_pt.errors import SweepError
from nvcc_pt.files import check_target, write_text, write_with
from nvcc_pt.sweep_grid import config_types

SWEEP_SCHEMA = 1
META_FILE = "_sweep.json"
META_KEY = b"nvcc_pt.sweep"
_TYPES = {"int": "int64", "float": "float64", "str": "string", "bool": "bool_"}


def _arrow():
    try:
        import pandas  # noqa: F401  (the tables sweeps return)
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise SweepError(f"sweeps keep their rows with pandas and pyarrow, and {e.name} is not installed: "
                         "pip install 'nvcc-pt[sweep]'") from e
    return pa, pq


class SweepStore:
    """The output directory of one sweep identity; created on the first write, checked on open."""

    def __init__(self, path: str | Path, identity: dict[str, Any]):
        _arrow()  # before anything runs: a sweep that could not keep its rows would be lost
        self.path = Path(path)
        self.identity = {"schema": SWEEP_SCHEMA, **identity}
        self._text = json.dumps(self.identity, sort_keys=True)
        self._check()

    def _check(self) -> None:
        path = self.path
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise SweepError(f"the sweep output {path} is a file, not a sweep directory; sweeps write a directory of "
                             "Parquet parts. Choose another --out path (the file was left as it is)")
        if not path.exists():
            return
        meta = path / META_FILE
        if not meta.is_file():
            if any(p for p in path.iterdir() if not p.name.startswith(".")):
                raise SweepError(f"{path} holds files but no {META_FILE}: it is not a sweep's output. Choose another "
                                 "output path (nothing in it was changed)")
            return
        try:
            stored = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SweepError(f"{meta} does not parse ({e}); the directory is not a sweep's output. Choose another "
                             "output path (nothing in it was changed)") from e
        if stored != self.identity:
            raise SweepError(f"{path} holds the results of another sweep: {_difference(stored, self.identity)}. "
                             "A sweep's output belongs to one model, metric and set of compile options; write to "
                             "another path, or delete this one to start over (nothing in it was changed)")

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("point-*.parquet")) if self.path.is_dir() else []

    def done(self) -> dict[str, set[int]]:
        """{point_id: chips} of every finished row; a part of another sweep raises `SweepError`."""
        _, pq = _arrow()
        out: dict[str, set[int]] = {}
        for part in self.parts():
            try:
                meta = pq.read_schema(part).metadata or {}
                table = pq.read_table(part, columns=["point_id", "chip"])
            except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
                raise SweepError(f"{part} is not a readable Parquet part ({type(e).__name__}: {e}); delete it to "
                                 "recompute that point") from e
            if meta.get(META_KEY, b"").decode() != self._text:
                raise SweepError(f"{part} was written by another sweep (its identity differs from {self.path / META_FILE}); "
                                 "move it out of the directory")
            for point_id, chip in zip(table.column("point_id").to_pylist(), table.column("chip").to_pylist()):
                out.setdefault(point_id, set()).add(int(chip))
        return out

    def write(self, point_id: str, rows: list[dict[str, Any]]) -> Path:
        """One point's rows as a new part, swapped in atomically."""
        pa, pq = _arrow()
        if not self.path.is_dir() or not (self.path / META_FILE).is_file():
            check_target(self.path, "sweep directory")
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.path / META_FILE, json.dumps(self.identity, indent=1, sort_keys=True), "sweep identity")
        table = pa.Table.from_pylist(rows, schema=_schema(rows, pa)).replace_schema_metadata({META_KEY: self._text})
        chips = ",".join(str(r["chip"]) for r in rows)
        name = f"point-{point_id}-{hashlib.sha256(chips.encode()).hexdigest()[:8]}.parquet"
        return write_with(self.path / name, lambda tmp: pq.write_table(table, tmp), "sweep part")

    def table(self):
        """Every row of every part as one pandas DataFrame, ordered by point id and chip."""
        import pandas as pd

        _, pq = _arrow()
        frames = [pq.read_table(p).to_pandas() for p in self.parts()]
        if not frames:
            return pd.DataFrame()
        frames = [f for f in frames if not f.empty]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return df.sort_values(["point_id", "chip"], kind="stable").reset_index(drop=True) if len(df) else df


def _schema(rows: list[dict[str, Any]], pa):
    """A fixed type per column: config columns from `config_types()`, the rest by kind."""
    types = config_types()
    fields = []
    for name in rows[0]:
        if name in types:
            kind = types[name]
        elif name in ("chip",):
            kind = "int"
        elif name in ("error", "worker"):
            kind = "str"
        else:
            kind = "float"  # metrics, costs and timings
        fields.append(pa.field(name, getattr(pa, _TYPES[kind])()))
    return pa.schema(fields)


def _difference(stored: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(stored, dict):
        return "its identity record is not a JSON object"
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    return "; ".join(f"{k} is {json.dumps(stored.get(k))[:120]} there but {json.dumps(wanted.get(k))[:120]} here"
                     for k in keys)
