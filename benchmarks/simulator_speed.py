"""Simulator speed: each fidelity's time as a ratio to plain PyTorch measured in the same run. Prints JSON.

    python benchmarks/simulator_speed.py                 # CPU: 1024x1024 layer at batch 256, a small Llama,
                                                         # Monte Carlo one instance per pass against batched
    python benchmarks/simulator_speed.py --device cuda   # adds a 4096x4096 layer at batch 4096, and read noise
                                                         # replayed from CUDA graphs against eager calls
    python benchmarks/simulator_speed.py --threads 2 --smollm2 128   # adds the real SmolLM2-135M, bit-serial

On CPU the simulator's GEMMs run on oneDNN where torch ships it; the layer's JSON then also gives
each ratio to a oneDNN dense product (`*_ratio_to_onednn`), the simulator's overhead over the same
GEMM library. The layer runs on 128x128 arrays with 8-bit weights on 2-bit cells and 8-bit inputs:
`noisy` (ideal ADC), `adc` (8-bit DAC, one 8-bit ADC read per array column), `bit-serial`
(1-bit DAC, 8-bit ADC every cycle; two's-complement inputs take 8 cycles, two-phase 14), the first three on
differential weights, and `bit-serial-preset` the default preset `reram-128x128` as it is (offset weights with
ISAAC's flipped columns, two-phase inputs, sigma 0.02), also with two's-complement inputs.
Peers on CPU, for orientation: CrossSim 3.2 ~9x (ideal-ADC balanced core) and ~635x (ISAAC-like
bit-sliced core, ADC per input bit); aihwkit 1.2 ~32-51x (figures from the issue that set these goals).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from nvcc_pt.targets import simulator

import nvcc_pt

CASES = {
    "noisy": ("noisy", {"dac_bits": 8}),
    "adc": ("adc", {"dac_bits": 8}),
    "bit-serial": ("bit-serial", {"dac_bits": 1, "extra": (("input_encoding", "twos-complement"),)}),
    "bit-serial-two-phase": ("bit-serial", {"dac_bits": 1}),
    # the default preset as a user gets it: offset weights with ISAAC's flipped columns, two-phase inputs (14 cycles)
    "bit-serial-preset": ("bit-serial", None),
    "bit-serial-preset-twos-complement": ("bit-serial", {"extra": (("input_encoding", "twos-complement"),)}, True),
}


def paired(fn, ref, device: torch.device, repeat: int) -> tuple[float, float]:
    """Best seconds per call of `fn` and of `ref`, timed alternately (after one warm-up each) so both see the
    same machine load."""
    def once(f) -> float:
        start = time.perf_counter()
        f()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once(fn), once(ref)
    pairs = [(once(fn), once(ref)) for _ in range(repeat)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def timed(fn, plain, device: torch.device, repeat: int) -> tuple[float, float]:
    """`paired` for inference: no autograd."""
    with torch.no_grad():
        return paired(fn, plain, device, repeat)


def case_spec(case: tuple):
    """The target of a `CASES` entry: `spec(**changes)`, or the default preset itself (None), or the default preset
    with changes (a third element True)."""
    changes = case[1]
    if changes is None:
        return nvcc_pt.get_target("reram-128x128")
    if len(case) > 2:
        return nvcc_pt.get_target("reram-128x128").replace(**changes)
    return spec(**changes)


def spec(**changes):
    # the configuration the README's figures were measured on: differential weights, two-phase inputs and a
    # power-of-two full-scale step (the `exact` mode on differential columns); the ISAAC preset's flipped
    # offset columns read half the columns plus one flip pass per call
    base = nvcc_pt.get_target("reram-128x128").replace(weight_bits=8, cell_bits=2, input_bits=8, adc_bits=8, sigma=0.02,
                                                       sign="differential", adc_range="exact",
                                                       extra=(("input_encoding", "two-phase"),))
    return base.replace(**changes)


def bench_layer(k: int, n: int, batch: int, device: torch.device, repeat: int) -> dict:
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n).to(device)
    x = torch.randn(batch, k, device=device)
    w, b = layer.weight.detach(), layer.bias.detach()
    out = {"shape": f"{k}x{n}", "batch": batch}
    for name, case in CASES.items():
        cm = nvcc_pt.compile(layer.cpu(), target=case_spec(case), example_inputs=(x.cpu(),), fidelity=case[0])
        cm.to(device)
        t, plain = timed(lambda cm=cm: cm(x), lambda: F.linear(x, w, b), device, repeat)
        out["plain_ms"] = min(out.get("plain_ms", math.inf), plain * 1e3)
        out[f"{name}_ms"] = t * 1e3
        out[f"{name}_ratio"] = t / plain
    if device.type == "cpu" and simulator._ONEDNN:
        # The simulator's CPU GEMMs run on oneDNN; the same dense product there separates the simulator's own
        # overhead from the GEMM library's speed over the BLAS behind F.linear.
        dense, plain = timed(lambda: simulator._linear(x, w, b), lambda: F.linear(x, w, b), device, repeat)
        out["onednn_plain_ms"] = dense * 1e3
        for name in CASES:
            out[f"{name}_ratio_to_onednn"] = out[f"{name}_ms"] / out["onednn_plain_ms"]
    return out


def bench_llama(device: torch.device, repeat: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=2000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (4, 64))
    out = {"model": "llama h256 i688 L4 vocab2000", "batch": 4, "seq": 64}
    dev_ids = ids.to(device)
    for name, case in CASES.items():
        cm = nvcc_pt.compile(model.cpu(), target=case_spec(case), fidelity=case[0]).to(device)
        model.to(device)
        t, plain = timed(lambda cm=cm: cm(dev_ids), lambda: model(dev_ids, use_cache=False).logits, device, repeat)
        out["plain_ms"] = min(out.get("plain_ms", math.inf), plain * 1e3)
        out[f"{name}_ms"] = t * 1e3
        out[f"{name}_ratio"] = t / plain
    return out


def bench_montecarlo(device: torch.device, seeds: int) -> dict:
    """Seconds per programmed instance of the small Llama at `noisy`, one instance per pass against 8 per pass.

    The metric is a loss over 8 batches of 4 x 64 tokens; variation is drawn where the model runs.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=2000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    batches = torch.randint(0, config.vocab_size, (8, 4, 64), device=device)
    cm = nvcc_pt.compile(LlamaForCausalLM(config).eval(), target=spec(dac_bits=8), fidelity="noisy").to(device)

    def loss(m):
        total = 0.0
        for ids in batches:
            logits = m(ids).logits
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()
        return total / len(batches)

    out = {"model": "llama h256 i688 L4 vocab2000, noisy", "metric": "loss over 8 batches of 4 x 64",
           "seeds": seeds, "draw_on": "device"}
    for name, per_pass in (("one_per_pass", 1), ("eight_per_pass", 8)):
        run = dict(progress=False, instances_per_pass=per_pass, draw_on="device")
        nvcc_pt.montecarlo(cm, loss, seeds=per_pass, **run)  # warm-up
        start = time.perf_counter()
        nvcc_pt.montecarlo(cm, loss, seeds=seeds, **run)
        out[f"{name}_s_per_instance"] = (time.perf_counter() - start) / seeds
    out["speedup"] = out["one_per_pass_s_per_instance"] / out["eight_per_pass_s_per_instance"]
    return out


def bench_smollm2(tokens: int) -> dict:
    """The real SmolLM2-135M (`nvcc_pt.models.load_smollm2`) at `bit-serial` on the default preset: seconds for one
    forward of 1 x `tokens` tokens of WordNet glosses, against the plain model in the same run."""
    from nvcc_pt.models import load_smollm2
    from nvcc_pt.text import wordnet_glosses

    model, tok = load_smollm2()
    ids = tok("\n".join(g for _, g in wordnet_glosses(limit=200)), return_tensors="pt").input_ids[:, :tokens]
    start = time.perf_counter()
    cm = nvcc_pt.compile(model, target="reram-128x128", fidelity="bit-serial", seed=0)
    out = {"model": "SmolLM2-135M", "target": "reram-128x128", "tokens": ids.shape[1],
           "compile_s": time.perf_counter() - start}
    with torch.no_grad():
        out["bit_serial_s"], out["plain_s"] = paired(lambda: cm(ids), lambda: model(ids, use_cache=False),
                                                     torch.device("cpu"), 1)
    out["ratio"] = out["bit_serial_s"] / out["plain_s"]
    return out


def bench_noise_graphs(device: torch.device, repeat: int, target: str, policy: dict | None = None) -> dict:
    """Milliseconds per call of the built-in tiny Llama, 1 x 16 tokens, replayed from CUDA graphs against eager
    calls, on a target whose noise is drawn on every call: `pcm-256x256` (read noise), or attention mapped with
    `{"map_dynamic": True}` (write noise). A replay draws each call's noise on the GPU."""
    from nvcc_pt.models import build_model

    ids = torch.randint(0, 101, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    out = {"model": "builtin:tiny-llama", "target": target, "policy": policy, "tokens": 16}
    for fidelity in ("noisy", "adc"):
        cm = nvcc_pt.compile(build_model("builtin:tiny-llama"), target, fidelity=fidelity, seed=1,
                             policy=policy).to(device)
        with torch.no_grad():
            for graphs in (False, True):
                cm.cuda_graphs = graphs
                for _ in range(3):  # the first call runs eagerly, the second records
                    cm(ids)
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                for _ in range(5 * repeat):
                    cm(ids)
                torch.cuda.synchronize(device)
                out[f"{fidelity}_{'replayed' if graphs else 'eager'}_ms"] = (time.perf_counter() - start) / (5 * repeat) * 1e3
        out[f"{fidelity}_speedup"] = out[f"{fidelity}_eager_ms"] / out[f"{fidelity}_replayed_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-llama", action="store_true")
    parser.add_argument("--seeds", type=int, default=16, help="Monte Carlo instances for the batching benchmark")
    parser.add_argument("--smollm2", type=int, default=0, metavar="TOKENS",
                        help="also time the real SmolLM2-135M at bit-serial on 1 x TOKENS tokens (CPU; e.g. 128)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "layers": [bench_layer(1024, 1024, 256, device, args.repeat)]}
    if device.type == "cuda":
        results["layers"].append(bench_layer(4096, 4096, 4096, device, args.repeat))
        results["read_noise_graphs"] = bench_noise_graphs(device, args.repeat, "pcm-256x256")
        results["write_noise_graphs"] = bench_noise_graphs(device, args.repeat, "reram-128x128", {"map_dynamic": True})
    print(json.dumps(results["layers"]), file=sys.stderr, flush=True)  # partial results, should a later step fail
    if args.smollm2:
        results["smollm2"] = bench_smollm2(args.smollm2)
        print(json.dumps(results["smollm2"]), file=sys.stderr, flush=True)
    if not args.no_llama:
        try:
            results["llama"] = bench_llama(device, args.repeat)
            results["montecarlo"] = bench_montecarlo(device, args.seeds)
        except ImportError as e:
            results["llama"] = f"skipped: {e}"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
