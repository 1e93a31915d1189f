"""Tokens per second of `cm.generate` against transformers' own `model.generate`, in the same run.

`cm.generate` recomputes the whole prefix at every step (the plan is a prefill graph; no KV
cache), where `model.generate` keeps a KV cache, so the ratio grows with the length generated.
Prints JSON: for each fidelity, tokens/s and the ratio to HF's tokens/s, greedy decoding.

    python benchmarks/generate_speed.py [--model builtin:tiny-llama] [--new 32] [--prompt 16] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rate(fn, tokens: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return tokens * repeats / (time.perf_counter() - start)


def main() -> None:
    import nvcc_pt
    from nvcc_pt.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-llama")
    parser.add_argument("--target", default="reram-128x128")
    parser.add_argument("--new", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens per row")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fidelities", default="exact,noisy,adc")
    args = parser.parse_args()

    model = build_model(args.model, seed=0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    pad = model.generation_config.pad_token_id or model.generation_config.eos_token_id or 0
    tokens = args.batch * args.new
    # no EOS, so every run makes exactly `new` tokens per row
    hf = _rate(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                      do_sample=False, pad_token_id=pad), tokens, args.repeats)
    out = {"model": args.model, "target": args.target, "batch": args.batch, "prompt_tokens": args.prompt,
           "new_tokens": args.new, "threads": torch.get_num_threads(), "hf_generate_tokens_per_s": round(hf, 2),
           "kv_cache": {"hf": True, "nvcc_pt": False}, "fidelities": {}}
    cm = nvcc_pt.compile(model, args.target, fidelity="exact", seed=0)
    for fidelity in args.fidelities.split(","):
        run = cm if fidelity == "exact" else cm.with_fidelity(fidelity)
        rate = _rate(lambda run=run: run.generate(ids, attention_mask=mask, max_new_tokens=args.new,
                                                  min_new_tokens=args.new, progress=False), tokens, args.repeats)
        out["fidelities"][fidelity] = {"tokens_per_s": round(rate, 2), "ratio_to_hf": round(rate / hf, 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
