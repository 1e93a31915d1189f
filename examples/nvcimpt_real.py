"""NVCiM-PT on the real SmolLM2-135M-Instruct and real text (WordNet glosses), against its baselines.

The reduced run (the default here) takes one device (rram1), one training seed and two chips per
point, over sigma 0 (the control), 0.025, ..., 0.125: about 4 minutes on two quiet CPU cores (11 on two
shared ones with `--threads 1`) after the one-time model conversion. `--full` runs the whole evaluation (four
devices, ten chips, three seeds; about 5.5 hours on two CPU cores; as six parallel shards, 190 s on two H200s); give it `--device cuda`
on a GPU. Both resume: points already in `<out>/points.jsonl` are skipped.

    python examples/nvcimpt_real.py                           # reduced, results/nvcimpt-reduced/
    python examples/nvcimpt_real.py --full --device cuda      # full, results/nvcimpt/
    python examples/nvcimpt_real.py --model builtin:tiny-llama --steps 2 --chips 2 --out /tmp/x   # smoke test

Needs `apt-get install wordnet-base` (and `fortunes` for `--task fortunes`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from nvcc_pt.cli import main as nvcc_pt_main

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full evaluation (4 devices, 10 chips, 3 seeds)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu")
    args, rest = ap.parse_known_args(argv)
    out = args.out or ("results/nvcimpt" if args.full else "results/nvcimpt-reduced")
    cmd = ["nvcimpt", "study", "--out", out, "--device", args.device, *rest]
    if not args.full:
        cmd.append("--reduced")
    return nvcc_pt_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
