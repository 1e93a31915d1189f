"""Sweep throughput: design points per hour, serially or on a local Dask cluster, on CPU cores or GPUs. Prints JSON.

    python benchmarks/sweep_throughput.py --workers 0                  # serial, in this process
    python benchmarks/sweep_throughput.py --workers 2 --device cpu     # local cluster, 2 single-threaded processes
    python benchmarks/sweep_throughput.py --workers 1 --device cuda    # 1 GPU worker
    python benchmarks/sweep_throughput.py --workers 2 --device cuda    # 2 GPU workers, one GPU each

The sweep: `--points` designs of the tiny Llama (adc_bits x sigma on reram-128x128 at fidelity `adc`,
ADC ranges calibrated), `--chips` programmed chips each, the built-in `relative_error` metric, plus the
float reference point. Every run starts from an empty output directory, so the wall time includes
starting the workers, building the model and capturing it once per worker: what a user waits for.
`compute_s_per_point` is the workers' own time per point (the `seconds` column) without that start.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import nvcc_pt


def grid(points: int) -> dict:
    adc = [4, 6, 8]
    sigmas = max(1, -(-points // len(adc)))
    return [{"adc_bits": a, "sigma": round(0.02 * s, 4)} for s in range(sigmas) for a in adc][:points]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="0: serial in this process; N: a local cluster of N workers "
                    "(with --device cuda, one per GPU, at most the GPUs visible)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", default="builtin:tiny-llama")
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--chips", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per corpus sequence of the metric")
    ap.add_argument("--batch", type=int, default=4, help="corpus sequences of the metric")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU workers: no worker picks a GPU up
    metric = {"name": "relative_error", "tokens": args.tokens, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        start = time.perf_counter()
        res = nvcc_pt.sweep(args.model, grid(args.points), metric, chips=args.chips, out=f"{tmp}/out",
                            fidelity="adc", calibrate=True, device=args.device, progress=False,
                            scheduler="serial" if args.workers == 0 else "local", workers=args.workers or None)
        wall = time.perf_counter() - start
    t = res.table
    designs = t[~t["reference"]]
    points = designs["point_id"].nunique()
    print(json.dumps({
        "model": args.model, "device": args.device, "workers": args.workers, "gpus_visible": gpus,
        "cpu_cores": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
        "points": points, "chips": args.chips, "rows": len(t), "wall_s": round(wall, 2),
        "points_per_hour": round(points / wall * 3600, 1),
        "chips_per_hour": round(len(designs) / wall * 3600, 1),
        "compute_s_per_point": round(float(t.groupby("point_id")["seconds"].sum().mean()), 3),
        "relative_error_range": [float(designs["metric.relative_error"].min()), float(designs["metric.relative_error"].max())],
    }, indent=1))


if __name__ == "__main__":
    main()
