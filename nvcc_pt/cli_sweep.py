"""`nvcc-pt sweep sweep.toml`: run a design-space sweep described in a TOML file (docs/sweeps.md).

    model = "builtin:tiny-llama"        # or a local model directory, as `nvcc-pt compile --model` takes it
    target = "reram-128x128"
    chips = 8
    out = "adc-sweep.parquet"           # relative paths are taken from the TOML file's folder

    [grid]
    adc_bits = [4, 6, 8]
    sigma = [0.0, 0.05, 0.1]

    [metric]
    name = "perplexity"                 # or "relative_error"
    tokens = 32

    [report]
    dir = "adc-sweep-report"
    within = 0.05                       # cheapest design within 5 % of the float model
    relative = true
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nvcc_pt import validate as check
from nvcc_pt.errors import SweepError

TOP_KEYS = {"model": str, "model_seed": int, "target": str, "fidelity": str, "policy": (str, dict),
            "precision": dict, "chips": (int, list), "out": str, "scheduler": str, "workers": int, "device": str,
            "draw_on": str, "reference": bool, "calibrate": bool, "timeout_s": (int, float), "tokens": int, "grid": (dict, list),
            "metric": (str, dict), "report": dict}
REPORT_KEYS = {"dir": str, "within": (int, float), "relative": bool, "k": (int, float)}


def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise SweepError("reading a sweep file needs Python 3.11+ (tomllib) or pip install tomli") from e
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise SweepError(f"cannot read the sweep file {path}: {e.strerror or e}; check the path") from e
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path} is not valid TOML: {e}") from e


def _check_types(table: dict[str, Any], known: dict[str, Any], where: str) -> None:
    for key, value in table.items():
        if key not in known:
            raise SweepError(f"{where}: unknown key {key!r}; keys are {sorted(known)}")
        kinds = known[key] if isinstance(known[key], tuple) else (known[key],)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise SweepError(f"{where}: {key} = {value!r} must be {' or '.join(k.__name__ for k in kinds)}")


def load_config(path: str | Path) -> dict[str, Any]:
    """The keyword arguments of `nvcc_pt.sweep` (and `report`) a sweep TOML file describes, checked.

    Example:
        >>> config = load_config("sweep.toml"); config["grid"]
    """
    path = Path(path)
    data = _toml(path)
    _check_types(data, TOP_KEYS, str(path))
    for key in ("model", "grid", "metric"):
        if key not in data:
            raise SweepError(f"{path}: the key {key!r} is required (see docs/sweeps.md)")
    report = data.pop("report", {})
    _check_types(report, REPORT_KEYS, f"{path} [report]")
    here = path.resolve().parent
    model = data["model"]
    if not model.startswith("builtin:") and not Path(model).is_absolute():
        data["model"] = str(here / model)
    data["out"] = str(here / data.get("out", path.stem + ".parquet"))
    if "dir" in report:
        report["dir"] = str(here / report["dir"])
    if "tokens" in data:
        data["compile_options"] = {"tokens": data.pop("tokens")}
    return {"sweep": data, "report": report}


def run_file(path: str | Path, *, scheduler: str | None = None, workers: int | None = None, out: str | None = None,
             report_dir: str | None = None, device: str | None = None, progress: bool = True):
    """Run the sweep a TOML file describes, options from the command line taking precedence; returns
    `(SweepResult, report files or None)`."""
    from nvcc_pt.sweeps import sweep

    config = load_config(path)
    kwargs, report = config["sweep"], config["report"]
    for key, value in (("scheduler", scheduler), ("workers", workers), ("out", out), ("device", device)):
        if value is not None:
            kwargs[key] = value
    if report_dir is not None:
        report["dir"] = report_dir
    result = sweep(kwargs.pop("model"), kwargs.pop("grid"), kwargs.pop("metric"), progress=progress, **kwargs)
    files = None
    if "dir" in report:
        files = result.report(report["dir"], within=report.get("within"), relative=report.get("relative", False),
                              k=report.get("k", 1.0))
    return result, report, files


def _sweep(args) -> int:
    from nvcc_pt.sweep_report import front_lines

    result, report, files = run_file(args.config, scheduler=args.scheduler, workers=args.workers, out=args.out,
                                     report_dir=args.report, device=args.device, progress=not args.no_progress)
    points = result.table["point_id"].nunique()
    print(f"sweep: {points} points, {len(result.table)} rows in {result.path} "
          f"({result.computed} computed now, {result.reused} reused)")
    for line in front_lines(result, within=report.get("within"), relative=report.get("relative", False),
                            k=report.get("k", 1.0)):
        print(line)
    for kind, file in (files or {}).items():
        print(f"{kind} written to {file}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a design-space sweep described in a TOML file (docs/sweeps.md)")
    p.add_argument("config", help="the sweep's TOML file")
    p.add_argument("--scheduler", help="'serial', 'local' (default when dask is installed) or an address tcp://host:port")
    p.add_argument("--workers", type=check.arg_positive, help="workers of the local cluster (default: one per GPU, "
                   "else one per core)")
    p.add_argument("--out", help="output directory of Parquet parts (overrides the file's 'out')")
    p.add_argument("--report", help="write the sweep report (plot, Markdown, HTML) into this directory")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where each point runs on its worker")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_sweep)
