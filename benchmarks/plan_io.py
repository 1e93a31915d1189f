"""Save and load times of a plan directory, against torch.export's own archive of the same program.

Prints JSON: the median of `--repeat` runs of `cm.save` and `nvcc_pt.load` (digests checked, records, graph
and tensors cross-checked, lowering re-applied), the file sizes, and for reference the time
`torch.export.save` / `torch.export.load` take for the captured program alone (the step the earlier
`program.pt2` format added on top of the rest).

    python benchmarks/plan_io.py [--model builtin:tiny-llama] [--target reram-128x128] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import nvcc_pt
from nvcc_pt.models import build_model


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:tiny-llama")
    p.add_argument("--target", default="reram-128x128")
    p.add_argument("--fidelity", default="noisy")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    cm = nvcc_pt.compile(build_model(args.model), args.target, fidelity=args.fidelity, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        plan, archive = Path(tmp) / "plan", Path(tmp) / "program.pt2"
        save_ms = _median_ms(lambda: cm.save(plan), args.repeat)
        load_ms = _median_ms(lambda: nvcc_pt.load(plan), args.repeat)
        export_save_ms = _median_ms(lambda: torch.export.save(cm.plan.exported, str(archive)), args.repeat)
        export_load_ms = _median_ms(lambda: torch.export.load(str(archive)), args.repeat)
        print(json.dumps({
            "model": args.model, "target": args.target, "fidelity": args.fidelity, "torch": torch.__version__,
            "save_ms": save_ms, "load_ms": load_ms,
            "files_bytes": {f.name: f.stat().st_size for f in sorted(plan.iterdir())},
            "torch_export_save_ms": export_save_ms, "torch_export_load_ms": export_load_ms,
            "pt2_bytes": archive.stat().st_size,
        }, indent=1))


if __name__ == "__main__":
    main()
