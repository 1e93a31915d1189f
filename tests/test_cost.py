"""estimate_cost and weight duplication: costs scale with what they should, totals add up, errors are clear."""

from __future__ import annotations

import math

import pytest
import torch
from nvcc_pt.passes.estimate_cost import compare_with_baseline
from nvcc_pt.targets.costs import ISAAC_COSTS, JETSON_ORIN_CPU, ComponentCosts
from nvcc_pt.targets.spec import TargetSpec
from torch import nn

import nvcc_pt
from nvcc_pt.errors import CostModelError, DuplicationError, NvccPtError


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1))


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def linear_row(k: int, n: int, target="reram-128x128", **kw) -> dict:
    torch.manual_seed(0)
    cm = nvcc_pt.compile(nn.Linear(k, n), target, example_inputs=(torch.randn(1, k),), fidelity="exact", **kw)
    return cm.report.ops[0]


def counts_ratio(a: dict, b: dict, component: str) -> float:
    return a["energy_breakdown_pj"][component] / b["energy_breakdown_pj"][component]


@pytest.mark.parametrize("encoding", ["two-phase", "twos-complement"])
@pytest.mark.parametrize(("input_bits", "dac_bits"), [(8, 1), (8, 2), (6, 3), (5, 4), (8, 8)])
def test_cost_model_counts_the_cycles_the_simulator_applies(encoding, input_bits, dac_bits):
    """The report's reads, conversions and latency are those of the DAC cycles the bit-serial path runs."""
    from nvcc_pt.targets.devices import input_planes

    t = nvcc_pt.get_target("reram-128x128").replace(input_bits=input_bits, dac_bits=dac_bits,
                                                   extra=(("input_encoding", encoding),))
    one_cycle = linear_row(64, 16, t.replace(dac_bits=input_bits))  # the ADC's energy per conversion is the same
    cfg = {"input_bits": input_bits, "dac_bits": dac_bits, "input_encoding": encoding}
    planes, _ = input_planes(torch.tensor([[3, -5, 0]]), cfg, bit_serial=True)
    assert counts_ratio(linear_row(64, 16, t), one_cycle, "adc") == pytest.approx(planes.shape[0])


def test_costs_scale_with_input_cycles():
    t = nvcc_pt.get_target("reram-128x128")
    serial = linear_row(64, 16, t.replace(dac_bits=1))   # 14 input cycles: 7 magnitude bits, two phases
    wide = linear_row(64, 16, t.replace(dac_bits=2))     # 8 input cycles: 4 two-bit digits, two phases
    assert serial["arrays"] == wide["arrays"]
    for component in ("array", "adc", "shift_add"):
        assert counts_ratio(serial, wide, component) == pytest.approx(14 / 8)
    assert serial["latency_ns"] > 1.7 * wide["latency_ns"] - 100


def test_costs_scale_with_arrays_and_conversions():
    one = linear_row(128, 16)
    two = linear_row(256, 16)  # twice the row tiles: twice the arrays, reads and conversions
    assert two["arrays"] == 2 * one["arrays"]
    for component in ("array", "adc", "dac"):
        assert counts_ratio(two, one, component) == pytest.approx(2.0)
    assert two["area_mm2"] > one["area_mm2"]


def test_adc_energy_follows_its_resolution():
    t = nvcc_pt.get_target("reram-128x128")
    eight, six = linear_row(64, 16, t), linear_row(64, 16, t.replace(adc_bits=6))
    assert counts_ratio(eight, six, "adc") == pytest.approx(4.0)
    assert counts_ratio(eight, six, "array") == pytest.approx(1.0)


def test_totals_equal_the_sum_of_the_rows(llama):
    rep = nvcc_pt.compile(llama, "reram-128x128", tokens=4).report
    ops, totals = rep.ops, rep.totals
    assert totals["energy_pj"] == pytest.approx(sum(o["energy_pj"] for o in ops), rel=1e-5)
    assert totals["cim_energy_pj"] + totals["digital_energy_pj"] == pytest.approx(totals["energy_pj"], rel=1e-5)
    assert totals["area_mm2"] == pytest.approx(sum(o["area_mm2"] for o in ops), rel=1e-5)
    for comp, value in totals["energy_breakdown_pj"].items():
        assert value == pytest.approx(sum(o["energy_breakdown_pj"].get(comp, 0.0) for o in ops), rel=1e-5)
    for o in ops:
        assert o["energy_pj"] == pytest.approx(sum(o["energy_breakdown_pj"].values()), rel=1e-5)
    # every product has a cost; the two attention products run on the digital baseline
    digital = [o for o in ops if not o["mapped"]]
    assert digital and all(o["on"] == "jetson-orin-cpu" and o["energy_pj"] > 0 for o in digital)
    assert totals["bottleneck"] in {o["name"] for o in ops if o["mapped"]}
    assert totals["latency_ns"] >= totals["pipeline_latency_ns"] > 0


def test_a_digital_static_op_costs_what_the_baseline_says(llama):
    rep = nvcc_pt.compile(llama, "reram-128x128", policy="no-lm-head").report
    head = rep.op("lm_head")
    assert not head["mapped"] and head["on"] == "jetson-orin-cpu"
    macs = 36 * 101
    assert head["macs"] == macs
    assert head["energy_pj"] == pytest.approx(JETSON_ORIN_CPU.energy_pj(macs, macs * 4), rel=1e-5)


def test_duplication_balances_within_capacity_and_never_slows(llama):
    small = nvcc_pt.get_target("reram-128x128").replace(macros_per_chip=24, chips=1)
    plain = nvcc_pt.compile(llama, small, tokens=16).report.totals
    dup_rep = nvcc_pt.compile(llama, small, tokens=16, duplicate=True).report
    dup = dup_rep.totals
    assert dup["arrays_allocated"] <= small.arrays_per_chip
    assert dup["chips"] == plain["chips"] == 1
    assert dup["pipeline_interval_ns"] <= plain["pipeline_interval_ns"]
    assert dup["arrays_placed"] > plain["arrays_placed"]  # some op did get copies
    assert dup["latency_ns"] <= plain["latency_ns"]
    # capacity-bound: one more copy of the bottleneck would not fit
    worst = dup_rep.op(dup["bottleneck"])
    assert worst["duplicates"] < 16


@pytest.mark.parametrize("macros", [16, 40])
def test_auto_duplication_never_adds_a_chip(llama, macros):
    t = nvcc_pt.get_target("reram-128x128").replace(macros_per_chip=macros)
    plain = nvcc_pt.compile(llama, t, tokens=8).report.totals
    dup = nvcc_pt.compile(llama, t, tokens=8, duplicate=True).report.totals
    assert dup["chips"] == plain["chips"]
    assert dup["arrays_allocated"] <= plain["chips"] * t.arrays_per_chip
    assert dup["pipeline_interval_ns"] <= plain["pipeline_interval_ns"]


def test_duplication_beyond_capacity_is_refused(llama):
    small = nvcc_pt.get_target("reram-128x128").replace(macros_per_chip=24, chips=1)
    with pytest.raises(DuplicationError, match="requested copies need"):
        nvcc_pt.compile(llama, small, duplicate={"lm_head": 100})
    with pytest.raises(DuplicationError, match="positive integer"):
        nvcc_pt.compile(llama, small, duplicate={"lm_head": 0})
    with pytest.raises(DuplicationError, match="matches no mapped op"):
        nvcc_pt.compile(llama, small, duplicate={"no_such_layer": 2})
    rep = nvcc_pt.compile(llama, small, duplicate={"lm_head": 2}).report
    assert rep.op("lm_head")["duplicates"] == 2 and rep.op("model.layers.0.mlp.up_proj")["duplicates"] == 1


def test_negative_or_malformed_figures_are_refused():
    with pytest.raises(CostModelError, match="adc_energy_pj_per_conversion=-1"):
        ISAAC_COSTS.replace(adc_energy_pj_per_conversion=-1.0)
    with pytest.raises(CostModelError, match="finite"):
        ISAAC_COSTS.replace(dac_energy_pj=float("nan"))
    with pytest.raises(CostModelError, match="unknown"):
        ISAAC_COSTS.replace(digital_baseline="abacus")
    with pytest.raises(CostModelError, match="no field"):
        ISAAC_COSTS.replace(adc_joules=1.0)
    assert issubclass(CostModelError, NvccPtError)


def test_a_missing_figure_fails_only_where_the_target_uses_it():
    t = nvcc_pt.get_target("reram-128x128")
    with pytest.raises(CostModelError, match="adc_energy_pj_per_conversion"):
        linear_row(16, 8, t.replace(costs=ISAAC_COSTS.replace(adc_energy_pj_per_conversion=None)))
    # no cell-write figure: static weights still cost, programming energy is reported as unknown
    row = linear_row(16, 8, t.replace(costs=ISAAC_COSTS.replace(cell_write_energy_pj=None)))
    assert row["energy_pj"] > 0 and row["programming_energy_pj"] is None


def test_target_costs_round_trip_and_node_scaling():
    t = nvcc_pt.get_target("reram-128x128").replace(costs=ISAAC_COSTS.at_node(16))
    assert TargetSpec.from_dict(t.to_dict()) == t
    half = ISAAC_COSTS.at_node(16)
    assert half.adc_energy_pj_per_conversion == pytest.approx(ISAAC_COSTS.adc_energy_pj_per_conversion / 2)
    assert half.adc_area_mm2 == pytest.approx(ISAAC_COSTS.adc_area_mm2 / 4)
    assert half.array_read_energy_pj == ISAAC_COSTS.array_read_energy_pj  # a cell property, not CMOS
    with pytest.raises(nvcc_pt.TargetError, match="costs must be a ComponentCosts"):
        nvcc_pt.get_target("reram-128x128").replace(costs={"adc": 1})
    assert isinstance(ISAAC_COSTS, ComponentCosts)


def test_bank_search_against_the_digital_baseline():
    d, num_ovts = 64, 16
    torch.manual_seed(0)
    bank = nn.Linear(d, num_ovts, bias=False)
    cm = nvcc_pt.compile(bank, "fefet-64x64", example_inputs=(torch.randn(1, d),))
    cmp = compare_with_baseline(cm.report)
    assert cmp["baseline"] == "jetson-orin-cpu" and cmp["macs"] == d * num_ovts
    assert cmp["energy_ratio"] == pytest.approx(cmp["baseline_energy_pj"] / cmp["cim_energy_pj"])
    assert cmp["energy_ratio"] > 1  # a 64x16 search is memory-bound on the CPU, in place on crossbars
    assert cmp["write_all_energy_pj"] > 0 and cmp["update_energy_pj_per_output"] == pytest.approx(
        cmp["write_all_energy_pj"] / num_ovts)
    assert math.isfinite(cmp["speedup"])
    with pytest.raises(CostModelError, match="no mapped op"):
        compare_with_baseline({"ops": [], "totals": {}})


def test_other_digital_ops_are_costed_as_memory_traffic_per_token():
    class Elementwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 64)

        def forward(self, x):
            return torch.relu(self.lin(x)) * 2  # two digital ops, each 64 floats out per token

    cm = nvcc_pt.compile(Elementwise(), "reram-128x128", example_inputs=(torch.randn(5, 64),), fidelity="exact")
    results = cm.plan.results
    assert results["other_digital_bytes"] == 2 * (2 * 64 * 4)  # each output written once and read once
    totals = cm.report.totals
    assert totals["other_digital_energy_pj"] > 0 and totals["other_digital_latency_ns"] > 0
    assert results["latency_ns"] >= results["pipeline_latency_ns"] + results["other_digital_latency_ns"]
