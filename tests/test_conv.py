"""Convolutions on crossbars: unrolled products (im2col) against PyTorch, a loop reference, the cost
model, the report's MAC coverage and onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _vision import import_torchvision
from nvcc_pt.targets.devices import as_stored, program_levels
from nvcc_pt.targets.simulator import op_generator
from test_onnx import session
from test_onnx_adc import adc_mismatch
from test_simulator import assert_close, ref_levels, reference
from torch import nn

import nvcc_pt
from nvcc_pt import meta


def _spec(**changes):
    base = dict(rows=16, cols=24, sigma=0.0)
    base.update(changes)
    return nvcc_pt.get_target("reram-128x128").replace(**base)


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _conv2d() -> nn.Module:
    torch.manual_seed(0)  # K = 5 * 3 * 3 = 45: three row tiles of 16, the last one partial
    return nn.Conv2d(5, 7, 3, stride=2, padding=1, dilation=2, bias=True).eval()


def _conv1d() -> nn.Module:
    torch.manual_seed(0)  # K = 6 * 4 = 24
    return nn.Conv1d(6, 9, 4, stride=2, padding=1, dilation=2, bias=True).eval()


def _unrolled_reference(conv: nn.Module, x: torch.Tensor, cm, seed: int, fidelity: str) -> torch.Tensor:
    """The linear loop reference of test_simulator applied to every output position's patch, folded back."""
    name, state = cm.plan.states()[0]
    cfg = state.config
    one_d = x.dim() == 3
    x4 = x.unsqueeze(2) if one_d else x
    as2 = lambda v, lead=1: (lead, v[0]) if one_d else v  # noqa: E731 - a 1-d conv over a height of 1
    patches = F.unfold(x4, as2(conv.kernel_size), dilation=as2(conv.dilation), padding=as2(conv.padding, 0),
                       stride=as2(conv.stride))  # [B, K, L]
    batch, k, positions = patches.shape
    w = conv.weight.detach().reshape(conv.out_channels, k)
    levels, scale = ref_levels(w, cfg)
    if cm.target.sigma > 0 and fidelity != "quantized":  # quantized leaves device variation out
        levels = program_levels(levels, cm.plan.records[name][meta.NOISE], cfg["cell_bits"], op_generator(seed, 0))
        levels = as_stored(levels, cfg["sign"], cfg["cell_bits"])  # the columns as every path reads them
    rows = patches.transpose(1, 2).reshape(batch * positions, k)
    y = reference(rows, w, conv.bias.detach(), cfg, levels, scale, fidelity == "bit-serial",
                  fidelity in ("adc", "bit-serial"))
    return y.reshape(batch, positions, -1).transpose(1, 2).reshape(batch, conv.out_channels, -1)


CASES = [
    ("quantized", {}),
    ("noisy", {"sigma": 0.05}),
    ("adc", {"sigma": 0.05, "adc_bits": 6}),
    ("bit-serial", {"sigma": 0.05, "adc_bits": 6, "dac_bits": 2}),
    ("bit-serial", {"sign": "offset", "sigma": 0.03, "adc_bits": 7}),
]


@pytest.mark.parametrize(("fidelity", "changes"), CASES)
def test_conv2d_matches_the_unrolled_loop_reference(fidelity, changes):
    conv, x = _conv2d(), _x(2, 5, 11, 13)
    cm = nvcc_pt.compile(conv, target=_spec(**changes), example_inputs=(x,), fidelity=fidelity, seed=3)
    fast = cm(x)
    assert fast.shape == conv(x).shape == (2, 7, 5, 6)
    assert_close(fast.reshape(2, 7, -1), _unrolled_reference(conv, x, cm, 3, fidelity))
    assert cm.report.op("conv2d")["row_tiles"] == 3 and cm.report.op("conv2d")["k"] == 45


@pytest.mark.parametrize("fidelity", ["quantized", "bit-serial"])
def test_conv1d_matches_the_unrolled_loop_reference(fidelity):
    conv, x = _conv1d(), _x(3, 6, 17)
    cm = nvcc_pt.compile(conv, target=_spec(sigma=0.04, adc_bits=6), example_inputs=(x,), fidelity=fidelity, seed=5)
    fast = cm(x)
    assert fast.shape == conv(x).shape
    assert_close(fast, _unrolled_reference(conv, x, cm, 5, fidelity))
    row = cm.report.op("conv1d")
    assert (row["mapped"], row["k"], row["n"]) == (True, 24, 9)


def test_resnet18_maps_every_convolution_and_matches_torchvision_at_exact():
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.resnet18().eval()
    x = _x(2, 3, 64, 64)
    cm = nvcc_pt.compile(model, target="reram-128x128", example_inputs=(x,), fidelity="exact")
    convs = [o for o in cm.report.ops if "conv" in o["op"]]
    assert len(convs) == 20 and all(o["mapped"] for o in convs)
    assert cm.report.op("fc")["mapped"] and cm.report.totals["mapped_ops"] == 21
    assert cm.report.op("conv1")["k"] == 3 * 7 * 7 and cm.report.op("conv1")["n"] == 64
    assert cm.report.totals["mapped_macs_fraction"] == 1.0
    with torch.no_grad():
        ref, got = model(x), cm(x)
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's note on its own copy
def test_padding_modes_and_asymmetric_same_padding_give_the_right_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect"),
        nn.Conv2d(4, 5, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(5, 6, 4, padding="same", dilation=1),  # even kernel: one more zero after than before
        nn.Conv2d(6, 3, (2, 3), padding="valid", stride=(1, 2)),
    ).eval()
    x = _x(2, 3, 9, 10)
    cm = nvcc_pt.compile(model, target="reram-128x128", example_inputs=(x,), fidelity="exact")
    assert [o["mapped"] for o in cm.report.ops] == [True] * 4
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_grouped_depthwise_and_transposed_convolutions_stay_digital_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                          nn.ConvTranspose2d(8, 3, 2, stride=2), nn.Conv2d(3, 2, 1)).eval()
    x = _x(2, 4, 7, 7)
    cm = nvcc_pt.compile(model, target="reram-128x128", example_inputs=(x,), fidelity="exact")
    grouped, depthwise, transposed, plain = cm.report.ops
    assert not grouped["mapped"] and "grouped convolution (groups=2: 2 products of K=18, N=4)" in grouped["reason"]
    assert not depthwise["mapped"] and "groups=8: 8 products of K=9, N=1" in depthwise["reason"]
    assert not transposed["mapped"] and "transposed convolution" in transposed["reason"]
    assert plain["mapped"]
    # Digital or not, every product's MACs are counted: per output position, C_out x C_in/groups x kernel.
    assert grouped["macs"] == 8 * 2 * 9 * 5 * 5 and depthwise["macs"] == 8 * 1 * 9 * 5 * 5
    assert transposed["macs"] == 8 * 3 * 4 * 5 * 5  # per input position, C_in x C_out x kernel
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_mac_coverage_counts_a_digital_convolution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 3 * 3, 10)).eval()
    x = _x(2, 3, 8, 8)
    cm = nvcc_pt.compile(model, target="reram-128x128", example_inputs=(x,), policy={"exclude": ("2",)})
    first, second, fc = 3 * 9 * 8 * 64, 8 * 9 * 16 * 9, 144 * 10  # K * N * output positions
    assert [o["macs"] for o in cm.report.ops] == [first, second, fc]
    assert not cm.report.ops[1]["mapped"]
    fraction = cm.report.totals["mapped_macs_fraction"]
    assert fraction == pytest.approx((first + fc) / (first + second + fc), abs=1e-6) and fraction < 1
    assert f"{fraction:.1%} of per-token weight MACs on crossbars" in str(cm.report)


def test_conv_cost_is_the_linear_cost_times_its_output_positions():
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(16, 24, 3, padding=1).eval(), nn.Linear(16 * 9, 24).eval()
    lin = nvcc_pt.compile(linear, target="reram-128x128", example_inputs=(_x(2, 144),)).report.ops[0]
    rows = {}
    for side in (8, 16):
        rows[side] = nvcc_pt.compile(conv, target="reram-128x128", example_inputs=(_x(2, 16, side, side),)).report.ops[0]
    for side, row in rows.items():
        positions = side * side
        assert (row["k"], row["n"], row["arrays"]) == (lin["k"], lin["n"], lin["arrays"])
        assert row["macs"] == lin["macs"] * positions
        assert row["energy_pj"] == pytest.approx(lin["energy_pj"] * positions, rel=1e-5)
        assert row["latency_ns"] == pytest.approx(lin["latency_ns"] * positions, rel=1e-5)
        for component, pj in lin["energy_breakdown_pj"].items():
            assert row["energy_breakdown_pj"][component] == pytest.approx(pj * positions, rel=1e-5)
        assert row["area_mm2"] == lin["area_mm2"] and row["programming_energy_pj"] == lin["programming_energy_pj"]


class _SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 6, (3, 2), padding=(2, 1), dilation=2)
        self.c = nn.Conv1d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(self.c(y.flatten(2)).mean(-1))


@pytest.mark.parametrize("fidelity", ["exact", "adc"])
def test_onnx_of_a_conv_model_matches_the_simulator(fidelity, tmp_path):
    torch.manual_seed(0)
    model = _SmallCnn().eval()
    x = _x(2, 3, 13, 11)
    cm = nvcc_pt.compile(model, target=_spec(sigma=0.05, adc_bits=6), example_inputs=(x,), fidelity=fidelity)
    path = cm.export_onnx(tmp_path / "cnn.onnx")
    ort = session(path)
    for batch in (x, _x(3, 3, 13, 11, seed=2)):  # the batch stays dynamic
        got = ort.run(None, {ort.get_inputs()[0].name: batch.numpy()})[0]
        with torch.no_grad():
            ref = cm(batch).numpy()
        if fidelity == "exact":
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
        else:
            assert adc_mismatch(cm, got, ref, batch) is None


def test_a_saved_conv_plan_runs_the_same(tmp_path):
    torch.manual_seed(0)
    model = _SmallCnn().eval()
    x = _x(2, 3, 13, 11)
    cm = nvcc_pt.compile(model, target=_spec(sigma=0.05), example_inputs=(x,), fidelity="bit-serial", seed=2)
    loaded = nvcc_pt.load(cm.save(tmp_path / "plan"))
    assert torch.equal(loaded(x), cm(x))
    assert loaded.report.totals["mapped_ops"] == 4 and math.isclose(loaded.report.totals["mapped_macs_fraction"], 1.0)


class _EinsumThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))
        self.lin = nn.Linear(6, 5)

    def forward(self, x):
        return self.lin(torch.einsum("bk,kn->bn", x, self.w))


def test_mac_coverage_counts_a_static_product_of_no_linear_form():
    torch.manual_seed(0)
    cm = nvcc_pt.compile(_EinsumThenLinear().eval(), target="reram-128x128", example_inputs=(_x(2, 8),))
    einsum, linear = cm.report.ops
    assert not einsum["mapped"] and "einsum" in einsum["reason"] and linear["mapped"]
    assert (einsum["macs"], linear["macs"]) == (8 * 6, 6 * 5)  # per token, the captured batch of 2 divided out
    assert cm.report.totals["mapped_macs_fraction"] == pytest.approx(30 / 78, abs=1e-6)


def test_monte_carlo_instances_in_one_pass_run_a_conv_as_one_at_a_time():
    torch.manual_seed(0)
    x = _x(2, 3, 13, 11)
    cm = nvcc_pt.compile(_SmallCnn().eval(), target=_spec(sigma=0.05), example_inputs=(x,), fidelity="bit-serial")
    metric = lambda m: m(x).square().mean()  # noqa: E731
    one = nvcc_pt.montecarlo(cm, metric, seeds=3, instances_per_pass=1, progress=False)
    stacked = nvcc_pt.montecarlo(cm, metric, seeds=3, instances_per_pass=3, progress=False)
    assert one.values == stacked.values and len(set(one.values)) == 3
