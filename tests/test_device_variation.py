"""The two device-variation models: the NVCiM-PT authors' group's per-weight model and the per-cell-level one.

The per-weight model follows the group's public NeFT code (Qin et al., NF_Training repository,
`src/generate_noise.py`, `config.py`): std `sqrt(sum 4^(c i)) / sum 2^(c i) * sigma * max|W|` per weight, times
the device factor s inside the band 0.25 < |w|/max|W| < 0.75, all divided by sqrt(0.4 s^2 + 0.6).
"""

import json
import math

import pytest
import torch
from nvcc_pt.targets import DeviceModel, get_target
from nvcc_pt.targets.devices import band_scale, per_weight_std, program_levels
from nvcc_pt.targets.simulator import op_generator
from plan_forge import reseal

import nvcc_pt
from nvcc_pt import meta
from nvcc_pt.errors import NvccPtError, TargetError
from nvcc_pt.prompt.bank import OVTBank
from nvcc_pt.prompt.noise import noise_info, read_back_ovt

FACTORS = {"rram1": 1.0, "fefet2": 2.0, "rram4": 4.0, "fefet6": 6.0}  # the group's config.py
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.8, 1.0)  # |w| / max|W|: outside, inside, inside, inside, outside, outside
ROWS = 4000


def _known_weights(sign_flip: bool = True) -> torch.Tensor:
    """`ROWS` copies of one weight vector whose quantized ratios to max|W| lie clearly inside or outside the band."""
    row = torch.tensor(RATIOS)
    w = row.repeat(ROWS, 1)
    if sign_flip:  # negative weights sit on the W- column: the model does not care
        w[::2, 1::2] *= -1
    return w


def test_closed_form_for_eight_bit_weights_on_two_bit_cells():
    assert per_weight_std(1.0, 2, 4) == pytest.approx(math.sqrt(1 + 16 + 256 + 4096) / 85)
    assert per_weight_std(0.1, 2, 4) == pytest.approx(0.0778, abs=5e-5)
    # the band is open at both ends, as the group's mask is
    s = band_scale(torch.tensor([0.25, 0.2500001, 0.5, 0.7499999, 0.75]), 4.0)
    norm = math.sqrt(0.4 * 16 + 0.6)
    assert torch.allclose(s, torch.tensor([1, 4, 4, 4, 1]) / norm)


@pytest.mark.parametrize("device", list(FACTORS))
def test_per_weight_std_follows_the_groups_formula(device):
    sigma = 0.1
    w = _known_weights()
    spec = get_target(f"{device}-128x128")
    assert spec.device.variation == "per-weight" and spec.device.band_factor == FACTORS[device]
    ideal = read_back_ovt(w, spec, torch.Generator().manual_seed(0), sigma=0.0)
    noisy = read_back_ovt(w, spec, torch.Generator().manual_seed(1), sigma=sigma)
    dev = noisy - ideal
    s = FACTORS[device]
    norm = math.sqrt(0.4 * s * s + 0.6)
    base = math.sqrt(4369) / 85 * sigma * 1.0  # max|W| = 1
    # the sample std of n normal draws has relative standard error 1/sqrt(2(n-1)); allow 5 of them
    tol = 5 / math.sqrt(2 * (ROWS - 1))
    for j, r in enumerate(RATIOS):
        want = base * (s if 0.25 < r < 0.75 else 1.0) / norm
        assert dev[:, j].mean().abs() < 5 * want / math.sqrt(ROWS)
        assert dev[:, j].std().item() == pytest.approx(want, rel=tol), (device, r)


@pytest.mark.parametrize("device", list(FACTORS))
def test_normalisation_keeps_the_mean_variance_of_a_forty_percent_band(device):
    """sqrt(0.4 s^2 + 0.6): with 40% of the weights in the band the mean variance is the unscaled one."""
    w = torch.cat([torch.full((ROWS, 2), 0.5), torch.full((ROWS, 3), 0.9)], 1)  # 2 of 5 in the band
    w[0, 4] = 1.0  # the tensor's max
    spec = get_target(f"{device}-128x128")
    dev = read_back_ovt(w, spec, torch.Generator().manual_seed(3), sigma=0.1) - \
        read_back_ovt(w, spec, torch.Generator().manual_seed(3), sigma=0.0)
    want = per_weight_std(0.1, 2, 4)
    assert dev.pow(2).mean().sqrt().item() == pytest.approx(want, rel=5 / math.sqrt(2 * w.numel()))


def test_per_cell_model_is_still_selectable_and_differs():
    w = _known_weights()
    per_weight = get_target("rram4-128x128")
    per_cell = per_weight.replace(variation="per-cell")
    assert per_cell.device.variation == "per-cell" and get_target("reram-128x128").device.variation == "per-cell"
    ideal = read_back_ovt(w, per_cell, torch.Generator().manual_seed(0), sigma=0.0)
    a = read_back_ovt(w, per_weight, torch.Generator().manual_seed(1)) - ideal
    b = read_back_ovt(w, per_cell, torch.Generator().manual_seed(1)) - ideal
    assert not torch.allclose(a, b)
    # 127 is levels (3, 3, 3, 1) from the least significant slice: per cell, its most significant cell sits at
    # a middle level and takes the device factor; per weight, a weight at ratio 1.0 is outside the band
    assert b[:, 5].std() > 1.5 * a[:, 5].std()
    # and any per-weight model can be put on another device family
    reram = get_target("reram-128x128").replace(variation="per-weight", band_factor=3.0, sigma=0.1)
    c = read_back_ovt(w, reram, torch.Generator().manual_seed(1)) - ideal
    want = per_weight_std(0.1, 2, 4) * 3.0 / math.sqrt(0.4 * 9 + 0.6)
    assert c[:, 2].std().item() == pytest.approx(want, rel=5 / math.sqrt(2 * ROWS))


@pytest.mark.parametrize("variation", ["per-weight", "per-cell"])
def test_compiled_layer_ovt_read_back_and_bank_use_one_model(variation):
    ovt = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    spec = get_target("fefet2-128x128").replace(variation=variation)
    lin = torch.nn.Linear(32, 8, bias=False)
    lin.weight.data = ovt.clone()
    cm = nvcc_pt.compile(lin, spec, example_inputs=(torch.zeros(1, 32),), fidelity="noisy", seed=5)
    name, state = cm.plan.states()[0]
    assert cm.plan.records[name][meta.NOISE].variation == variation
    assert torch.equal(read_back_ovt(ovt, spec, op_generator(5, 0)), state.weight)
    # the bank's store layer is programmed the same way, its max|W| over the whole stored matrix
    bank = OVTBank()
    bank.add("a", ovt)
    bank.add("b", 0.5 * ovt.flip(0))
    cb = bank.compile(spec, seed=7)
    index = next(i for i, (_, s) in enumerate(cb.cm.plan.states()) if s is cb._store_state)
    assert all(r[meta.NOISE].variation == variation for r in cb.cm.plan.records.values() if meta.NOISE in r)
    stored = read_back_ovt(bank.stacked().reshape(16, 32), spec, op_generator(7, index))
    assert torch.equal(cb.read_back().reshape(16, 32), stored)


def test_crossbar_path_reads_the_same_deviations():
    """At `adc` fidelity the per-weight deviation rides on the cells the ADC path multiplies by."""
    g = torch.Generator().manual_seed(4)
    lin = torch.nn.Linear(64, 16, bias=False)
    lin.weight.data = torch.randn(16, 64, generator=g)
    x = torch.randn(5, 64, generator=g)
    spec = get_target("rram4-128x128").replace(adc_bits=24)  # a nearly ideal ADC
    noisy = nvcc_pt.compile(lin, spec, example_inputs=(x,), fidelity="noisy", seed=2)
    adc = nvcc_pt.compile(lin, spec, example_inputs=(x,), fidelity="adc", seed=2)
    with torch.no_grad():
        a, b = noisy(x), adc(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    clean = nvcc_pt.compile(lin, spec.replace(sigma=0.0), example_inputs=(x,), fidelity="noisy", seed=2)
    with torch.no_grad():
        assert not torch.allclose(a, clean(x), rtol=1e-3, atol=1e-3)


def test_seeded_and_censored():
    w = _known_weights()
    spec = get_target("rram1-128x128")
    a = read_back_ovt(w, spec, torch.Generator().manual_seed(9))
    assert torch.equal(a, read_back_ovt(w, spec, torch.Generator().manual_seed(9)))
    assert not torch.equal(a, read_back_ovt(w, spec, torch.Generator().manual_seed(10)))
    ideal = read_back_ovt(w, spec, torch.Generator().manual_seed(0), sigma=0.0)
    capped = read_back_ovt(w, spec, torch.Generator().manual_seed(9), censor=0.5) - ideal
    std = per_weight_std(0.1, 2, 4) / math.sqrt(0.4 + 0.6)
    # right-censored at half a standard deviation: no weight rises further, the draws otherwise the same (up to
    # the stored levels' rounding: 2^-10 of a level step on the top levels, times the slices' place values)
    stored = 85 * 2.0**-10 / 127 * w.abs().max().item()
    assert capped.max().item() <= 0.5 * std + stored
    free = a - ideal
    same = free < 0.5 * std - 2 * stored
    assert torch.allclose(capped[same], free[same], atol=2 * stored)


def test_program_levels_needs_the_weights_for_per_weight_variation():
    info = get_target("rram1-128x128").device.noise_record(4)
    with pytest.raises(TargetError, match="per-weight variation"):
        program_levels(torch.zeros(2, 4, 3, 3, dtype=torch.uint8), info, 2, torch.Generator())


@pytest.mark.parametrize("make, match", [
    (lambda: DeviceModel("x", variation="group"), r"variation='group' is not one of \('per-cell', 'per-weight'\)"),
    (lambda: get_target("rram1-128x128").replace(variation="Per-Weight"), "variation='Per-Weight'"),
    (lambda: get_target("rram1-128x128").replace(variation=None), "variation=None"),
    (lambda: get_target("rram1-128x128").replace(band_factor=-1.0), "band_factor=-1.0 is out of range"),
    (lambda: get_target("rram1-128x128").replace(band_factor=float("nan")), "band_factor=nan"),
    (lambda: noise_info(get_target("rram1-128x128").replace(variation="neft")), "variation='neft'"),
])
def test_bad_variation_names(make, match):
    with pytest.raises(NvccPtError, match=match):
        make()


def test_plans_without_the_fields_load_as_per_cell(tmp_path):
    lin = torch.nn.Linear(16, 4, bias=False)
    cm = nvcc_pt.compile(lin, "rram1-128x128", example_inputs=(torch.zeros(1, 16),), fidelity="noisy", seed=1)
    cm.save(tmp_path / "new")
    loaded = nvcc_pt.load(tmp_path / "new")
    name = loaded.plan.states()[0][0]
    assert loaded.plan.records[name][meta.NOISE].variation == "per-weight"
    assert loaded.target.device.variation == "per-weight"
    cm.save(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "plan.json").read_text())
    for rec in doc["records"].values():
        for key in ("variation", "band_factor"):
            rec.get(meta.NOISE, {}).pop(key, None)
    for key in ("variation", "band_factor"):
        doc["target"]["device"].pop(key)
    reseal(tmp_path / "old", doc)
    old = nvcc_pt.load(tmp_path / "old")
    assert old.plan.records[name][meta.NOISE].variation == "per-cell" and old.target.device.variation == "per-cell"
    assert torch.equal(old.plan.states()[0][1].weight, loaded.plan.states()[0][1].weight)  # the saved chip
