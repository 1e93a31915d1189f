"""The OVT bank's retrieval cost on the NVCiM target against the Jetson Orin CPU baseline."""

import pytest
import torch

from nvcc_pt.errors import CostModelError, InputError
from nvcc_pt.prompt import retrieval_cost
from nvcc_pt.prompt.bank import OVTBank
from nvcc_pt.prompt.ssa import key_dim


def _bank(num, n_virtual=4, hidden=32):
    bank = OVTBank()
    for i in range(num):
        bank.add(f"d{i}", torch.randn(n_virtual, hidden))
    return bank


def test_figures_follow_the_bank_size():
    small = retrieval_cost(_bank(4), "rram1-128x128")
    assert small["key_dim"] == key_dim(4, 32, (1, 2, 4)) == 4 * 32 + 2 * 32 + 32
    assert small["macs"] == 4 * small["key_dim"]
    large = retrieval_cost((64, 4, 32), "rram1-128x128")
    long = retrieval_cost((4, 8, 32), "rram1-128x128")
    # The CPU streams every fp32 key once per query: memory-bound, so its time and energy follow the bank's bytes.
    for r in (small, large, long):
        assert r["baseline_latency_ns"] == pytest.approx(4 * r["macs"] / 204.8, rel=1e-9)  # bytes / (GB/s) = ns
        assert r["baseline_energy_pj"] == pytest.approx(15.0 * r["baseline_latency_ns"] * 1e3, rel=1e-9)
    assert large["baseline_latency_ns"] == pytest.approx(16 * small["baseline_latency_ns"])
    assert long["baseline_latency_ns"] == pytest.approx(2 * small["baseline_latency_ns"])
    # 16x more OVTs: 16x the columns, but 4 OVTs fill only a quarter of an array's 128 columns, so 4x the
    # arrays and about 4x the energy; the arrays work in parallel, so the time grows far slower than the
    # CPU's and the speedup rises with the bank.
    assert large["arrays"] == 4 * small["arrays"] and large["cim_energy_pj"] > 3.5 * small["cim_energy_pj"]
    assert large["cim_latency_ns"] < 4 * small["cim_latency_ns"]
    assert large["speedup"] > 2 * small["speedup"]
    # Longer OVTs: more rows (row tiles), more energy.
    assert long["row_tiles"] >= small["row_tiles"] and long["cim_energy_pj"] > 1.5 * small["cim_energy_pj"]
    assert small["paper"]["speedup"] == 120 and small["paper"]["energy_ratio"] == 60


def test_mips_and_another_baseline():
    ssa = retrieval_cost((8, 4, 32), "fefet2-128x128")
    mips = retrieval_cost((8, 4, 32), "fefet2-128x128", scales=(1,), weights=(1.0,), baseline="jetson-orin-gpu")
    assert mips["key_dim"] == 4 * 32 and mips["baseline"]["name"] == "jetson-orin-gpu"
    assert mips["baseline_latency_ns"] == pytest.approx(2 * mips["macs"] / 204.8)  # fp16 keys on the GPU
    assert ssa["baseline"]["name"] == "jetson-orin-cpu"


@pytest.mark.parametrize("args, error, match", [
    ((OVTBank(),), InputError, "the OVT bank is empty"),
    (((4, 0, 32),), InputError, "n_virtual=0"),
    (("bank",), InputError, "must be an OVTBank"),
])
def test_bad_banks(args, error, match):
    with pytest.raises(error, match=match):
        retrieval_cost(*args)


def test_unknown_baseline():
    with pytest.raises(CostModelError, match="unknown digital baseline"):
        retrieval_cost((4, 4, 32), baseline="raspberry-pi")
