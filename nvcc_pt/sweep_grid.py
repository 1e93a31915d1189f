"""The points of a design-space sweep: a grid over `TargetSpec` fields, fidelity, mapping policy and precision.

A grid is a dict from a field to its values (a list; a single value is a list of one), expanded as the
cartesian product in the order the keys are given, or a list of dicts, one per point. Keys are any
`TargetSpec` field (`adc_bits`, `rows`, ...), any device field `spec.replace` takes directly (`sigma`,
`read_sigma`, ...), and `target` (the preset a point starts from), `fidelity`, `policy` and `precision`.
Every point is validated when the grid is expanded, before anything is computed.

Example:
    >>> points = expand_grid({"adc_bits": [4, 8], "sigma": [0.0, 0.1]}, target="reram-128x128")
    >>> len(points), points[0].spec.adc_bits
    (4, 4)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from nvcc_pt.errors import NvccPtError, SweepError
from nvcc_pt.passmanager import MappingPolicy
from nvcc_pt.targets import DeviceModel, TargetSpec, get_target
from nvcc_pt.targets.costs import ComponentCosts

OTHER_KEYS = ("target", "fidelity", "policy", "precision")
"""Grid keys that are not `TargetSpec` fields."""
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(TargetSpec) if f.name != "name")
DEVICE_KEYS = tuple(f.name for f in dataclasses.fields(DeviceModel) if f.name != "name")
GRID_KEYS = OTHER_KEYS + SPEC_KEYS + DEVICE_KEYS
MAX_POINTS = 100_000
"""More grid points than this is a typing error (each is a compile)."""
_TEXT = ("description", "source")  # the preset's prose: named by `target`, not repeated on every row


@dataclass(frozen=True)
class Point:
    """One design: a target variant, a fidelity, a mapping policy and per-layer precision overrides."""

    spec: TargetSpec
    """The target variant, validated."""
    fidelity: str = "noisy"
    """Simulator fidelity (`nvcc_pt.FIDELITIES`)."""
    policy: MappingPolicy = field(default_factory=MappingPolicy)
    """Which products go on crossbars."""
    precision: dict[str, dict[str, int]] = field(default_factory=dict)
    """Module-name glob -> bit overrides, as `nvcc_pt.compile` takes them."""
    reference: bool = False
    """The float model (fidelity `exact`), against which `cheapest` measures a design's loss."""

    def config(self) -> dict[str, Any]:
        """Everything that decides the point's numbers, as JSON-ready data."""
        return {"target": self.spec.to_dict(), "fidelity": self.fidelity, "policy": dataclasses.asdict(self.policy),
                "precision": self.precision, "reference": self.reference}

    @property
    def point_id(self) -> str:
        """A digest of `config()`: the same design has the same id however the grid spelled it."""
        text = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def columns(self) -> dict[str, Any]:
        """The point's configuration as flat table columns (`config_types()` gives their types)."""
        d = self.spec.to_dict()
        device = d.pop("device")
        cols: dict[str, Any] = {"point_id": self.point_id, "reference": self.reference, "target": d.pop("name"),
                                "device": device.pop("name")}
        for key, value in {**device, **d}.items():
            if key not in _TEXT:
                cols[key] = value if value is None or isinstance(value, (bool, int, float, str)) else _json(value)
        cols["fidelity"] = self.fidelity
        cols["policy"] = _json(dataclasses.asdict(self.policy))
        cols["precision"] = _json(self.precision)
        return cols

    def label(self, keys: tuple[str, ...]) -> str:
        """A short description naming only `keys` (the fields the grid varies)."""
        cols = self.columns()
        return ", ".join(f"{k}={cols.get(k, '')}" for k in keys) or self.spec.name


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def config_types() -> dict[str, str]:
    """Column name -> "int", "float", "str" or "bool" for every column `Point.columns` writes.

    Fixed per column, so every part file of a sweep has the same schema (a None stays a null of that type).
    """
    out = {"point_id": "str", "reference": "bool", "target": "str", "device": "str"}
    for f in (*dataclasses.fields(DeviceModel), *dataclasses.fields(TargetSpec)):
        if f.name in ("name", "device", *_TEXT):
            continue
        kind = str(f.type).split(" ")[0]
        out[f.name] = kind if kind in ("int", "float", "str", "bool") else "str"
    out.update(fidelity="str", policy="str", precision="str")
    return out


def _coerce(key: str, value: Any) -> Any:
    """A grid value as `TargetSpec.replace` takes it: TOML gives lists and tables where the spec holds tuples."""
    if key == "level_scale" and isinstance(value, list):
        return tuple(value)
    if key == "extra" and isinstance(value, dict):
        return tuple(sorted(value.items()))
    if key == "costs" and isinstance(value, dict):
        return ComponentCosts.from_dict(value)
    if key == "device" and isinstance(value, dict):
        try:
            return DeviceModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        except TypeError as e:
            raise SweepError(f"grid value device={value!r} is not a device model ({e}); its fields are "
                             f"{['name', *DEVICE_KEYS]}") from e
    return value


def check_keys(keys: Any, where: str = "grid") -> None:
    """Refuse a key that is neither a `TargetSpec` or device field nor one of `OTHER_KEYS`."""
    for key in keys:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(str(key), GRID_KEYS, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise SweepError(f"{where} field {key!r} is not a TargetSpec field, a device field, nor one of "
                             f"{list(OTHER_KEYS)}{hint} TargetSpec fields: {list(SPEC_KEYS)}; device fields: "
                             f"{list(DEVICE_KEYS)}")


def make_point(values: dict[str, Any], *, target: str | TargetSpec = "reram-128x128", fidelity: str = "noisy",
               policy: MappingPolicy | dict | str | None = None, precision: dict | None = None) -> Point:
    """One validated point: `values` (grid keys) over the defaults given; a bad value raises `SweepError`."""
    check_keys(values)
    where = "grid point " + ", ".join(f"{k}={v!r}" for k, v in values.items())
    changes = {k: _coerce(k, v) for k, v in values.items() if k not in OTHER_KEYS}
    try:
        spec = get_target(values.get("target", target)).replace(**changes)
        fid = values.get("fidelity", fidelity)
        from nvcc_pt import validate as check

        check.fidelity(fid, where=where)
        pol = MappingPolicy.coerce(values.get("policy", policy))
        prec = values.get("precision", precision) or {}
        check.compile_options(seed_value=0, fidelity_value=fid, precision=prec, soft_prompt=None,
                              constant_prompt=False, duplicate=False, tokens=1)
    except SweepError:
        raise
    except NvccPtError as e:
        raise SweepError(f"{where}: {e}. Nothing was computed; correct the grid") from e
    except TypeError as e:  # a value of a type the field cannot hold at all
        raise SweepError(f"{where}: {e}. Nothing was computed; correct the grid") from e
    return Point(spec, fid, pol, {k: dict(v) for k, v in prec.items()})


def expand_grid(grid: dict[str, Any] | list[dict[str, Any]], **defaults: Any) -> list[Point]:
    """Every point of `grid` (a dict of value lists, or a list of point dicts), validated, duplicates dropped.

    `defaults` are `make_point`'s keywords: the target, fidelity, policy and precision of points that do
    not set them.
    """
    if isinstance(grid, dict):
        check_keys(grid)
        lists = {k: v if isinstance(v, (list, tuple)) and k != "level_scale" or
                 (k == "level_scale" and v and isinstance(v[0], (list, tuple))) else [v] for k, v in grid.items()}
        for key, values in lists.items():
            if not values:
                raise SweepError(f"grid field {key!r} has no values; give at least one or drop the field")
        count = 1
        for values in lists.values():
            count *= len(values)
        if count > MAX_POINTS:
            raise SweepError(f"the grid has {count} points, more than {MAX_POINTS}; sweep a coarser grid")
        combos = [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]
    elif isinstance(grid, list) and all(isinstance(p, dict) for p in grid):
        combos = grid
    else:
        raise SweepError(f"grid must be a dict of field -> values or a list of point dicts, got {type(grid).__name__}")
    if not combos:
        raise SweepError("the grid has no points; give at least one value per field")
    points: dict[str, Point] = {}
    for values in combos:
        p = make_point(values, **defaults)
        points.setdefault(p.point_id, p)
    return list(points.values())


def varied_keys(grid: dict[str, Any] | list[dict[str, Any]]) -> tuple[str, ...]:
    """The grid's keys that take more than one value: the columns that tell its points apart."""
    if isinstance(grid, dict):
        return tuple(k for k, v in grid.items() if isinstance(v, (list, tuple)) and len(v) > 1)
    seen: dict[str, set] = {}
    for p in grid:
        for k, v in p.items():
            seen.setdefault(k, set()).add(_json(v))
    return tuple(k for k, v in seen.items() if len(v) > 1 or any(k not in p for p in grid))
