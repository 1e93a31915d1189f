"""The ADC's range modes (`targets/adc.py`): exact where the bits allow, full scale per tile, calibration on
the level grid, per column and by percentile, and what a user gets from the presets."""

from __future__ import annotations

import math

import pytest
import torch
from nvcc_pt.targets.adc import grid, snap, tile_rows

import nvcc_pt
from nvcc_pt.errors import InputError, TargetError

K, N = 300, 96


def _layer(k: int = K, n: int = N) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(k, n), torch.randn(16, k, generator=torch.Generator().manual_seed(1))


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).norm() / ref.norm()).item()


def _compiled(layer, x, fidelity, **changes):
    spec = nvcc_pt.get_target("reram-128x128").replace(**{"sigma": 0.0, **changes})
    return nvcc_pt.compile(layer, target=spec, example_inputs=(x,), fidelity=fidelity)


ENCODINGS = [(sign, enc) for sign in ("differential", "offset") for enc in ("two-phase", "twos-complement")]


def _assert_exact(cm, layer, x, q, **changes):
    """`cm`'s ADC loses nothing: bit for bit the same path with a 24-bit ADC (step 2^-k: an ideal one), and
    `quantized` to float32 rounding (the two rescale the same integer sums in another order)."""
    ideal = _compiled(layer, x, cm.fidelity, **{**changes, "adc_bits": 24, "adc_range": "exact"})
    y = cm(x)
    assert torch.equal(y, ideal(x))
    assert _rel(y, q) < 1e-6


@pytest.mark.parametrize(("sign", "encoding"), ENCODINGS)
def test_an_adc_covering_the_tile_range_is_exact(sign, encoding):
    # ADC bits that hold every partial sum at a step of one level: 128 rows x 3 levels x digit 1 (bit-serial)
    # or x 127 (one bipolar cycle), signed or not; the exact mode's step is then 1
    layer, x = _layer()
    changes = dict(sign=sign, extra=(("input_encoding", encoding),))
    q = _compiled(layer, x, "quantized", **changes)(x)
    for fidelity, adc_bits in (("bit-serial", 10), ("adc", 17)):
        cm = _compiled(layer, x, fidelity, adc_bits=adc_bits, adc_range="exact", **changes)
        g = grid(cm.plan.states()[0][1].config, torch.empty(0), fidelity == "bit-serial", K)
        assert float(g.step.max()) <= 1.0  # (offset columns flip, so 10 bits give a finer step)
        _assert_exact(cm, layer, x, q, **changes)


def test_the_isaac_preset_is_exact_on_8_bits_at_sigma_0():
    """ISAAC's encoding: 128 rows x 3 levels = 384 needs 9 bits; flipped columns stay below 193, which 8 hold."""
    layer, _ = _layer(1024, 256)
    x = torch.randn(8, 1024, generator=torch.Generator().manual_seed(2))
    spec = nvcc_pt.get_target("reram-128x128")
    assert (spec.sign, spec.adc_range, spec.adc_bits, spec.dac_bits) == ("offset", "exact", 8, 1)
    assert dict(spec.extra)["input_encoding"] == "two-phase"
    q = _compiled(layer, x, "quantized")(x)
    bs = _compiled(layer, x, "bit-serial")
    _assert_exact(bs, layer, x, q)
    twos = dict(extra=(("input_encoding", "twos-complement"),))  # ISAAC's own input encoding: exact as well
    _assert_exact(_compiled(layer, x, "bit-serial", **twos), layer, x, q, **twos)
    # what remains is the 8-bit weights and inputs: each weight and input is off by at most half its step
    # (dw_n = max|w_n| / 254, dx_m = max|x_m| / 254), so per output
    # |y - y_float| <= sum_k |x_mk| dw_n + |w_nk| dx_m + dx_m dw_n
    y, w = layer(x), layer.weight.detach()
    dw, dx = w.abs().amax(1) / 254, x.abs().amax(1, keepdim=True) / 254
    bound = (x.abs().sum(1, keepdim=True) * dw + dx * w.abs().sum(1) + dx * dw * x.shape[1]) * (1 + 1e-4)
    assert bool(((bs(x) - y).abs() <= bound).all())
    # without the flip an 8-bit ADC must double its step: the same layer is no longer exact
    unflipped = _compiled(layer, x, "bit-serial", sign="differential")(x)
    assert _rel(unflipped, q) > 0.05


def test_the_default_preset_reads_no_worse_than_noisy_at_its_own_sigma():
    """Under the preset's variation the exact ADC rounds each read's noise to whole levels: two-phase reads of
    GELU activations drive few rows in their high cycles, so it rounds the noise away there; two's complement
    drives most rows in every cycle (small negative inputs are all ones) and adds rounding error."""
    torch.manual_seed(0)
    first, second = torch.nn.Linear(256, 384), torch.nn.Linear(384, 128)
    act = torch.nn.functional.gelu(first(torch.randn(32, 256, generator=torch.Generator().manual_seed(10)))).detach()
    ref = second(act).detach()
    spec = nvcc_pt.get_target("reram-128x128")
    assert spec.sigma > 0

    def error(fidelity, target=spec):
        return _rel(nvcc_pt.compile(second, target=target, example_inputs=(act,), fidelity=fidelity)(act), ref)

    noisy, default = error("noisy"), error("bit-serial")
    twos = error("bit-serial", spec.replace(extra=(("input_encoding", "twos-complement"),)))
    assert default < noisy < twos  # measured 3.5% < 5.3% < 11.2%


def test_full_scale_uses_every_code_and_a_partial_tile_its_own_rows():
    cfg = {"adc_bits": 8, "rows": 128, "cell_bits": 2, "input_bits": 8, "dac_bits": 1, "sign": "differential",
           "adc_range": "full-scale"}
    assert tile_rows(300, 128) == [128, 128, 44]
    g = grid(cfg, torch.empty(0), True, 300)
    # +-384 levels on signed codes -128..127: 384 / 127, not rounded up to 4; the 44-row tile spans 132
    assert g.step[:, 0].tolist() == pytest.approx([384 / 127, 384 / 127, 132 / 127])
    exact = grid(dict(cfg, adc_range="exact"), torch.empty(0), True, 300)
    assert exact.step[:, 0].tolist() == [4.0, 4.0, 2.0]


def test_snapping_keeps_the_range_and_loses_nothing():
    steps = torch.tensor([0.3, 0.45, 0.6, 1.0, 1.3, 1.8, 2.9, 3.02])
    snapped = snap(steps.double()).tolist()
    assert snapped == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.3, 2.0, 3.0, 3.02])
    for raw, s in zip(steps.tolist(), snapped):
        assert s >= raw - 1e-12  # the codes still hold the range
        assert s == raw or (s <= 1 and math.log2(s).is_integer()) or (s > 1 and s.is_integer())


def test_calibrated_steps_land_on_the_level_grid_and_are_then_exact():
    layer, x = _layer()
    changes = dict(sign="differential", adc_range="full-scale", extra=(("input_encoding", "two-phase"),))
    q = _compiled(layer, x, "quantized", **changes)(x)
    cm = _compiled(layer, x, "bit-serial", **changes).calibrate([x])
    state = cm.plan.states()[0][1]
    lo, hi = state.adc_range.tolist()
    assert hi - lo <= 255  # the observed sums fit 8 bits at one level...
    g = grid(state.config, state.adc_range, True, K)
    step = float(g.step[0, 0])
    assert step <= 1 and math.log2(step).is_integer()  # ...so the step is a power-of-two fraction of one
    _assert_exact(cm, layer, x, q, **changes)  # and the calibrated ADC is exact on the inputs it was calibrated on


def test_calibration_does_not_depend_on_the_ranges_it_replaces():
    """While calibrating, every ADC passes its sums on unrounded: a deep model's later ops are calibrated on the
    activations that well-ranged ADCs give, so a plan that starts from a ruinous range (3 bits at full scale)
    ends with the ranges of one that starts exact, and reads as well."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(K, 200), torch.nn.GELU(), torch.nn.Linear(200, 160), torch.nn.GELU(),
                                torch.nn.Linear(160, 64))
    x = torch.randn(32, K, generator=torch.Generator().manual_seed(2))
    calibrated = []
    for start in (dict(adc_range="full-scale", adc_bits=3), dict(adc_range="exact", adc_bits=3)):
        cm = _compiled(model, x, "bit-serial", sigma=0.02, **start)
        before = _rel(cm(x), model(x))
        cm.calibrate([x])
        calibrated.append((before, [s.adc_range.clone() for _, s in cm.plan.states()], _rel(cm(x), model(x))))
    (bad, ranges_a, after_a), (_, ranges_b, after_b) = calibrated
    # the same sums (flipped columns are read back in another order of float operations: rounding apart)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(ranges_a, ranges_b))
    assert after_a == pytest.approx(after_b, rel=1e-2) and after_a < bad


def test_per_column_and_percentile_ranges():
    layer, x = _layer()
    changes = dict(sign="differential", adc_range="full-scale", adc_bits=5)
    q = _compiled(layer, x, "quantized", **changes)(x)
    per_op = _compiled(layer, x, "bit-serial", **changes).calibrate([x])
    per_col = _compiled(layer, x, "bit-serial", **changes).calibrate([x], per_column=True)
    state = per_col.plan.states()[0][1]
    assert tuple(state.adc_range.shape) == (2, 3, state.levels.shape[-1])
    assert _rel(per_col(x), q) < _rel(per_op(x), q)  # each column's own range reads finer
    clipped = _compiled(layer, x, "bit-serial", **changes).calibrate([x], percentile=99.0)
    lo, hi = clipped.plan.states()[0][1].adc_range.tolist()
    full_lo, full_hi = per_op.plan.states()[0][1].adc_range.tolist()
    assert full_lo < lo < hi < full_hi  # 1% of the sums clip


def test_error_falls_with_adc_bits_in_every_mode_on_real_activations():
    """A real layer's inputs: the second linear of a small MLP on its own ReLU activations."""
    layer, x = _layer()
    act = torch.relu(layer(x)).detach()
    second = torch.nn.Linear(N, 200)
    ref = second(act)
    for mode in ("exact", "full-scale", "calibrated"):
        errors = []
        for bits in (4, 6, 8, 10):
            cm = _compiled(second, act, "bit-serial", adc_bits=bits, adc_range=mode)
            if mode == "calibrated":
                cm.calibrate([act])
            errors.append(_rel(cm(act), ref))
        assert all(a >= b for a, b in zip(errors, errors[1:])), (mode, errors)
        assert errors[0] > errors[-1], (mode, errors)


def test_a_per_column_calibration_survives_save_and_load(tmp_path):
    layer, x = _layer()
    cm = _compiled(layer, x, "bit-serial", adc_bits=6).calibrate([x], per_column=True)
    y = cm(x)
    cm.save(tmp_path / "plan")
    back = nvcc_pt.load(tmp_path / "plan")
    assert torch.equal(back.plan.states()[0][1].adc_range, cm.plan.states()[0][1].adc_range)
    assert torch.equal(back(x), y)


def test_bad_range_options_name_the_value():
    with pytest.raises(TargetError, match="adc_range"):
        nvcc_pt.get_target("reram-128x128").replace(adc_range="max")
    layer, x = _layer()
    cm = _compiled(layer, x, "bit-serial")
    for bad in (0.0, 50.0, 100.0, 120.0, float("nan")):
        with pytest.raises(InputError, match="percentile"):
            cm.calibrate([x], percentile=bad)
    with pytest.raises(InputError, match="per_column"):
        cm.calibrate([x], per_column="yes")


def test_the_report_says_when_bit_serial_is_the_adc_path():
    layer, x = _layer()
    spec = nvcc_pt.get_target("rram4-128x128")
    assert spec.dac_bits >= spec.input_bits
    cm = nvcc_pt.compile(layer, target=spec, example_inputs=(x,), fidelity="bit-serial")
    assert "bit-serial runs as adc here: the 8-bit DAC applies all 8 input bits" in str(cm.report)
    assert torch.equal(cm(x), cm.with_fidelity("adc")(x))
    isaac = nvcc_pt.compile(layer, target="reram-128x128", example_inputs=(x,), fidelity="bit-serial")
    assert "runs as adc" not in str(isaac.report)
