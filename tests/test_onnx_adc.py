"""ONNX export of the crossbar levels (`adc`, `bit-serial`): onnxruntime against the simulator.

Tolerance (`adc_mismatch`, `test_onnx.mismatch`). Both runtimes do the same float32 arithmetic: partial sums of
programmed levels times integer DAC digits, the ADC's Round/Clip, integer code sums scaled
by powers of two. They differ only in summation order (`FLOAT_SLACK` of test_onnx.py, about
1e-7 of the output's scale), and every token must agree within that slack, except that a
value landing within float noise of a rounding tie (an input quantizer's half step, or an
ADC code's) may round the other way in one runtime. That moves one activation by one input
step or one partial sum by one ADC code. We allow it in at most one token in `FLIP_TOKENS`
(at least one) and bound that token's difference by `FLIP_STEPS` input steps of the head
(`max|x_head| / qmax * max|W_head|`, an upstream flip as it reaches the logits; a seen flip
in the tiny Llama's MLP moved them by 4.3) plus one ADC code of the head at its least
significant place (`step * max|x_head| / qmax * max(scale)`). A wrong ADC grid, clip,
shift-and-add or sign correction moves every token and fails.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from nvcc_pt.targets.adc import grid
from nvcc_pt.targets.simulator import recording_ranges
from test_onnx import _HeadInput, feeds, ids_of, mismatch, session, tiny_llama
from torch import nn

import nvcc_pt

FLIP_STEPS = 8
CROSSBAR = ("adc", "bit-serial")


def head_units(cm, *args) -> tuple[float, float]:
    """(one input step, one least-significant ADC code) of the output head, in output units."""
    run = _HeadInput(cm.graph_module)
    with torch.no_grad():
        run.run(*cm.prepare_inputs(*args))
    x, w, cfg = run.head
    state = dict(cm.plan.states())[cfg["op"]]
    sx = float(x.abs().max()) / (2 ** (cfg["input_bits"] - 1) - 1)
    step = float(grid(state.config, state.adc_range, cm.fidelity == "bit-serial", x.shape[-1]).step.max())
    return sx * float(w.abs().max()), step * sx * float(state.scale.max())


def adc_mismatch(cm, got: np.ndarray, ref: np.ndarray, *args) -> str | None:
    """`test_onnx.mismatch`, a flipped token bounded by input steps plus one ADC code of the head."""
    input_step, code = head_units(cm, *args)
    return mismatch(cm, got, ref, FLIP_STEPS * input_step + code)


def check_export(cm, path) -> onnx.ModelProto:
    """The file is valid, every mapped op is one CimLinear call of the crossbar overload, levels are initializers."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    calls = [n for n in proto.graph.node if (n.domain, n.op_type) == ("nvcc_pt", "CimLinear")]
    assert len(calls) == len(cm.plan.states()) > 0
    assert {n.overload for n in calls} <= {"adc", "bit-serial", "bit-serial-twos-complement"}
    assert {(f.name, f.overload) for f in proto.functions} == {("CimLinear", n.overload) for n in calls}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, state in cm.plan.states():
        np.testing.assert_array_equal(inits[f"cim.{name}.levels"], state.levels.float().numpy())
        assert f"cim.{name}.weight" not in inits  # the crossbar body reads the levels, not the effective weight
        ann = {p.key: p.value for n in calls if n.name == f"cim/{name}" for p in n.metadata_props}
        assert ann["cim.op"] == name and ann["cim.fidelity"] == cm.fidelity
    return proto


# -- a plain module: odd sizes, several row tiles, padding, every sign and input encoding ---------
K, H, N = 37, 45, 11
SPECS = {
    "differential": {"sign": "differential", "adc_range": "full-scale", "extra": (("input_encoding", "two-phase"),)},
    "offset-dac2": {"sign": "offset", "dac_bits": 2, "adc_bits": 6, "extra": (("input_encoding", "two-phase"),)},
    "twos-complement": {"extra": (("input_encoding", "twos-complement"),), "dac_bits": 3, "input_bits": 7},
    "isaac": {},
    "isaac-twos-complement": {"extra": (("input_encoding", "twos-complement"),)},
}
"""The preset's ISAAC array (offset weights, exact range with flipped columns; two-phase inputs), with ISAAC's
two's-complement inputs, and others."""


def mlp_inputs(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, K, generator=torch.Generator().manual_seed(seed))


def mlp_cm(fidelity: str, changes: dict) -> nvcc_pt.CompiledModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, H), nn.ReLU(), nn.Linear(H, N)).eval()
    spec = nvcc_pt.get_target("reram-128x128").replace(rows=16, cols=24, sigma=0.05, **changes)
    return nvcc_pt.compile(model, spec, example_inputs=(mlp_inputs(4, 0),), fidelity=fidelity, seed=5)


def compare_mlp(cm, path) -> float:
    sess, worst = session(path), 0.0
    for batch in (4, 13):
        x = mlp_inputs(batch, batch)
        got = sess.run(None, feeds(cm, x))[0]
        with torch.no_grad():
            ref = cm(x).numpy()
        problem = adc_mismatch(cm, got, ref, x)
        assert problem is None, problem
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


MLP_CASES = [(f, s) for f in CROSSBAR for s in sorted(SPECS) if f == "bit-serial" or not s.endswith("twos-complement")]
"""The input encoding only matters bit-serially."""


@pytest.mark.parametrize("calibrated", [False, True], ids=["full-scale", "calibrated"])
@pytest.mark.parametrize(("fidelity", "spec"), MLP_CASES)
def test_mlp_matches_simulator(fidelity, spec, calibrated, tmp_path):
    cm = mlp_cm(fidelity, SPECS[spec])
    if calibrated:
        # calibrate on inputs with few active features, so the full inputs' partial sums overrun the range
        cm.calibrate([mlp_inputs(8, 1) * (torch.arange(K) < 6)])
        with recording_ranges() as seen, torch.no_grad():
            cm(mlp_inputs(13, 13))
        state = cm.plan.states()[0][1]
        lo, hi = state.adc_range.tolist()
        seen_lo, seen_hi = seen[state.config["op"]].range().tolist()
        assert seen_lo < lo or seen_hi > hi  # the ADC clips
    path = cm.export_onnx(tmp_path / "mlp.onnx")
    check_export(cm, path)
    compare_mlp(cm, path)


@pytest.mark.parametrize("spec", ["differential", "isaac"])
def test_per_column_and_percentile_ranges_export(spec, tmp_path):
    cm = mlp_cm("bit-serial", SPECS[spec]).calibrate([mlp_inputs(8, 1)], per_column=True, percentile=99.0)
    assert cm.plan.states()[0][1].adc_range.dim() == 3
    path = cm.export_onnx(tmp_path / "mlp.onnx")
    check_export(cm, path)
    compare_mlp(cm, path)


def test_full_scale_export_fails_a_calibrated_simulator(tmp_path):
    """The tolerance is tight enough to tell the ADC grids apart: the calibrated range is exported, not ignored."""
    full = mlp_cm("bit-serial", {})
    path = full.export_onnx(tmp_path / "full.onnx")
    calibrated = mlp_cm("bit-serial", {}).calibrate([mlp_inputs(8, 1) * (torch.arange(K) < 6)])
    x = mlp_inputs(13, 13)
    with torch.no_grad():
        ref = calibrated(x).numpy()
    assert adc_mismatch(calibrated, session(path).run(None, feeds(calibrated, x))[0], ref, x) is not None


def test_ideal_adc_export_fails_the_adc_simulator(tmp_path):
    """A coarse ADC changes every token beyond the tolerance: exporting `noisy` (ideal ADC) instead would fail."""
    cm = mlp_cm("adc", {"adc_bits": 4})
    path = cm.with_fidelity("noisy").export_onnx(tmp_path / "noisy.onnx")
    x = mlp_inputs(13, 13)
    with torch.no_grad():
        ref = cm(x).numpy()
    assert adc_mismatch(cm, session(path).run(None, feeds(cm, x))[0], ref, x) is not None


def test_read_noise_warns(tmp_path):
    cm = mlp_cm("adc", {"read_sigma": 0.01})
    with pytest.warns(UserWarning, match="read noise"):
        cm.export_onnx(tmp_path / "r.onnx")


def test_no_warning_without_read_noise(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        mlp_cm("adc", {}).export_onnx(tmp_path / "q.onnx")


# -- a tiny Hugging Face Llama -----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_adc():
    return nvcc_pt.compile(tiny_llama(), "reram-128x128", fidelity="adc", seed=3)


@pytest.mark.parametrize("calibrated", [False, True], ids=["full-scale", "calibrated"])
@pytest.mark.parametrize("fidelity", CROSSBAR)
def test_llama_matches_simulator(llama_adc, fidelity, calibrated, tmp_path):
    cm = llama_adc if fidelity == "adc" and not calibrated else llama_adc.with_fidelity(fidelity)
    if calibrated:
        cm.calibrate([ids_of((2, 8), seed=5), ids_of((1, 12), seed=6)])
    path = cm.export_onnx(tmp_path / "llama.onnx")
    check_export(cm, path)
    sess = session(path)
    for shape in ((2, 7), (3, 11)):
        ids = ids_of(shape, seed=shape[1])
        with torch.no_grad():
            ref = cm(ids).logits.numpy()
        got = sess.run(None, feeds(cm, ids))[0]
        problem = adc_mismatch(cm, got, ref, ids)
        assert problem is None, problem
