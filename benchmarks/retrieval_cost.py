"""OVT-bank retrieval on the NVCiM target against a Jetson Orin CPU, beside NVCiM-PT's claim (120x, 60x).

Sweeps bank sizes (number of OVTs, hidden width of the LLM) and targets, costs one query's scaled
search (`nvcc_pt.prompt.cost.retrieval_cost`) on each, and names the configuration closest to the
paper's figures (Qin et al., DATE 2025: retrieval up to 120x faster and 60x more energy-efficient than
the Jetson Orin CPU), by the sum of the absolute log-ratios of speedup and energy ratio. Prints JSON.

    python benchmarks/retrieval_cost.py                       # the default sweep (a few minutes on 2 cores)
    python benchmarks/retrieval_cost.py --num-ovts 16,256 --hidden 2048 --targets rram1-128x128
"""

from __future__ import annotations

import argparse
import json
import math

from nvcc_pt.targets import get_target

from nvcc_pt.prompt.cost import PAPER_CLAIM, retrieval_cost

TARGETS = {
    "rram1-128x128": lambda: get_target("rram1-128x128"),
    "rram1-128x128-dac1": lambda: get_target("rram1-128x128").replace(name="rram1-128x128-dac1", dac_bits=1),
    "reram-128x128": lambda: get_target("reram-128x128"),
    "fefet-64x64": lambda: get_target("fefet-64x64"),
}
"""The NVCiM-PT preset (NeuroSim array figures, ISAAC periphery at 22 nm, 8-bit DAC), the same with 1-bit
bit-serial inputs, ISAAC itself (32 nm, 1-bit DAC, 100 ns reads) and 2-bit FeFET 64x64 arrays."""


def distance(row: dict) -> float:
    """How far a row's ratios are from the paper's, in log space."""
    return abs(math.log(row["speedup"] / PAPER_CLAIM["speedup"])) + abs(math.log(row["energy_ratio"] / PAPER_CLAIM["energy_ratio"]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-ovts", default="16,64,256,640,1024", help="bank sizes")
    p.add_argument("--hidden", default="576,2048", help="OVT widths: SmolLM2-135M 576, Gemma-2B 2048")
    p.add_argument("--n-virtual", type=int, default=8)
    p.add_argument("--targets", default=",".join(TARGETS))
    args = p.parse_args(argv)
    rows = []
    for name in args.targets.split(","):
        spec = TARGETS[name]() if name in TARGETS else get_target(name)
        for hidden in (int(h) for h in args.hidden.split(",")):
            for num in (int(n) for n in args.num_ovts.split(",")):
                r = retrieval_cost((num, args.n_virtual, hidden), spec)
                rows.append({"target": name, "num_ovts": num, "n_virtual": args.n_virtual, "hidden": hidden,
                             "key_dim": r["key_dim"], "arrays": r["arrays"],
                             "cim_latency_ns": r["cim_latency_ns"], "cim_energy_pj": r["cim_energy_pj"],
                             "cpu_latency_ns": r["baseline_latency_ns"], "cpu_energy_pj": r["baseline_energy_pj"],
                             "speedup": round(r["speedup"], 2), "energy_ratio": round(r["energy_ratio"], 2),
                             "cim_energy_breakdown_pj": r["cim_energy_breakdown_pj"]})
                baseline = r["baseline"]
    closest = min(rows, key=distance)
    out = {"paper": PAPER_CLAIM, "baseline": baseline, "rows": rows,
           "closest": dict(closest, log_distance=round(distance(closest), 3))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
