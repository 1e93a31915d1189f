"""What mapping attention onto crossbars (`map_dynamic`) costs and does to the output, against keeping it digital.

Prints JSON: per model and target, with and without `map_dynamic`, the mapped ops, arrays, energy per
token and pipeline latency from the report, the mean relative logits error at fidelity `noisy` over
three seeds (against the float model), and with `map_dynamic` the report's `totals["dynamic"]`
(extra energy and latency per token against the digital baseline, cell writes per inference, lifetime).

    python benchmarks/map_dynamic.py [--targets reram-128x128,pcm-256x256,fefet-64x64]
"""

from __future__ import annotations

import argparse
import json

import torch

import nvcc_pt
from nvcc_pt.models import build_model


def _small_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512)).eval()


def measure(model: torch.nn.Module, ids: torch.Tensor, target: str, seeds: int = 3) -> dict:
    with torch.no_grad():
        ref = model(ids).logits
    out = {}
    for dynamic in (False, True):
        cm = nvcc_pt.compile(model, target, fidelity="noisy", policy={"map_dynamic": dynamic}, example_inputs=(ids,))
        errors = []
        for seed in range(seeds):
            with torch.no_grad():
                y = cm.program(seed)(ids)
            y = getattr(y, "logits", y)
            errors.append(((y - ref).norm() / ref.norm()).item())
        t = cm.report.totals
        row = {"mapped_ops": t["mapped_ops"], "arrays": t["arrays"], "energy_nj_per_token": t["energy_pj"] / 1e3,
               "pipeline_latency_ns": t["pipeline_latency_ns"], "noisy_rel_error": sum(errors) / len(errors)}
        if dynamic:
            row["dynamic"] = t["dynamic"]
        out["map_dynamic" if dynamic else "digital_attention"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="reram-128x128,pcm-256x256,fefet-64x64")
    args = parser.parse_args()
    models = {
        "tiny-llama (seq 8)": (build_model("builtin:tiny-llama"),
                               torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(1))),
        "llama hidden 256, 4 layers (seq 64)": (_small_llama(),
                                                torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(1))),
    }
    results = {name: {t: measure(m, ids, t) for t in args.targets.split(",")} for name, (m, ids) in models.items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
