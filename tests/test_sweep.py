"""Sweeps: Dask equals serial row for row, an interrupted sweep resumes, bad input is refused before any compute."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import nvcc_pt  # noqa: E402
from nvcc_pt import sweeps  # noqa: E402
from nvcc_pt.errors import SchedulerError, SweepError  # noqa: E402

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    REF = MODEL(X)
GRID = {"adc_bits": [4, 8], "sigma": [0.0, 0.1]}
OPTIONS = {"compile_options": {"example_inputs": (X,)}, "fidelity": "adc", "calibrate": [X], "higher_is_better": False,
           "metric_name": "err", "progress": False}


def rel_err(cm) -> float:
    with torch.no_grad():
        return ((cm(X) - REF).norm() / REF.norm()).item()


class Counting:
    """The same metric, counting its calls and raising after `fail_after` of them (an interrupted sweep)."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, cm) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        return rel_err(cm)


def rows(result):
    return result.table.drop(columns="seconds")


def test_local_dask_cluster_equals_serial(tmp_path):
    serial = nvcc_pt.sweep(MODEL, GRID, rel_err, chips=2, out=tmp_path / "serial", scheduler="serial", **OPTIONS)
    dask = nvcc_pt.sweep(MODEL, GRID, rel_err, chips=2, out=tmp_path / "dask", scheduler="local", workers=2,
                         processes=False, **OPTIONS)
    assert len(serial.table) == 1 + 4 * 2  # the float reference, then 4 points x 2 chips
    assert rows(serial).equals(rows(dask))
    assert dask.computed == 9 and dask.reused == 0
    t = serial.table
    assert t.loc[t["reference"], "metric.err"].item() < 1e-6
    noisy = t[(t["sigma"] == 0.1) & (t["adc_bits"] == 8)]["metric.err"]
    assert noisy.nunique() == 2  # two programmed chips differ
    assert (t.loc[~t["reference"], "adc_bits"] == [4, 4, 4, 4, 8, 8, 8, 8]).all()  # grid order, then chip
    # a row is what a direct compile gives: calibrated on the first chip, then programmed as chip 1
    spec = nvcc_pt.get_target("reram-128x128").replace(adc_bits=8, sigma=0.1)
    cm = nvcc_pt.compile(MODEL, spec, fidelity="adc", seed=0, example_inputs=(X,)).calibrate([X]).program(1)
    assert noisy.iloc[1] == rel_err(cm)
    assert t["energy_pj"].iloc[-1] == cm.report.totals["energy_pj"] + cm.report.totals["other_digital_energy_pj"]


def test_interrupted_sweep_computes_only_the_missing_points(tmp_path):
    out = tmp_path / "s"
    failing = Counting(fail_after=5)  # the reference (1 call) and 2 points of 2 chips finish, the 3rd point fails
    with pytest.raises(RuntimeError, match="interrupted"):
        nvcc_pt.sweep(MODEL, GRID, failing, chips=2, out=out, scheduler="serial", **OPTIONS)
    parts = sorted(out.glob("point-*.parquet"))
    assert len(parts) == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written
    counting = Counting()
    resumed = nvcc_pt.sweep(MODEL, GRID, counting, chips=2, out=out, scheduler="serial", **OPTIONS)
    assert counting.calls == 4 and resumed.computed == 4 and resumed.reused == 5
    fresh = nvcc_pt.sweep(MODEL, GRID, rel_err, chips=2, out=tmp_path / "fresh", scheduler="serial", **OPTIONS)
    assert rows(resumed).equals(rows(fresh))
    again = Counting()
    nvcc_pt.sweep(MODEL, GRID, again, chips=3, out=out, scheduler="serial", **OPTIONS)  # one more chip per point
    assert again.calls == 4


KILLED = """
import sys, time, torch
sys.path.insert(0, {tests!r})
import test_sweep as t
import nvcc_pt

def slow(cm):
    time.sleep(0.4)
    return t.rel_err(cm)

nvcc_pt.sweep(t.MODEL, t.GRID, slow, chips=2, out={out!r}, scheduler="serial", **t.OPTIONS)
"""


def test_killed_sweep_resumes(tmp_path):
    out = tmp_path / "s"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED.format(tests=str(Path(__file__).parent), out=str(out))))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("point-*.parquet"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.kill()
    finally:
        proc.wait()
    done = len(list(out.glob("point-*.parquet")))
    assert 2 <= done < 5, "the sweep should have been killed half-way"
    counting = Counting()
    resumed = nvcc_pt.sweep(MODEL, GRID, counting, chips=2, out=out, scheduler="serial", **OPTIONS)
    assert resumed.reused == 1 + 2 * (done - 1) and counting.calls == 9 - resumed.reused
    assert len(resumed.table) == 9 and resumed.table["metric.err"].notna().all()


def test_without_dask_the_sweep_runs_serially_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "dask_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="dask distributed is not installed.*serially"):
        res = nvcc_pt.sweep(MODEL, {"adc_bits": [8]}, rel_err, chips=1, out=tmp_path / "s", **OPTIONS)
    assert len(res.table) == 2
    with pytest.raises(SweepError, match="needs dask distributed"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [6]}, rel_err, chips=1, out=tmp_path / "s", scheduler="local", **OPTIONS)


def test_metric_dict_and_compile_errors_become_columns(tmp_path):
    def two(cm):
        e = rel_err(cm)
        return {"err": e, "err_sq": e * e}

    grid = [{"adc_bits": 8}, {"arrays_per_macro": 1, "macros_per_chip": 1, "chips": 1}]  # the second cannot fit
    res = nvcc_pt.sweep(MODEL, grid, two, chips=2, out=tmp_path / "s", scheduler="serial",
                        **{**OPTIONS, "metric_name": "two"})
    t = res.table
    assert {"metric.err", "metric.err_sq"} <= set(t.columns)
    bad = t[t["chips"] == 1]
    assert len(bad) == 2 and bad["error"].str.contains("AllocationError").all() and bad["metric.err"].isna().all()
    assert len(res.pareto("err", costs=("energy_pj",))) == 1  # a refused design is never on the front
    back = nvcc_pt.read_sweep(tmp_path / "s")
    assert list(back.higher_is_better) == ["err", "err_sq"] and not back.higher_is_better["err"]
    assert len(back.table) == len(t)


def test_unknown_grid_field_is_refused_before_any_compute(tmp_path):
    counting = Counting()
    with pytest.raises(SweepError, match=r"'adc_bit'.*did you mean 'adc_bits'"):
        nvcc_pt.sweep(MODEL, {"adc_bit": [4]}, counting, out=tmp_path / "s", scheduler="serial", **OPTIONS)
    with pytest.raises(SweepError, match=r"adc_bits=40.*adc_bits"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [8, 40]}, counting, out=tmp_path / "s", scheduler="serial", **OPTIONS)
    with pytest.raises(SweepError, match=r"sigma=-0\.1"):
        nvcc_pt.sweep(MODEL, {"sigma": [0.1, -0.1]}, counting, out=tmp_path / "s", scheduler="serial", **OPTIONS)
    with pytest.raises(SweepError, match="fidelity"):
        nvcc_pt.sweep(MODEL, {"fidelity": ["noisy", "fuzzy"]}, counting, out=tmp_path / "s", scheduler="serial",
                      **{**OPTIONS, "fidelity": "noisy"})
    assert counting.calls == 0 and not (tmp_path / "s").exists()


def test_unreachable_scheduler_and_another_sweeps_output_keep_what_was_computed(tmp_path):
    out = tmp_path / "s"
    nvcc_pt.sweep(MODEL, {"adc_bits": [8]}, rel_err, chips=1, out=out, scheduler="serial", **OPTIONS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    start = time.monotonic()
    with pytest.raises(SchedulerError, match="tcp://127.0.0.1:9"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [6, 8]}, rel_err, chips=1, out=out, scheduler="tcp://127.0.0.1:9",
                      timeout_s=1, **OPTIONS)
    assert time.monotonic() - start < 30
    with pytest.raises(SweepError, match="another sweep.*metric"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [6]}, rel_err, chips=1, out=out, scheduler="serial",
                      **{**OPTIONS, "metric_name": "other"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    import pandas as pd

    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1.0]}).to_parquet(plain)
    with pytest.raises(SweepError, match="is a file"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [6]}, rel_err, chips=1, out=plain, scheduler="serial", **OPTIONS)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pd.DataFrame({"a": [1.0]}).to_parquet(foreign / "part-0.parquet")
    with pytest.raises(SweepError, match="not a sweep's output"):
        nvcc_pt.sweep(MODEL, {"adc_bits": [6]}, rel_err, chips=1, out=foreign, scheduler="serial", **OPTIONS)
    assert pd.read_parquet(plain)["a"].tolist() == [1.0] and len(list(foreign.iterdir())) == 1


def test_local_gpu_cluster_pins_one_gpu_per_worker():
    """Each GPU worker is a process that sees its GPU alone (CUDA_VISIBLE_DEVICES), whether or not GPUs exist."""
    distributed = pytest.importorskip("distributed")
    from nvcc_pt.sweep_engine import local_cluster

    # Where GPUs exist the workers must name real ones (distributed's nanny asks NVML about its GPU); elsewhere two
    # made-up indices show the pinning all the same.
    gpus = [str(i) for i in range(torch.cuda.device_count())] or ["0", "1"]
    with local_cluster(gpus=gpus) as cluster, distributed.Client(cluster) as client:
        seen = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
    assert sorted(seen.values()) == gpus


def test_grid_expansion_validates_and_merges_spellings_of_one_design():
    from nvcc_pt.sweep_grid import expand_grid

    points = expand_grid({"adc_bits": [8, 6], "policy": ["all", "no-lm-head"],
                          "precision": [{}, {"*.0": {"weight_bits": 4}}]}, target="reram-128x128")
    assert len(points) == 8 and len({p.point_id for p in points}) == 8
    same = expand_grid([{"adc_bits": 8}, {}, {"target": "reram-128x128", "adc_bits": 8}])
    assert len(same) == 1  # the preset's own ADC bits: the same design however it is spelled
    listed = expand_grid([{"level_scale": [1.0, 2.0, 2.0, 1.0]}, {"device": {"name": "custom", "sigma": 0.05}}])
    assert listed[0].spec.device.level_scale == (1.0, 2.0, 2.0, 1.0) and listed[1].spec.device.name == "custom"
    with pytest.raises(SweepError, match="no values"):
        expand_grid({"adc_bits": []})
    with pytest.raises(SweepError, match="more than"):
        expand_grid({"adc_bits": list(range(1, 25)), "rows": list(range(1, 101)), "cols": list(range(1, 101))})
    with pytest.raises(SweepError, match="not a sweep's output"):
        nvcc_pt.read_sweep("/nonexistent/sweep.parquet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_builtin_metric_sweep_on_a_gpu_matches_the_cpu(tmp_path):
    """The built-in metric on the GPU (several chips per pass, ADC ranges calibrated there) gives the CPU's rows.

    Chips are keyed by seed, so each row is the same chip on both devices; the two differ by float rounding.
    """
    grid = {"adc_bits": [4, 8], "sigma": [0.0, 0.05]}
    metric = {"name": "relative_error", "tokens": 16, "batch": 2}
    runs = {device: nvcc_pt.sweep("builtin:tiny-llama", grid, metric, chips=2, out=tmp_path / device, fidelity="adc",
                                  calibrate=True, device=device, scheduler="serial", progress=False).table
            for device in ("cpu", "cuda")}
    cpu, gpu = (runs[d].sort_values(["point_id", "chip"]).reset_index(drop=True) for d in ("cpu", "cuda"))
    assert list(cpu["point_id"]) == list(gpu["point_id"]) and (gpu["error"] == "").all()
    err_cpu, err_gpu = cpu["metric.relative_error"], gpu["metric.relative_error"]
    diff = (err_gpu - err_cpu).abs()
    # Calibration records on each device's own activations: where a 4-bit ADC's range moves by a rounding, its
    # codes shift and a row can differ by ~1% of its error; a different chip would differ by far more.
    assert err_gpu.notna().all() and diff.max() < 2e-2 * max(1.0, err_cpu.abs().max())
    assert (diff < 1e-5).mean() >= 0.75  # most rows agree to float rounding
