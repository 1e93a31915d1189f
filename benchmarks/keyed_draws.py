"""The keyed generator's speed (`targets/philox.py`): 4M normals and 4M uniforms, compiled (Numba on the CPU, Triton
on a GPU) against the same draws in torch integer ops and against `torch.randn`/`torch.rand`, in one run. Prints JSON.

    python benchmarks/keyed_draws.py                  # CPU
    python benchmarks/keyed_draws.py --device cuda    # GPU (the torch-op reference is skipped there)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from nvcc_pt.targets import philox


def best(fn, device: torch.device, repeat: int) -> float:
    """Best seconds of `repeat` calls of `fn`, after one warm-up (which compiles the kernel)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--count", type=int, default=4_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device, n = torch.device(args.device), args.count
    seed = philox.ChipKey(0, 0).stream_seed(philox.VARIATION)
    out = {"device": str(device), "threads": torch.get_num_threads(), "count": n,
           "compiled": philox._kernel(device) is not None}
    for name, keyed, plain in (("normal", philox.randn, torch.randn), ("uniform", philox.rand, torch.rand)):
        out[f"{name}_keyed_s"] = best(lambda f=keyed: f(seed, n, device), device, args.repeat)
        out[f"{name}_torch_s"] = best(lambda f=plain: f(n, device=device), device, args.repeat)
        out[f"{name}_keyed_over_torch"] = out[f"{name}_keyed_s"] / out[f"{name}_torch_s"]
        if device.type == "cpu":
            philox.COMPILED_CPU = False
            out[f"{name}_torch_ops_s"] = best(lambda f=keyed: f(seed, n, device), device, args.repeat)
            philox.COMPILED_CPU = True
            out[f"{name}_torch_ops_over_keyed"] = out[f"{name}_torch_ops_s"] / out[f"{name}_keyed_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
