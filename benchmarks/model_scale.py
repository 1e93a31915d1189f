"""Whole LLM-shaped models (random weights) at each fidelity: compile, programming, memory and forward time.

Prints JSON, one object per model: the plain fp32 model's forward time over `--tokens` tokens, the bare
`torch.export` time of the same capture, and per fidelity the `nvcc_pt.compile` time (and its ratio to
export + programming), the programming time (`cm.program(seed)`, the first chip and a re-programming), the
programmed state's bytes and the peak GPU memory over the plain model through compile, programming and the
forward passes (both as ratios to the model's bytes), and the forward time as a ratio to the plain model's in the same run. With `--chips N`, also the time of
`nvcc_pt.montecarlo` over N chips (one forward each, several per pass where memory allows) against one chip's
programming and forward. Forward times are taken after two warm-up calls: the first tunes the kernels, the
second records the CUDA graph that the timed calls replay. `--stored-levels` stores the crossbar levels instead of regenerating them per call
(`simulator.REGENERATE_LEVELS`).

    python benchmarks/model_scale.py --device cuda --models 1b,7b --fidelities noisy,adc,bit-serial
    python benchmarks/model_scale.py --device cpu --models tiny --tokens 64     # a check that runs anywhere

Models are built directly on `--device` in float32 from `transformers.LlamaConfig`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

SHAPES = {
    # Published configs (Hugging Face model cards): hidden, MLP, layers, heads, KV heads, vocab.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, reps: int = 1) -> tuple[float, object]:
    """Seconds per call of `fn` (mean of `reps` calls, after the device settles) and its last result."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        out = fn()
    _sync(device)
    return (time.perf_counter() - start) / reps, out


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, device: torch.device, fidelities: list[str], target: str, tokens: int, reps: int,
            chips: int = 0) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    import nvcc_pt
    from nvcc_pt.capture import capture

    torch.manual_seed(0)
    built, model = _timed(lambda: LlamaForCausalLM(LlamaConfig(**SHAPES[name])).to(device).eval(), device)
    model.requires_grad_(False)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, SHAPES[name]["vocab_size"], (1, tokens), device=device)
    with torch.no_grad():
        model(ids, use_cache=False)  # warm-up
        plain_s, _ = _timed(lambda: model(ids, use_cache=False), device, reps)
    export_s, _ = _timed(lambda: capture(model, (ids,)), device)
    from nvcc_pt.targets import simulator

    row = {"model": name, "device": str(device), "target": target, "tokens": tokens,
           "regenerate_levels": simulator.REGENERATE_LEVELS.get(device.type, False),
           "params": sum(p.numel() for p in model.parameters()), "model_gb": model_bytes / 2**30,
           "build_s": built, "plain_forward_s": plain_s, "export_s": export_s, "fidelities": {}}
    _release(device)
    base = _allocated(device)
    for fidelity in fidelities:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        compile_s, cm = _timed(lambda f=fidelity: nvcc_pt.compile(model, target, example_inputs=(ids,), fidelity=f,
                                                                  seed=0), device)
        program_s, _ = _timed(lambda c=cm: c.program(0), device)
        reprogram_s, _ = _timed(lambda c=cm: c.program(1), device)
        state_bytes = sum(state.programmed_bytes() for _, state in cm.plan.states())
        with torch.no_grad():
            cm(ids)  # warm-up: the first call tunes the kernels,
            cm(ids)  # the second records the CUDA graph that later calls replay
            forward_s, _ = _timed(lambda c=cm: c(ids), device, reps)
        peak = _peak(device)  # before Monte Carlo, which stacks chips where that pays
        if chips:  # one chip as Monte Carlo runs it: programmed, then one forward; three chips, each timed
            cm.program(2)(ids)
            runs = [_timed(lambda c=cm, s=seed: c.program(s)(ids), device)[0] for seed in (3, 4, 5)]
            one_chip_s = statistics.median(runs)
            metric = lambda m: float(m(ids).logits[:, -1].float().mean())  # noqa: E731
            mc_s, _ = _timed(lambda c=cm, f=metric: nvcc_pt.montecarlo(c, f, seeds=chips, progress=False), device)
            row.setdefault("montecarlo", {})[fidelity] = {
                "chips": chips, "seconds": mc_s, "per_chip_s": mc_s / chips, "one_chip_s": one_chip_s,
                "one_chip_runs_s": runs, "over_one_chip": mc_s / one_chip_s}
        row["fidelities"][fidelity] = {
            "compile_s": compile_s, "compile_over_export_plus_program": compile_s / (export_s + program_s),
            "program_s": program_s, "reprogram_s": reprogram_s, "forward_s": forward_s,
            "forward_over_plain": forward_s / plain_s, "state_over_model": state_bytes / model_bytes,
            "peak_over_model": (peak - base) / model_bytes if device.type == "cuda" else None,
        }
        del cm
        _release(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="1b,7b", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--fidelities", default="noisy,adc,bit-serial")
    parser.add_argument("--target", default="reram-128x128")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3, help="timed forward passes per figure (after a warm-up)")
    parser.add_argument("--chips", type=int, default=0, help="also time Monte Carlo over this many chips")
    parser.add_argument("--stored-levels", action="store_true",
                        help="store the crossbar levels (simulator.REGENERATE_LEVELS['cuda'] = False)")
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in SHAPES]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(SHAPES)}")
    device = torch.device(args.device)
    if args.stored_levels:
        from nvcc_pt.targets import simulator

        simulator.REGENERATE_LEVELS["cuda"] = False
    for name in args.models.split(","):
        print(json.dumps(measure(name, device, args.fidelities.split(","), args.target, args.tokens, args.reps,
                                 args.chips)),
              flush=True)
        _release(device)


if __name__ == "__main__":
    main()
