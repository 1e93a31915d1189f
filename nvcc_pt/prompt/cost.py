"""What one retrieval from an OVT bank costs on the NVCiM target, against a digital processor doing the same search.

The scaled search (`ssa.py`) is one weight-stationary product `query_vec @ K^T`, `K` `[num_ovts, D]`
with `D = key_dim(n_virtual, hidden, scales)`. `retrieval_cost` compiles exactly that product
(`nn.Linear(D, num_ovts)`, the bank's `search` layer) onto the target and reads its energy and
latency per query from the project's cost model (`passes/estimate_cost.py`, figures in
`targets/costs.py`). The same product on the digital baseline (by default the Jetson AGX Orin's
CPU: 12 Cortex-A78AE cores at 2.2 GHz, 8 fp32 MACs per core per cycle, 211 GMAC/s peak, 204.8 GB/s
LPDDR5, 15 W module mode; NVIDIA data sheet DS-10662-001) is costed by the roofline: the fp32 keys
stream from memory once per query (a bank of a few MB does not stay in the CPU's caches between
queries of a running LLM), so it is memory-bound, at the module's power the whole time.

NVCiM-PT (Qin et al., DATE 2025) reports its retrieval up to 120x faster and 60x more
energy-efficient than a Jetson Orin CPU; `benchmarks/retrieval_cost.py` sweeps the configurations
and names the one closest to that claim.

Example:
    >>> cost = retrieval_cost(bank, target="rram1-128x128")
    >>> cost["speedup"], cost["energy_ratio"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.prompt.bank import OVTBank
from nvcc_pt.prompt.ssa import SSA_SCALES, SSA_WEIGHTS, check_scales, key_dim

PAPER_CLAIM = {"speedup": 120.0, "energy_ratio": 60.0, "against": "Jetson Orin CPU",
               "source": "Qin et al., NVCiM-PT, DATE 2025 (retrieval: up to 120x faster, 60x less energy)"}


def search_shape(bank: OVTBank | Sequence[int], scales: Sequence[int] = SSA_SCALES) -> tuple[int, int, int, int]:
    """`(num_ovts, n_virtual, hidden, D)` of a bank's search, from the bank or from `(num_ovts, n_virtual, hidden)`."""
    if isinstance(bank, OVTBank):
        if len(bank) == 0:
            raise InputError("retrieval_cost: the OVT bank is empty; add OVTs first")
        num, (n_virtual, hidden) = len(bank), bank.shape
    elif isinstance(bank, Sequence) and not isinstance(bank, (str, bytes)) and len(bank) == 3:
        num, n_virtual, hidden = (check.integer(n, v, lo=1, hi=2**24, where="retrieval_cost")
                                  for n, v in zip(("num_ovts", "n_virtual", "hidden"), bank))
    else:
        raise InputError(f"retrieval_cost: bank={bank!r:.80} must be an OVTBank or (num_ovts, n_virtual, hidden)")
    return num, n_virtual, hidden, key_dim(n_virtual, hidden, tuple(scales))


def retrieval_cost(bank: OVTBank | Sequence[int], target: Any = "rram1-128x128", *,
                   scales: Sequence[int] = SSA_SCALES, weights: Sequence[float] = SSA_WEIGHTS,
                   baseline: str | None = None) -> dict[str, Any]:
    """Energy (pJ) and latency (ns) of one query's search over `bank` on `target` and on the digital baseline.

    `bank` is an `OVTBank` or its shape `(num_ovts, n_virtual, hidden)` (the cost depends on the shape only).
    `scales=(1,), weights=(1.0,)` costs plain MIPS. `baseline` names a `targets.costs.BASELINES` entry
    (default: the target's, the Jetson Orin CPU). Returns a JSON-ready dict: the configuration, both
    costs, `speedup` and `energy_ratio` (baseline over CiM) and the paper's claim beside them.

    Example:
        >>> retrieval_cost((16, 8, 2048), "fefet2-128x128")["speedup"]
    """
    import nvcc_pt
    from nvcc_pt.passes.estimate_cost import compare_with_baseline
    from nvcc_pt.targets import get_target
    from nvcc_pt.targets.costs import costs_for, get_baseline

    scales, _ = check_scales(scales, weights)
    num, n_virtual, hidden, dim = search_shape(bank, scales)
    spec = get_target(target)
    if baseline is not None:
        get_baseline(baseline)  # names the choices when unknown
        spec = spec.replace(costs=costs_for(spec).replace(digital_baseline=baseline))
    # The weights' values do not enter the cost: a zero layer of the search's shape is enough.
    layer = nn.Linear(dim, num, bias=False).requires_grad_(False)
    layer.weight.zero_()
    cm = nvcc_pt.compile(layer, spec, example_inputs=(torch.zeros(1, dim),), fidelity="exact")
    cmp = compare_with_baseline(cm.report)
    op = next(o for o in cm.report.to_dict()["ops"] if o["mapped"])
    base = get_baseline(costs_for(spec).digital_baseline)
    return {
        "target": spec.name, "variation": spec.device.variation,
        "num_ovts": num, "n_virtual": n_virtual, "hidden": hidden, "scales": list(scales), "key_dim": dim,
        "macs": cmp["macs"], "arrays": op["arrays"], "row_tiles": op["row_tiles"], "col_tiles": op["col_tiles"],
        "cim_energy_pj": cmp["cim_energy_pj"], "cim_latency_ns": cmp["cim_latency_ns"],
        "cim_energy_breakdown_pj": op["energy_breakdown_pj"],
        "baseline": base.to_dict(), "baseline_energy_pj": cmp["baseline_energy_pj"],
        "baseline_latency_ns": cmp["baseline_latency_ns"],
        "speedup": cmp["speedup"], "energy_ratio": cmp["energy_ratio"],
        "paper": PAPER_CLAIM,
    }
