"""The GPU kernels' arithmetic checked on the CPU: Triton's interpreter runs the simulator's kernels (numpy) in a
process of its own (`_interpreted_kernels.py`), against the torch ops they stand in for. Needs the `triton`
package, which `make test` installs beside the environment (`.venv/triton`); the GPU itself is tested on a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BESIDE = Path(sys.prefix) / "triton"
FOUND = BESIDE.is_dir() or importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def checks() -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    if BESIDE.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BESIDE), env.get("PYTHONPATH")]))
    script = Path(__file__).with_name("_interpreted_kernels.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not FOUND, reason="needs the triton package (make test installs it beside the environment)")
def test_regenerated_chips_are_the_stored_ones_in_the_interpreter(checks):
    keyed = [c for c in checks if c["check"].startswith("keyed")]
    assert {c["variation"] for c in keyed} == {"per-cell", "per-weight"} and len(keyed) == 8
    assert [c for c in keyed if not c["equal"]] == []


@pytest.mark.skipif(not FOUND, reason="needs the triton package (make test installs it beside the environment)")
def test_dac_planes_are_the_input_planes_in_the_interpreter(checks):
    planes = [c for c in checks if c["check"].startswith("planes")]
    assert len(planes) == 3 and all(c["equal"] for c in planes)


@pytest.mark.skipif(not FOUND, reason="needs the triton package (make test installs it beside the environment)")
def test_the_gpu_paths_give_the_cpu_paths_results_in_the_interpreter(checks):
    """Whole models through the fused kernels (crossbar, split product, DAC planes), forward and input gradient (which
    reads the crossbar kernel's clip flags), against the CPU paths: to float32 rounding, as on a GPU."""
    paths = [c for c in checks if c["check"].startswith("path")]
    assert len(paths) == 8
    for c in paths:
        ran = c["kernel_calls"]
        crossbar = c["check"].split()[1] not in ("quantized", "noisy")
        assert (ran["crossbar_codes"] == ran["dac_planes"] == 2) if crossbar else ran["split_linear"] == 2, c
        assert c["error"] <= 1e-5 * c["scale"] and c["grad_error"] <= 1e-5 * c["grad_scale"], c
