"""Running a sweep's points: one task per point, in this process or on Dask distributed workers.

`run_point` is what a worker executes: build (or reuse) the model, compile the point once, move it to
the worker's device, program each chip and evaluate the metric, and return one row per chip. The
driver (`nvcc_pt.sweeps`) writes each point's rows as they arrive.

Where the points run:
- `serial`: a loop in this process (no Dask needed).
- a local cluster started here (`local_cluster`): one worker per visible GPU, each a process whose
  `CUDA_VISIBLE_DEVICES` names its GPU alone; without GPUs, `workers` single-threaded processes
  (or threads in this process with `processes=False`, for tests and debugging).
- any scheduler address (`tcp://host:8786`), or a `distributed.Client` or cluster object the caller
  made (dask-jobqueue's `SLURMCluster`, `PBSCluster`, ...): see docs/sweeps.md.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from nvcc_pt.errors import NvccPtError, SchedulerError, SweepError
from nvcc_pt.sweep_grid import Point
from nvcc_pt.sweep_metrics import values_of

# One point at a time per process: capture (torch.export) and the simulator's recording switches are process-wide.
_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}
_METRICS: dict[tuple[str, str], Any] = {}
_CAPTURES: dict[str, tuple] = {}  # one capture of the worker's model serves every point (only the target differs)

COST_COLUMNS = {
    "energy_pj": "energy per token, every op: mapped products, digital products and other digital ops (pJ)",
    "cim_energy_pj": "energy per token of the products on crossbars (pJ)",
    "digital_energy_pj": "energy per token of the products left digital (pJ)",
    "other_digital_energy_pj": "energy per token of norms, softmax and elementwise ops (pJ)",
    "latency_ns": "latency of one token through the pipeline, digital ops included (ns)",
    "area_mm2": "silicon area of the mapped products' arrays and periphery (mm^2)",
    "arrays": "crossbar arrays holding weights",
    "chips_used": "chips the mapped weights occupy",
}
"""The cost-model columns every row carries (`cm.report.totals`, see passes/estimate_cost.py)."""


@dataclass
class PointTask:
    """Everything a worker needs to compute one point's missing chips."""

    point: Point
    chips: list[int]
    model: Any
    """A model spec (`builtin:NAME`, a directory), an `nn.Module`, or a Dask future of one."""
    model_key: str
    metric: Any
    metric_key: str
    metric_name: str
    builtin: bool
    compile_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    draw_on: str = "cpu"
    model_seed: int = 0
    calibrate: bool | list = False
    first_chip: int = 0
    options_key: str = ""
    """Identifies `compile_options`: a capture is reused only for the same model and options."""
    """The point's first chip, compiled first and calibrated on, whichever chips are missing."""
    """Set ADC ranges (`cm.calibrate`) at fidelities with an ADC: True on the built-in metric's corpus, or these inputs."""


def cost_columns(totals: dict[str, Any]) -> dict[str, float]:
    """The cost model's per-token figures of a compiled point (`COST_COLUMNS`)."""
    return {"energy_pj": float(totals["energy_pj"]) + float(totals.get("other_digital_energy_pj") or 0.0),
            "cim_energy_pj": float(totals["cim_energy_pj"]), "digital_energy_pj": float(totals["digital_energy_pj"]),
            "other_digital_energy_pj": float(totals.get("other_digital_energy_pj") or 0.0),
            "latency_ns": float(totals["latency_ns"]), "area_mm2": float(totals["area_mm2"]),
            "arrays": float(totals["arrays"]), "chips_used": float(totals["chips"])}


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _model(task: PointTask):
    """The task's model, built or received once per worker process."""
    if task.model_key not in _MODELS:
        model = task.model
        if isinstance(model, str):
            from nvcc_pt.models import build_model

            model = build_model(model, seed=task.model_seed)
        _MODELS.clear()  # one model per worker: a sweep over another model frees the last one
        _METRICS.clear()
        _CAPTURES.clear()
        _MODELS[task.model_key] = model
    # A plan shares the model's parameters and `cm.to(device)` moves them in place: every design is compiled from
    # the model on the CPU, then moved (as benchmarks/simulator_speed.py does).
    return _MODELS[task.model_key].cpu()


def _metric(task: PointTask, model):
    if not task.builtin:
        return task.metric
    key = (task.model_key, task.metric_key)
    if key not in _METRICS:
        _METRICS[key] = task.metric.prepare(model)
    return _METRICS[key]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def run_point(task: PointTask) -> list[dict[str, Any]]:
    """Compile `task.point` once and evaluate its metric on each of `task.chips`; one row per chip.

    A design the compiler refuses (an `NvccPtError`: weights that do not fit a fixed chip count, say) gives
    rows whose `error` says why and whose metrics are empty; any other exception propagates.
    """
    import nvcc_pt

    with _LOCK:
        start = time.perf_counter()
        point, chips = task.point, task.chips
        model = _model(task)
        metric = _metric(task, model)
        columns = point.columns()
        capture_key = task.model_key + task.options_key
        try:
            try:
                cm = nvcc_pt.compile(model, point.spec, fidelity=point.fidelity, seed=task.first_chip,
                                     policy=point.policy, precision=point.precision or None,
                                     captured=_CAPTURES.get(capture_key), **task.compile_options)
            except NvccPtError as e:
                seconds = (time.perf_counter() - start) / len(chips)
                return [{**columns, "chip": chip, "error": f"{type(e).__name__}: {e}", "seconds": seconds}
                        for chip in chips]
            _CAPTURES.setdefault(capture_key, (cm.plan.exported, cm.plan.capture))
            costs = cost_columns(cm.report.totals)
            values = _evaluate(cm.to(_device(task.device)), task, metric)
        finally:
            model.cpu()  # the plan moved the shared parameters; the next design compiles on the CPU again
        seconds = (time.perf_counter() - start) / len(chips)
        return [{**columns, "chip": chip, **costs, **{f"metric.{k}": v for k, v in vals.items()}, "error": "",
                 "seconds": seconds} for chip, vals in zip(chips, values)]


def _evaluate(cm, task: PointTask, metric) -> list[dict[str, float]]:
    """The metric of each chip: calibrated on the first chip (the range is a design choice), then each programmed."""
    if task.calibrate is not False and task.point.fidelity in ("adc", "bit-serial"):
        batches = [metric.ids] if task.calibrate is True else task.calibrate
        cm.calibrate([_to(b, cm.device) for b in batches])
    if task.builtin and cm.device.type == "cuda":
        # The built-ins call the model on one fixed corpus: montecarlo folds several chips into one forward pass.
        from nvcc_pt.montecarlo import montecarlo

        res = montecarlo(cm, metric, task.chips, higher_is_better=False, progress=False, draw_on=task.draw_on)
        return [{task.metric_name: v} for v in res.values]
    values = []
    with torch.no_grad():
        for chip in task.chips:
            if chip != cm.seed or task.draw_on != "cpu":  # compile programmed the first chip already
                cm.program(chip, draw_on=task.draw_on)
            values.append(values_of(metric(cm), task.metric_name, f"point {task.point.point_id}, chip {chip}"))
    return values


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def visible_gpus() -> list[str]:
    """The GPUs this machine offers workers: `CUDA_VISIBLE_DEVICES`' entries, else torch's device indices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def local_cluster(workers: int | None = None, *, processes: bool = True, gpus: list[str] | None = None):
    """A Dask cluster on this machine: one worker per GPU where there are GPUs, else `workers` CPU workers.

    A GPU worker is a process whose `CUDA_VISIBLE_DEVICES` is its GPU alone, so `cuda` in it is that GPU.
    A CPU worker is single-threaded; its torch threads are the cores divided among the workers.

    Example:
        >>> with local_cluster(2) as cluster, distributed.Client(cluster) as client: ...
    """
    if not dask_available():
        raise SweepError("a local Dask cluster needs dask distributed: pip install 'nvcc-pt[sweep]'")
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    gpus = visible_gpus() if gpus is None else gpus
    if gpus:
        gpus = gpus[:workers] if workers else gpus
        threads = str(max(1, (os.cpu_count() or 1) // len(gpus)))
        specs = {f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {
            "CUDA_VISIBLE_DEVICES": g, "OMP_NUM_THREADS": threads}}} for g in gpus}
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                           silence_logs=40)
    count = workers or max(1, os.cpu_count() or 1)
    options: dict[str, Any] = {"env": {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // count))}} if processes else {}
    return LocalCluster(n_workers=count, threads_per_worker=1, processes=processes, dashboard_address=None,
                        silence_logs=40, **options)


def connect(scheduler: Any, timeout_s: float):
    """A `distributed.Client` for an address, a cluster object or a client; `SchedulerError` when unreachable."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False), True
    except (OSError, TimeoutError) as e:
        raise SchedulerError(f"cannot reach the Dask scheduler {scheduler!r} within {timeout_s:g} s ({e}); start it "
                             "(dask scheduler), check the address and port, or raise the timeout. Nothing was "
                             "computed") from e
