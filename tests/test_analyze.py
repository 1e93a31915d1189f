"""Per-layer analysis (`cm.analyze`): errors measured against exact, shares that add up, and a bad layer named."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

import nvcc_pt
from nvcc_pt.errors import FidelityError, InputError

BAD = "model.layers.0.mlp.down_proj"


def _model():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1)).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def batches():
    return [torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(2)]


@pytest.fixture(scope="module")
def bad(model, batches):
    """Every op at 8 ADC bits but one at 3: the deliberately bad layer."""
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="adc", precision={BAD: {"adc_bits": 3}})
    return cm, cm.analyze(batches)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_end_to_end_error_is_the_plan_against_pytorch(model, batches, bad):
    cm, a = bad
    with torch.no_grad():
        err = sum(float((cm(b).logits - model(input_ids=b, use_cache=False).logits).square().sum()) for b in batches)
        ref = sum(float(model(input_ids=b, use_cache=False).logits.square().sum()) for b in batches)
    assert a.end_to_end["rel_error"] == pytest.approx(math.sqrt(err / ref), rel=1e-4)
    assert a.end_to_end["snr_db"] == pytest.approx(-10 * math.log10(err / ref), rel=1e-4)


def test_shares_sum_to_one_and_explain_the_whole_error(bad):
    _, a = bad
    shares = [r["share"] for r in a.ops]
    assert len(a.ops) == 15 and all(s >= 0 for s in shares)
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    # Ops alone add up, in error power, to about the all-at-once error: the shares account for the error.
    assert 0.5 < a.end_to_end["power_sum_ratio"] < 2.0
    assert a.end_to_end["alone_rel_error"] == pytest.approx(
        math.sqrt(sum(r["alone_rel_error"] ** 2 for r in a.ops)), rel=1e-9)


def test_the_three_bit_layer_is_named_with_a_measured_reason(bad):
    _, a = bad
    row = a.op(BAD)
    others = [r for r in a.ops if r["module"] != BAD]
    assert row["adc_bits"] == 3 and row["snr_db"] < min(r["snr_db"] for r in others) - 3
    assert BAD in [w["module"] for w in a.worst]
    # Full scale at 3 bits: every partial sum rounds to one code, so the fix is the range, not the op.
    assert row["effective_bits"] < 1 and row["clip_rate"] == 0
    assert row["suggestion"].startswith("calibrate the ADC range")
    assert BAD in a.table() and "hurts most" in a.table()


def test_after_calibration_the_fix_is_more_adc_bits(model, batches):
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="adc", precision={BAD: {"adc_bits": 3}})
    a = cm.calibrate(batches).analyze(batches)
    row = a.op(BAD)
    assert row["calibrated"] and row["effective_bits"] > 2.5 and row["adc_error_share"] > 0.5
    assert BAD in [w["module"] for w in a.worst]
    assert row["suggestion"].startswith("more ADC bits than 3")


def test_at_eight_bits_the_layer_is_an_ordinary_op(model, batches, bad):
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="adc")
    a = cm.analyze(batches)
    median = statistics.median(r["snr_db"] for r in a.ops)
    # At 8 bits it sits with the others (its 37 rows fill a third of an array, so it trails a little) ...
    assert a.op(BAD)["snr_db"] > median - 4.0
    # ... where at 3 bits it is far below them
    assert bad[1].op(BAD)["snr_db"] < median - 10.0


def test_keyword_batches_with_a_mask(bad, batches):
    cm, a = bad
    mask = torch.ones_like(batches[0])
    mask[1, :3] = 0
    masked = cm.analyze([{"input_ids": batches[0], "attention_mask": mask}])
    plain = cm.analyze([{"input_ids": batches[0]}])
    assert [r["name"] for r in masked.ops] == [r["name"] for r in a.ops]
    assert masked.end_to_end["rel_error"] != plain.end_to_end["rel_error"]  # the mask reached the model


def test_the_plan_is_left_as_it_was():
    """Read noise is drawn per call from (seed, op, call): the calls after an analysis see the noise they would
    have seen without it."""
    torch.manual_seed(0)
    x = torch.randn(4, 40)
    cm = nvcc_pt.compile(torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8)),
                         "pcm-256x256", example_inputs=(x,), fidelity="noisy")
    first = cm(x)
    cm.program(0)
    a = cm.analyze([x, x])
    assert a.op("0")["rel_error"] > 0 and torch.equal(cm(x), first)
    assert not torch.equal(cm(x), first)  # the noise is drawn anew per call


def test_json_table_and_plot(bad, tmp_path):
    from matplotlib.figure import Figure

    _, a = bad
    a.to_json(tmp_path / "layers.json")
    data = json.loads((tmp_path / "layers.json").read_text())
    assert data == a.to_dict() and [r["name"] for r in data["ops"]] == [r["name"] for r in a.ops]
    fig = a.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == "lm_head"
    assert "share of end-to-end error power (%)" == fig.axes[0].get_xlabel()


def test_bad_inputs(bad, model, batches):
    cm, _ = bad
    with pytest.raises(InputError, match="iterable of model inputs"):
        cm.analyze(batches[0])
    with pytest.raises(InputError, match="top=0 is out of range"):
        cm.analyze(batches, top=0)
    with pytest.raises(InputError, match="no batches"):
        cm.analyze([])
    exact = nvcc_pt.compile(torch.nn.Linear(8, 4), "reram-128x128", example_inputs=(torch.randn(1, 8),),
                            fidelity="exact")
    with pytest.raises(FidelityError, match="with_fidelity"):
        exact.analyze([torch.randn(2, 8)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_analysis_matches_the_cpu(model, batches, bad):
    """The ADC observer turns the fused Triton kernel off, so the GPU's codes are the CPU path's."""
    _, cpu = bad
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="adc", precision={BAD: {"adc_bits": 3}}).to("cuda")
    gpu = cm.analyze([b.cuda() for b in batches])
    assert gpu.end_to_end["rel_error"] == pytest.approx(cpu.end_to_end["rel_error"], rel=1e-3)
    assert BAD in [w["module"] for w in gpu.worst]
    for g, c in zip(gpu.ops, cpu.ops):
        assert g["codes_used"] == pytest.approx(c["codes_used"], abs=2 / 2 ** c["adc_bits"]), g["name"]
