"""How far a read-back OVT departs from the stored one, under each device-variation model.

For each NVCiM-PT device preset and each variation model (`per-weight`, the NVCiM-PT authors' group's
model and the presets' default; `per-cell`, sigma per cell level), programs `--chips` chips and reports
the mean relative deviation `||read_back(ovt) - ovt|| / ||ovt||` of one OVT. The OVT is Gaussian, or
rows of a model's token embedding table (`--model`, how prompt tuning often initialises
it). Prints JSON; docs/devices.md quotes its figures.

    python benchmarks/ovt_noise.py --sigma 0.1 --chips 50
    python benchmarks/ovt_noise.py --model builtin:smollm2-135m
"""

from __future__ import annotations

import argparse
import json

import torch
from nvcc_pt.targets import get_target

from nvcc_pt.prompt.noise import read_back_ovt

DEVICES = ("rram1", "fefet2", "rram4", "fefet6")
VARIATIONS = ("per-weight", "per-cell")


def relative_deviation(ovt: torch.Tensor, device: str, variation: str, sigma: float, chips: int) -> float:
    """Mean over `chips` chips of `||read_back - ovt|| / ||ovt||` on `<device>-128x128` with `variation`."""
    spec = get_target(f"{device}-128x128").replace(variation=variation)
    devs = [(read_back_ovt(ovt, spec, torch.Generator().manual_seed(c), sigma=sigma) - ovt).norm() / ovt.norm()
            for c in range(chips)]
    return float(torch.stack(devs).mean())


def ovt_from(model: str | None, n_virtual: int, hidden: int, seed: int) -> tuple[torch.Tensor, str]:
    g = torch.Generator().manual_seed(seed)
    if model is None:
        return torch.randn(n_virtual, hidden, generator=g), f"Gaussian [{n_virtual}, {hidden}]"
    from nvcc_pt.models import build_model

    table = build_model(model).get_input_embeddings().weight.detach().float()
    rows = table[torch.randperm(table.shape[0], generator=g)[:n_virtual]]
    return rows, f"{n_virtual} token embeddings of {model} [{n_virtual}, {table.shape[1]}]"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--chips", type=int, default=50)
    p.add_argument("--n-virtual", type=int, default=8)
    p.add_argument("--hidden", type=int, default=576, help="SmolLM2-135M's embedding width")
    p.add_argument("--model", default=None, help="take the OVT from this model's embedding table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ovt, what = ovt_from(args.model, args.n_virtual, args.hidden, args.seed)
    table = {d: {v: round(relative_deviation(ovt, d, v, args.sigma, args.chips), 4) for v in VARIATIONS}
             for d in DEVICES}
    out = {"ovt": what, "sigma": args.sigma, "chips": args.chips,
           "max_over_rms": round(float(ovt.abs().max() / ovt.pow(2).mean().sqrt()), 3),
           "relative_deviation": table}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
