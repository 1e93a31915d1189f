"""The CPU crossbar path whose oneDNN GEMM also rounds and clips (`cpu_adc.FusedAdc`): bit for bit what the
separate ADC passes give, in every range mode, encoding and sign, flipped columns and partial tiles included;
and the progress bar of a long crossbar call."""

from __future__ import annotations

import pytest
import torch
from nvcc_pt.targets import simulator

import nvcc_pt

needs_magic = pytest.mark.skipif(not simulator._MAGIC_ROUNDS, reason="oneDNN's fused bias and clip are not usable here")

CASES = {
    "preset": {},
    "preset, sigma 0": {"sigma": 0.0},
    "twos complement": {"extra": (("input_encoding", "twos-complement"),)},
    "7-bit ADC, half-level ties": {"adc_bits": 7, "sigma": 0.0},
    "6-bit ADC, noisy": {"adc_bits": 6, "sigma": 0.1},
    "differential": {"sign": "differential"},
    "full scale (not a power of two)": {"adc_range": "full-scale"},
    "2-bit DAC": {"dac_bits": 2},
}


@needs_magic
@pytest.mark.parametrize("changes", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("k", [300, 256])
def test_the_fused_adc_is_bit_for_bit_the_plain_one(changes, k, monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, 40)
    x = torch.randn(24, k, generator=torch.Generator().manual_seed(1)) * torch.rand(k) ** 3  # small features too
    spec = nvcc_pt.get_target("reram-128x128").replace(**changes)
    cm = nvcc_pt.compile(layer, target=spec, example_inputs=(x,), fidelity="bit-serial", seed=1)
    used = []
    codes = simulator.FusedAdc.codes
    monkeypatch.setattr(simulator.FusedAdc, "codes", lambda self, xt: used.append(self.tiles) or codes(self, xt))
    with torch.no_grad():
        fused = cm(x)
        monkeypatch.setattr(simulator, "_MAGIC_ROUNDS", False)
        plain = cm(x)
    assert torch.equal(fused, plain)
    if changes.get("adc_range") != "full-scale":
        assert used  # the fused path ran (a full-scale step of 384/255 levels is not a power of two: it cannot)


@needs_magic
@pytest.mark.parametrize(("fidelity", "changes"), [
    ("bit-serial", {}), ("bit-serial", {"sign": "differential"}), ("bit-serial", {"adc_bits": 7, "sigma": 0.0}),
    ("bit-serial", {"extra": (("input_encoding", "twos-complement"),)}),
    ("adc", {"sign": "differential", "adc_bits": 12})])  # one signed cycle: digits that sum to zero still read
def test_skipping_the_empty_rows_of_a_tile_changes_no_bit(fidelity, changes, monkeypatch):
    """`FusedAdc.codes` runs a tile's GEMM on its rows with a digit only; the others read 0. With activations like a
    real LLM's (a few outlier features set the per-token scale, so the high bits are mostly zero, and some tokens are
    all zero on a tile) every way of choosing gives the plain path's outputs."""
    from nvcc_pt.targets import cpu_adc

    torch.manual_seed(0)
    layer = torch.nn.Linear(300, 40)
    x = torch.randn(32, 300, generator=torch.Generator().manual_seed(1))
    x[:, 7] *= 40  # an outlier feature: most digits of the other features are in the low bits
    x[::3, 128:256] = 0  # every third token has nothing on the second tile
    x[3, 130], x[3, 131] = x[3, 7] / 2, -x[3, 7] / 2  # and one has two codes there that sum to zero
    spec = nvcc_pt.get_target("reram-128x128").replace(**changes)
    cm = nvcc_pt.compile(layer, target=spec, example_inputs=(x,), fidelity=fidelity, seed=1)
    used = []
    codes = simulator.FusedAdc.codes
    monkeypatch.setattr(simulator.FusedAdc, "codes", lambda self, xt: used.append(self.tiles) or codes(self, xt))
    outputs = {}
    with torch.no_grad():
        for name, share in (("dense", 2.0), ("sparse", 0.0), ("default", cpu_adc.SKIP_EMPTY)):
            monkeypatch.setattr(cpu_adc, "SKIP_EMPTY", share)
            outputs[name] = cm(x)
        monkeypatch.setattr(simulator, "_MAGIC_ROUNDS", False)
        outputs["plain"] = cm(x)
    assert used and all(torch.equal(out, outputs["plain"]) for out in outputs.values())


def test_a_crossbar_call_shows_progress_when_asked_and_only_when_slow(capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 64)
    cm = nvcc_pt.compile(model, target="reram-128x128", example_inputs=(x,), fidelity="bit-serial")
    with torch.no_grad():
        cm(x)  # a call of milliseconds: no bar
        assert "bit-serial ops" not in capsys.readouterr().err
        cm.progress = True
        cm(x)
        assert "bit-serial ops" in capsys.readouterr().err
        cm.progress, noisy = False, cm.with_fidelity("noisy")
        noisy.progress = True
        noisy(x)  # one dense product per op: nothing to show
        assert "ops" not in capsys.readouterr().err


@pytest.mark.parametrize("fidelity", ["adc", "bit-serial"])
def test_a_kept_call_follows_reprogramming_and_calibration(fidelity, monkeypatch):
    """What the CPU path keeps between calls (`simulator.KEPT_BYTES`) gives what preparing each call gives, and is
    dropped when the levels (a new chip) or the ADC ranges (calibration) change."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.ReLU(), torch.nn.Linear(200, 77))
    x = torch.randn(5, 300)
    spec = nvcc_pt.get_target("reram-128x128")

    def run(cm, keep):
        monkeypatch.setitem(simulator.KEPT_BYTES, "cpu", 2**30 if keep else 0)
        with torch.no_grad():
            return cm(x)

    cm = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=1)
    first = run(cm, True)
    assert torch.equal(run(cm, True), first) and torch.equal(run(cm, False), first)
    cm.program(7)  # a new chip written into the same buffers
    other = run(cm, True)
    fresh = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=7)
    assert torch.equal(other, run(fresh, False)) and not torch.equal(other, first)
    cm.calibrate([x])  # new ADC ranges
    calibrated = run(cm, True)
    assert torch.equal(calibrated, run(cm, False)) and not torch.equal(calibrated, other)
