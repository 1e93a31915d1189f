"""`nvcc_pt.sweep`: a design-space grid times programmed chips, on Dask distributed or serially, into Parquet.

Each point (a target variant, fidelity, policy, precision) is compiled once on a worker; its chips
(`cm.program(seed)`) are evaluated there and the rows come back to this process, which writes them as
one Parquet part the moment they arrive (`nvcc_pt.sweep_store`). Rerunning the same sweep reads the
finished parts and computes only what is missing; growing the grid or the chips reuses every finished
(point, chip). See docs/sweeps.md.

Example:
    >>> res = nvcc_pt.sweep("builtin:tiny-llama", {"adc_bits": [4, 6, 8], "sigma": [0.0, 0.1]},
    ...                     "perplexity", chips=8, out="adc.parquet")
    >>> res.pareto(); res.cheapest(within=0.05, relative=True); res.report("adc-report")
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.errors import SchedulerError, SweepError
from nvcc_pt.pareto import DEFAULT_COSTS, cheapest, pareto_front, summarize
from nvcc_pt.sweep_engine import PointTask, connect, dask_available, local_cluster, run_point
from nvcc_pt.sweep_grid import Point, expand_grid, make_point, varied_keys
from nvcc_pt.sweep_metrics import BuiltinMetric, resolve_metric
from nvcc_pt.sweep_store import META_FILE, SweepStore

MAX_CHIPS = 10**6
"""More programmed chips per point than this is a typing error."""


@dataclass
class SweepResult:
    """A sweep's rows and what it did; search and report methods work on the per-point summary."""

    table: Any
    """pandas DataFrame, one row per (point, chip): the configuration, `chip`, `metric.<name>`, costs, `error`."""
    path: Path
    """The output directory (Parquet parts and `_sweep.json`)."""
    higher_is_better: dict[str, bool]
    """Each metric's direction."""
    computed: int = 0
    """Rows computed by this run."""
    reused: int = 0
    """Rows read back from finished parts."""
    varied: tuple[str, ...] = field(default_factory=tuple)
    """The configuration columns the grid varies (for labels)."""

    @property
    def metric(self) -> str:
        """The first metric (the task metric unless another is named)."""
        return next(iter(self.higher_is_better))

    def summary(self, k: float = 1.0):
        """One row per point: configuration, `<metric>.mean/.std/.kpp` over chips, and costs per token."""
        return summarize(self.table, self.higher_is_better, k)

    def pareto(self, metric: str | None = None, *, stat: str = "kpp", costs: tuple[str, ...] = DEFAULT_COSTS,
               k: float = 1.0):
        """The Pareto front of the metric against energy, latency and area per token (`pareto.pareto_front`)."""
        metric = metric or self.metric
        return pareto_front(self.summary(k), metric, higher_is_better=self.higher_is_better.get(metric, True),
                            stat=stat, costs=costs)

    def cheapest(self, within: float, metric: str | None = None, *, relative: bool = False, stat: str = "kpp",
                 cost: str = "energy_pj", k: float = 1.0, reference: float | None = None):
        """The cheapest design whose KPP stays within `within` of the float model (`pareto.cheapest`)."""
        metric = metric or self.metric
        return cheapest(self.summary(k), metric, within, higher_is_better=self.higher_is_better.get(metric, True),
                        relative=relative, stat=stat, cost=cost, reference=reference)

    def report(self, directory: str | Path, *, metric: str | None = None, within: float | None = None,
               relative: bool = False, k: float = 1.0) -> dict[str, Path]:
        """Write the sweep report (plot, Markdown, HTML) into `directory`; returns the files by kind."""
        from nvcc_pt.sweep_report import write_report

        return write_report(self, directory, metric=metric or self.metric, within=within, relative=relative, k=k)


def _model_identity(model: Any, seed: int) -> dict[str, Any]:
    if isinstance(model, str):
        check.text("model", model, where="sweep", error=SweepError)
        return {"spec": model, "seed": seed}
    if not isinstance(model, nn.Module):
        raise SweepError(f"sweep: model must be an nn.Module, 'builtin:NAME' or a model directory, got "
                         f"{type(model).__name__}")
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "weights_sha256": digest.hexdigest()}


def _options_identity(options: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            data = v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            return {"tensor": list(v.shape), "sha256": hashlib.sha256(data).hexdigest()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

    return plain(options)


def _chip_list(chips: Any) -> list[int]:
    if isinstance(chips, bool) or not isinstance(chips, (int, list, tuple, range)):
        raise SweepError(f"sweep: chips={chips!r} must be a count or a list of programming seeds")
    if isinstance(chips, int):
        return list(range(check.integer("chips", chips, lo=1, hi=MAX_CHIPS, where="sweep", error=SweepError)))
    seeds = [check.seed("chip seed", s, where="sweep", error=SweepError) for s in chips]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"sweep: chips={list(chips)!r} must be distinct seeds, at least one")
    return seeds


def sweep(model: nn.Module | str, grid: dict[str, Any] | list[dict[str, Any]], metric: Any, chips: int | list[int] = 4,
          *, out: str | Path = "sweep.parquet", target: str = "reram-128x128", fidelity: str = "noisy",
          policy: Any = None, precision: dict | None = None, scheduler: Any = None, workers: int | None = None,
          processes: bool = True, device: str = "auto", draw_on: str = "cpu", reference: bool = True,
          metric_name: str | None = None, higher_is_better: bool | None = None, model_seed: int = 0,
          compile_options: dict[str, Any] | None = None, calibrate: bool | list = False, timeout_s: float = 30.0,
          progress: bool = True) -> SweepResult:
    """Run `grid` x `chips` programmed instances, streaming one Parquet row per (point, chip) into `out`.

    Args:
        model: an `nn.Module`, `builtin:NAME` or a local model directory (as `nvcc-pt compile --model` takes).
        grid: field -> values (cartesian product) or a list of point dicts; fields are any `TargetSpec` or
            device field, `target`, `fidelity`, `policy` and `precision` (`nvcc_pt.sweep_grid`). All points
            are validated before anything runs.
        metric: `cm -> float` or `cm -> {name: float}`, or a built-in: "perplexity", "relative_error", a
            `BuiltinMetric` or a dict `{"name": ..., "batch": ..., "tokens": ..., "seed": ...}`.
        chips: programmed instances per point (seeds 0..N-1) or the seeds themselves.
        out: the output directory; a rerun into it computes only the missing (point, chip) pairs.
        target, fidelity, policy, precision: what a point uses for the keys the grid does not set.
        scheduler: None (a local Dask cluster when dask is installed, else serial with a warning), "serial",
            "local", a scheduler address (`tcp://host:8786`), or a `distributed.Client` or cluster object.
        workers: workers of a local cluster (default: one per GPU, else one per core).
        processes: local CPU workers as processes (parallel) or threads of this process (tests, debugging).
        device: where each point runs on its worker: "auto" (CUDA when the worker sees a GPU), "cpu", "cuda".
        draw_on: accepted for older callers, changes nothing (`CompiledModel.program`: a seed is the same chip
            on every device).
        reference: also evaluate the float model (fidelity `exact`), the yardstick of `cheapest`.
        metric_name: the metric's column name (and identity, for a plain function).
        higher_is_better: the metric's direction; built-ins know theirs, functions default to True.
        model_seed: seeds a `builtin:` model's random weights.
        compile_options: more keywords of `nvcc_pt.compile` (`example_inputs`, `tokens`, `duplicate`, ...).
        calibrate: at fidelities with an ADC ("adc", "bit-serial"), set each point's ADC ranges from real partial
            sums (`CompiledModel.calibrate`) on its first chip: True uses the built-in metric's corpus, a list gives
            the inputs. Off by default: ranges are then full-scale, as the target's `adc_range` says.
        timeout_s: how long to wait for a scheduler address.
        progress: show a tqdm bar over the sweep's (point, chip) rows.

    Example:
        >>> res = nvcc_pt.sweep("builtin:tiny-llama", {"adc_bits": [4, 8]}, "perplexity", chips=4)
        >>> res.table.groupby("adc_bits")["metric.perplexity"].mean()
    """
    chip_list = _chip_list(chips)
    check.choice("device", device, ("auto", "cpu", "cuda"), where="sweep", error=SweepError)
    check.choice("draw_on", draw_on, ("cpu", "device"), where="sweep", error=SweepError)
    check.seed("model_seed", model_seed, where="sweep", error=SweepError)
    check.real("timeout_s", timeout_s, lo=0.0, lo_open=True, where="sweep", error=SweepError)
    if workers is not None:
        check.integer("workers", workers, lo=1, hi=4096, where="sweep", error=SweepError)
    if device == "cuda" and not torch.cuda.is_available() and scheduler in (None, "serial", "local"):
        from nvcc_pt.errors import DeviceError

        raise DeviceError("sweep: device='cuda' but this machine has no CUDA GPU; use device='auto' or 'cpu'")
    options = dict(compile_options or {})
    bad = set(options) & {"target", "fidelity", "seed", "policy", "precision"}
    if bad:
        raise SweepError(f"compile_options may not set {sorted(bad)}: the grid and sweep() arguments decide them")
    metric, name, metric_id = resolve_metric(metric, metric_name)
    builtin = isinstance(metric, BuiltinMetric)
    direction = metric.higher_is_better if builtin else (True if higher_is_better is None else higher_is_better)
    if not isinstance(direction, dict):
        check.boolean("higher_is_better", direction, where="sweep", error=SweepError)
    if calibrate is True and not builtin:
        raise SweepError("calibrate=True calibrates on the built-in metric's corpus; with a metric function, pass the "
                         "inputs to calibrate on: calibrate=[ids1, ids2]")
    if not isinstance(calibrate, (bool, list)) or (isinstance(calibrate, list) and not calibrate):
        raise SweepError(f"calibrate={calibrate!r} must be True, False or a non-empty list of model inputs")
    defaults = {"target": target, "fidelity": fidelity, "policy": policy, "precision": precision}
    points = expand_grid(grid, **defaults)
    if reference:
        base = make_point({}, **defaults)
        points.insert(0, Point(base.spec, "exact", reference=True))
    identity = {"model": _model_identity(model, model_seed), "metric": {**metric_id, "higher_is_better": direction},
                "compile": _options_identity(options), "draw_on": draw_on,
                "calibrate": _options_identity(calibrate)}
    check.path("out", out, where="sweep", error=SweepError)
    store = SweepStore(out, identity)  # refuses another sweep's output before anything runs
    done = store.done()
    tasks = []
    for point in points:
        chips_for = [0] if point.reference else chip_list
        missing = [c for c in chips_for if c not in done.get(point.point_id, set())]
        if missing:
            tasks.append(PointTask(point, missing, model, json.dumps(identity["model"], sort_keys=True), metric,
                                   json.dumps(metric_id, sort_keys=True), name, builtin, options, device, draw_on,
                                   model_seed, calibrate, chips_for[0], json.dumps(identity["compile"])))
    total = sum(1 if p.reference else len(chip_list) for p in points)
    todo = sum(len(t.chips) for t in tasks)
    if tasks:
        _run(tasks, store, scheduler, workers, processes, timeout_s, progress, total - todo, total)
    return _result(store, points, chip_list, name, direction, todo, total - todo, varied_keys(grid))


def _directions(table, main: str, direction: bool | dict[str, bool]) -> dict[str, bool]:
    """Each metric column's direction, the task metric first."""
    names = [c.removeprefix("metric.") for c in table.columns if c.startswith("metric.")] or [main]
    names = sorted(names, key=lambda n: n != main)
    if isinstance(direction, dict):
        return {n: bool(direction.get(n, True)) for n in names}
    return dict.fromkeys(names, bool(direction))


def _result(store: SweepStore, points: list[Point], chips: list[int], main: str, direction: bool | dict[str, bool],
            computed: int, reused: int, varied: tuple[str, ...]) -> SweepResult:
    table = store.table()
    directions = _directions(table, main, direction)
    if len(table):
        order = {p.point_id: i for i, p in enumerate(points)}
        table = table[table["point_id"].isin(order) & (table["chip"].isin(chips) | table["reference"])]
        table = table.assign(_order=table["point_id"].map(order)).sort_values(["_order", "chip"], kind="stable")
        table = table.drop(columns="_order").reset_index(drop=True)
    return SweepResult(table, store.path, directions, computed, reused, varied)


def _run(tasks: list[PointTask], store: SweepStore, scheduler: Any, workers: int | None, processes: bool,
         timeout_s: float, progress: bool, reused: int, total: int) -> None:
    if scheduler is None and not dask_available():
        warnings.warn(f"dask distributed is not installed, so the sweep's {len(tasks)} points run serially in this "
                      "process; pip install 'nvcc-pt[sweep]' to run them on a Dask cluster", RuntimeWarning,
                      stacklevel=3)
        scheduler = "serial"
    bar = tqdm(total=total, initial=reused, desc="sweep", unit="chip", disable=not progress)
    try:
        if scheduler == "serial":
            for task in tasks:
                rows = run_point(task)
                store.write(task.point.point_id, rows)
                bar.update(len(rows))
            return
        _run_dask(tasks, store, scheduler, workers, processes, timeout_s, bar)
    finally:
        bar.close()


def _run_dask(tasks: list[PointTask], store: SweepStore, scheduler: Any, workers: int | None, processes: bool,
              timeout_s: float, bar) -> None:
    if not dask_available():
        raise SweepError(f"scheduler={scheduler!r} needs dask distributed: pip install 'nvcc-pt[sweep]', or use "
                         "scheduler='serial'")
    from distributed import as_completed

    cluster = None
    if scheduler in (None, "local"):
        cluster = scheduler = local_cluster(workers, processes=processes)
    elif isinstance(scheduler, str) and "://" not in scheduler:
        raise SweepError(f"scheduler={scheduler!r} is not 'serial', 'local' nor an address such as "
                         "tcp://host:8786")
    client, own = connect(scheduler, timeout_s)
    futures = []
    try:
        models = {}
        for task in tasks:
            if isinstance(task.model, nn.Module):  # sent to each worker once, not with every task
                if task.model_key not in models:
                    models[task.model_key] = client.scatter(task.model, broadcast=True, hash=False)
                task.model = models[task.model_key]
        futures = [client.submit(run_point, task, pure=False, priority=-i) for i, task in enumerate(tasks)]
        for future in as_completed(futures, loop=client.loop):
            try:
                rows = future.result()
            except Exception as e:
                if type(e).__name__ == "KilledWorker":
                    raise SchedulerError(f"the Dask workers died while computing a point ({e}); finished points are "
                                         f"kept in {store.path}, rerun to resume") from e
                raise
            store.write(rows[0]["point_id"], rows)
            bar.update(len(rows))
    finally:
        for f in futures:
            f.cancel()
        if own:
            client.close()
        if cluster is not None:
            cluster.close()


def read_sweep(path: str | Path, higher_is_better: bool | dict[str, bool] | None = None) -> SweepResult:
    """The results a sweep wrote to `path`, every point and chip, for search and reports.

    Example:
        >>> res = nvcc_pt.read_sweep("adc.parquet"); res.pareto()
    """
    path = Path(path)
    try:
        identity = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SweepError(f"{path} is not a sweep's output ({path / META_FILE} is missing or unreadable: {e})") from e
    identity.pop("schema", None)
    store = SweepStore(path, identity)
    table = store.table()
    if len(table) == 0:
        raise SweepError(f"{path} holds no finished point yet; run the sweep first")
    stored = identity["metric"].get("higher_is_better", True)
    direction = stored if higher_is_better is None else higher_is_better
    return SweepResult(table, path, _directions(table, identity["metric"]["name"], direction), 0, len(table), ())
