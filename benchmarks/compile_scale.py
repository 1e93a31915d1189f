"""Compile LLM-shaped models on the meta device (no weights materialized) to a full mapping report.

Prints JSON: per model, the bare `torch.export` time of the same capture, the whole
`nvcc_pt.compile` time, their ratio (goal <= 1.5 for 7B shapes), and peak resident memory
(goal < 3 GB). Each measurement runs in a fresh subprocess so peak memory is its own.

    python benchmarks/compile_scale.py [--models llama-3.2-1b,llama-2-7b,mistral-7b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SHAPES = {
    # Published configs (Hugging Face model cards): hidden, MLP, layers, heads, KV heads, vocab.
    "llama-3.2-1b": dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-2-7b": dict(family="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "mistral-7b": dict(family="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=None),
}

CHILD = r"""
import json, resource, sys, time, torch
shape = json.loads(sys.argv[1]); mode = sys.argv[2]
family = shape.pop("family")
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig
cfg = (LlamaConfig if family == "llama" else MistralConfig)(**shape)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(cfg)
ids = torch.zeros((2, 16), dtype=torch.long, device="meta")
t0 = time.perf_counter()
if mode == "export":
    from nvcc_pt.capture import capture
    ep, _ = capture(model, (ids,))
    extra = {}
else:
    import nvcc_pt
    cm = nvcc_pt.compile(model, "reram-128x128", example_inputs=(ids,), fidelity="noisy")
    t = cm.report.totals
    extra = {k: t[k] for k in ("arrays", "chips", "mapped_ops", "mapped_params", "model_params")}
seconds = time.perf_counter() - t0
rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "peak_rss_gb": rss_gb, **extra}))
"""


def measure(shape: dict, mode: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape), mode], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=3, help="best of N fresh processes per measurement")
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        # Alternate the two so machine load drifts affect both alike; keep each one's best run.
        runs = [(measure(SHAPES[name], "export"), measure(SHAPES[name], "compile")) for _ in range(args.repeats)]
        export = min((r[0] for r in runs), key=lambda r: r["seconds"])
        full = min((r[1] for r in runs), key=lambda r: r["seconds"])
        results[name] = {
            "export_s": round(export["seconds"], 2), "compile_s": round(full["seconds"], 2),
            "compile_over_export": round(full["seconds"] / export["seconds"], 3),
            "export_peak_rss_gb": round(export["peak_rss_gb"], 3), "compile_peak_rss_gb": round(full["peak_rss_gb"], 3),
            **{k: v for k, v in full.items() if k not in ("seconds", "peak_rss_gb")},
        }
        print(json.dumps({name: results[name]}), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
