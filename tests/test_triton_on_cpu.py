"""The GPU kernels checked on the CPU, each in a process of its own: Triton's interpreter runs the simulator's kernels
(numpy) against the torch ops they stand in for (`_interpreted_kernels.py`), and Triton's compiler builds each kind
of kernel for a Hopper GPU (`_compiled_kernels.py`). Needs the `triton` package, which `make test` installs beside
the environment (`.venv/triton`); the GPU itself is tested on a GPU."""

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


def _run(script: str, **env) -> list[dict]:
    env = dict(os.environ, **env)
    if BESIDE.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BESIDE), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name(script))], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.skipif(not FOUND, reason="needs the triton package (make test installs it beside the environment)")
def test_every_kind_of_kernel_compiles_for_a_hopper_gpu():
    built = _run("_compiled_kernels.py")
    kinds = {c["kernel"] for c in built}
    assert kinds == {"crossbar", "dac_planes", "keyed_columns", "split_linear", "quantize_rows", "philox_draw"}
    assert len(built) == 9 and all(c["cubin_bytes"] > 0 for c in built)


@pytest.mark.skipif(not FOUND, reason="needs the triton package (make test installs it beside the environment)")
def test_the_kernels_in_the_interpreter_give_what_the_torch_ops_give():
    """One run of `_interpreted_kernels.py` (half a minute), so that no two workers repeat it:
    - regenerated per-cell and per-weight chips are the stored ones, bit for bit, with the seeds passed or read from
      memory;
    - the DAC planes and their digit sums are `devices.input_planes`';
    - whole models through the GPU code paths (crossbar, split product, DAC planes), forward and input gradient
      (which reads the crossbar kernel's clip flags), match the CPU paths to float32 rounding, as on a GPU;
    - models compiled as on a GPU, whose chips regenerate per call, give the stored chips' outputs, and noisy
      chips drawn by the same kernel hold the stored chips' weights;
    - read noise drawn from a (seed, call) pair in device memory is the stream's block for that call."""
    checks = _run("_interpreted_kernels.py", TRITON_INTERPRET="1")
    keyed = [c for c in checks if c["check"].startswith("keyed")]
    assert {c["variation"] for c in keyed} == {"per-cell", "per-weight"} and len(keyed) == 8
    assert [c for c in keyed if not (c["equal"] and c["seeds_read_equal"])] == []
    planes = [c for c in checks if c["check"].startswith("planes")]
    assert len(planes) == 3 and [c for c in planes if not c["equal"]] == []
    paths = [c for c in checks if c["check"].startswith("path")]
    assert len(paths) == 8
    for c in paths:
        ran = c["kernel_calls"]
        crossbar = c["check"].split()[1] not in ("quantized", "noisy")
        assert (ran["crossbar_codes"] == ran["dac_planes"] == 2) if crossbar else ran["split_linear"] == 2, c
        assert c["error"] <= 1e-5 * c["scale"] and c["grad_error"] <= 1e-5 * c["grad_scale"], c
    regenerated = [c for c in checks if c["check"].startswith("regenerated")]
    assert len(regenerated) == 2 and [c for c in regenerated if not (c["keyed"] and c["equal"])] == []
    drawn = [c for c in checks if c["check"].startswith("noisy drawn")]
    assert len(drawn) == 2 and all(c["equal"] for c in drawn)
    blocks = [c for c in checks if c["check"].startswith("read block")]
    assert len(blocks) == 2 and all(c["error"] <= 1e-5 for c in blocks)
