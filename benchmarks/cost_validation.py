"""Cost model against a published figure: ISAAC-CE's peak efficiency (Shafiee et al., ISCA 2016, Table IV).

ISAAC-CE reports CE = 478.95 GOPs/(s*mm^2) and PE = 627.5 GOPs/W for 16-bit operations at
peak (every IMA busy every cycle), HyperTransport included. We compile one layer that fills
whole IMAs exactly on an ISAAC-configured target (128x128 arrays, 2-bit cells, 16-bit weights
in 8 cells with a bias (offset) encoding, 16-bit inputs through 1-bit DACs over 16 cycles of
100 ns, 8-bit ADCs, 8 arrays per IMA, 12 x 168 IMAs per chip) and read the efficiency off
nvcc_pt's report. Expected differences: nvcc_pt models the IMA datapath, buffers and on-chip
interconnect but not ISAAC's HyperTransport links (10.4 W, 22.88 mm^2), sigmoid and max-pool
units, so its PE and CE should come out somewhat above the paper's.

Also prints, for information, the OVT-bank search (one nn.Linear(D, num_ovts)) against the
Jetson Orin CPU baseline: NVCiM-PT reports up to 120x speed and 60x energy efficiency.

    python benchmarks/cost_validation.py   # prints JSON
"""

from __future__ import annotations

import json

import torch
from nvcc_pt.passes.estimate_cost import compare_with_baseline
from torch import nn

import nvcc_pt

ISAAC_TABLE_IV = {"ce_gops_per_s_mm2": 478.95, "pe_gops_per_w": 627.5}
HT_W, HT_MM2 = 10.4, 22.88  # ISAAC Table I, HyperTransport: 4 links at 1.6 GHz


def isaac_target():
    return nvcc_pt.get_target("reram-128x128").replace(
        name="isaac-ce", weight_bits=16, input_bits=16, dac_bits=1, adc_bits=8, cell_bits=2, sign="offset",
        arrays_per_macro=8, macros_per_chip=12 * 168, clock_mhz=10.0,
        extra=(("input_encoding", "twos-complement"),))  # ISAAC's 16 cycles for 16-bit inputs: 15 bits and the sign


def isaac_layer() -> dict:
    torch.manual_seed(0)
    k, n = 1024, 128  # 8 row tiles x (128 outputs x 8 cells = 1024 columns = 8 column tiles): 64 full arrays
    cm = nvcc_pt.compile(nn.Linear(k, n, bias=False), isaac_target(), example_inputs=(torch.randn(1, k),),
                         fidelity="exact")
    op, totals = cm.report.ops[0], cm.report.totals
    assert op["utilization"] == 1.0, op
    ops = 2 * op["macs"]  # ISAAC counts a 16-bit multiply and an add as two operations
    pe = ops / op["energy_pj"] * 1e3  # ops/pJ -> GOPs/W
    ce = ops / op["latency_ns"] / op["area_mm2"]  # ops/ns = GOPs/s
    out = {
        "layer": f"Linear({k}, {n}), 16-bit, {op['arrays']} arrays on {op['arrays'] // 8} IMAs",
        "energy_pj_per_token": op["energy_pj"], "latency_ns": op["latency_ns"], "area_mm2": op["area_mm2"],
        "energy_breakdown_pj": op["energy_breakdown_pj"],
        "pe_gops_per_w": pe, "ce_gops_per_s_mm2": ce,
        "chip_area_mm2_model": totals["chip_area_mm2"], "chip_area_mm2_isaac_without_ht": 85.4 - 22.88,
    }
    # The same chip with ISAAC's HyperTransport added (Table I: 4 links, 10.4 W, 22.88 mm^2), which
    # nvcc_pt does not model: every array busy, as Table IV's peak assumes.
    copies = cm.target.arrays_per_chip / op["arrays"]
    chip_power_w = copies * op["energy_pj"] / op["latency_ns"] * 1e-3  # pJ/ns = mW
    chip_gops = copies * ops / op["latency_ns"]
    out["with_hypertransport"] = {
        "chip_power_w": chip_power_w + HT_W, "chip_area_mm2": totals["chip_area_mm2"] + HT_MM2,
        "pe_gops_per_w": chip_gops / (chip_power_w + HT_W), "ce_gops_per_s_mm2": chip_gops / (totals["chip_area_mm2"] + HT_MM2),
    }
    return out


def bank_search(d: int = 2048, num_ovts: int = 8) -> dict:
    torch.manual_seed(0)
    cm = nvcc_pt.compile(nn.Linear(d, num_ovts, bias=False), "reram-128x128", example_inputs=(torch.randn(1, d),),
                         fidelity="exact")
    out = compare_with_baseline(cm.report)
    out["model"] = f"nn.Linear({d}, {num_ovts}) on reram-128x128"
    out["nvcim_pt_reported"] = {"speedup": 120, "energy_ratio": 60, "against": "Jetson Orin CPU"}
    return out


def main() -> None:
    layer = isaac_layer()
    result = {
        "reference": "Shafiee et al., ISAAC, ISCA 2016, Table IV (ISAAC-CE, peak, HyperTransport included)",
        "published": ISAAC_TABLE_IV,
        "nvcc_pt": layer,
        "ratio_model_over_published": {
            "pe": layer["pe_gops_per_w"] / ISAAC_TABLE_IV["pe_gops_per_w"],
            "ce": layer["ce_gops_per_s_mm2"] / ISAAC_TABLE_IV["ce_gops_per_s_mm2"],
            "pe_with_hypertransport": layer["with_hypertransport"]["pe_gops_per_w"] / ISAAC_TABLE_IV["pe_gops_per_w"],
            "ce_with_hypertransport": layer["with_hypertransport"]["ce_gops_per_s_mm2"] / ISAAC_TABLE_IV["ce_gops_per_s_mm2"],
        },
        "bank_search": bank_search(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
