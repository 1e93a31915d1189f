"""Precisions at the edges of what `TargetSpec` accepts compute what they promise.

Weights and cells up to 16 bits (cell levels above 8 bits no longer fit the uint8 the state used to
hold them in), inputs from 2 bits: the quantized product stays within the quantization error bound
of the exact one, and a crossbar whose ADC resolves every partial sum equals the quantized level.
"""

import pytest
import torch
from nvcc_pt.targets.devices import quantize_input_int, quantize_weight
from torch import nn

import nvcc_pt
from nvcc_pt import TargetError


def _linear_and_input(k=96, n=40, batch=6):
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(k, n)
    with torch.no_grad():
        model.weight.copy_(torch.randn(n, k, generator=g))
        model.bias.copy_(torch.randn(n, generator=g))
    return model, torch.randn(batch, k, generator=g)


def _quantization_bound(model: nn.Linear, x: torch.Tensor, weight_bits: int, input_bits: int) -> torch.Tensor:
    """|y_q - y| <= sum_k |x_k| dw_n / 2 + dx / 2 |w_q| ... with dw, dx the weight and input steps."""
    wq, sw = quantize_weight(model.weight.detach().double(), weight_bits)
    xi, sx = quantize_input_int(x.double(), input_bits)
    w_err = x.double().abs().sum(-1, keepdim=True) * sw[None, :] / 2
    x_err = sx / 2 * (wq.abs() * sw[:, None]).sum(-1)[None, :]
    return w_err + x_err + 1e-5 * (x.double().abs() @ model.weight.detach().double().abs().t())


@pytest.mark.parametrize("change", [
    {"weight_bits": 16, "cell_bits": 12},
    {"weight_bits": 16, "cell_bits": 16, "input_bits": 16, "dac_bits": 16},
    {"weight_bits": 16, "cell_bits": 9, "sign": "offset"},
    {"weight_bits": 12, "cell_bits": 12, "input_bits": 2, "dac_bits": 1},
])
def test_quantized_stays_within_the_quantization_bound_of_exact(change):
    spec = nvcc_pt.get_target("reram-128x128").replace(sigma=0.0, **change)
    model, x = _linear_and_input()
    exact = nvcc_pt.compile(model, spec, example_inputs=(x,), fidelity="exact")
    quant = exact.with_fidelity("quantized")
    with torch.no_grad():
        y, yq = exact(x).double(), quant(x).double()
    bound = _quantization_bound(model, x, spec.weight_bits, spec.input_bits)
    assert bool(((yq - y).abs() <= bound).all()), float(((yq - y).abs() - bound).max())
    assert not torch.equal(yq, y)  # it did quantize


def test_sixteen_bit_weights_on_twelve_bit_cells_are_accurate():
    """The case that read back 11% off while 12-bit levels were stored as uint8."""
    spec = nvcc_pt.get_target("reram-128x128").replace(sigma=0.0, weight_bits=16, cell_bits=12, input_bits=16,
                                                       dac_bits=16)
    model, x = _linear_and_input()
    cm = nvcc_pt.compile(model, spec, example_inputs=(x,), fidelity="quantized")
    with torch.no_grad():
        y, yq = model(x), cm(x)
    assert ((yq - y).norm() / y.norm()).item() < 1e-4


@pytest.mark.parametrize("fidelity", ["adc", "bit-serial"])
def test_wide_cells_through_an_adc_that_resolves_every_partial_sum_equal_quantized(fidelity):
    # 4 rows x (2^12 - 1) x 1 (2-bit inputs) = 16380 < 2^15 - 1 codes: the ADC step is 1/2, every sum exact
    spec = nvcc_pt.get_target("reram-128x128").replace(sigma=0.0, rows=4, weight_bits=16, cell_bits=12, input_bits=2,
                                                       dac_bits=1, adc_bits=16)
    model, x = _linear_and_input(k=20, n=8)
    quant = nvcc_pt.compile(model, spec, example_inputs=(x,), fidelity="quantized")
    with torch.no_grad():
        torch.testing.assert_close(quant.with_fidelity(fidelity)(x), quant(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"weight_bits": 32}, r"weight_bits=32 .*\[2, 16\]"),
    ({"weight_bits": 17}, r"\[2, 16\]"),
    ({"cell_bits": 17, "weight_bits": 16}, r"cell_bits=17 .*\[1, 16\]"),
    ({"input_bits": 1, "dac_bits": 1}, r"input_bits=1 .*\[2, 16\]"),
    ({"adc_bits": 25}, r"adc_bits=25 .*\[1, 24\]"),
    ({"rows": 4097}, r"rows=4097 .*\[1, 4096\]"),
    ({"cols": 10_000_000_000}, r"cols=10000000000"),
])
def test_precisions_beyond_what_the_arithmetic_holds_are_refused(change, match):
    with pytest.raises(TargetError, match=match):
        nvcc_pt.get_target("reram-128x128").replace(**change)
