"""`nvcc-pt nvcimpt study`: NVCiM-PT and its baselines on a real LLM and real text, resumable, with a report.

    nvcc-pt nvcimpt study --model builtin:smollm2-135m --task wordnet --out results/nvcimpt --device cuda

Writes into `--out`: `data/` (the generated LaMP-format task), `ovts/` (trained OVTs per seed),
`points.jsonl` (one line per measured point; a re-run skips them), `config.json`, and the report:
`results.json`, `table.md`, `plot.png`, `plot.svg`, `command.txt`. `--reduced` sets the small
configuration of the two-core demonstration (one device, one seed, two chips).
"""

from __future__ import annotations

import time

from nvcc_pt import validate as check

REDUCED = {"devices": "rram1", "seeds": (0,), "chips": 2, "users": 2, "queries_per_user": 12, "buffers": 1}
"""The reduced run for two CPU cores: one device, one seed, two chips, two users with one buffer each (trained as
the full run trains)."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


def _seeds(text: str) -> tuple[int, ...]:
    return tuple(check.arg_seed(t) for t in text.split(","))


def config_from_args(args):
    """The `StudyConfig` of parsed arguments; `--reduced` sets `REDUCED` where the option was left at its default."""
    from nvcc_pt.prompt.study import StudyConfig

    if args.reduced:
        for k, v in REDUCED.items():
            if getattr(args, k) == STUDY_DEFAULTS[k]:
                setattr(args, k, v)
    return StudyConfig(model=args.model, task=args.task, devices=_names(args.devices), sigmas=args.sigmas,
                       methods=_names(args.methods), chips=args.chips, seeds=args.seeds, users=args.users,
                       queries_per_user=args.queries_per_user, buffers=args.buffers, buffer_size=args.buffer_size,
                       clusters=args.clusters, per_cluster=args.per_cluster, n_virtual=args.n_virtual,
                       steps=args.steps, lr=args.lr, batch_size=args.batch_size, init=args.init,
                       train_sigma=args.train_sigma,
                       crossbar=args.crossbar, data_seed=args.data_seed, query=args.query, embedder=args.embedder,
                       kpp=args.kpp)


def run(args) -> int:
    """Run the study of the parsed `args` and print its table and criteria."""
    from dataclasses import asdict

    from nvcc_pt.prompt.study import command_for, run_study
    from nvcc_pt.prompt.studyreport import write_report

    cfg = config_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    points = run_study(cfg, args.out, device=args.device, progress=not args.no_progress, prepare_only=args.prepare_only)
    if args.prepare_only:
        return 0
    command = command_for(cfg, args.out, args.device) + (f" --threads {args.threads}" if args.threads else "")

    table = write_report(points, asdict(cfg), args.out, command=command, wall_s=time.time() - t0)
    print(table)
    print(f"wrote {args.out}/results.json, table.md, plot.png, plot.svg and command.txt in {time.time() - t0:.0f} s")
    return 0


STUDY_DEFAULTS = {"devices": "rram1,fefet2,rram4,fefet6", "seeds": (0, 1, 2), "chips": 10, "users": 6,
                  "queries_per_user": 16, "buffers": 2, "steps": 40, "batch_size": 4, "init": "labels"}


def add_study_parser(sub) -> None:
    """Add `study` to the `nvcc-pt nvcimpt` subcommands."""
    from nvcc_pt.prompt.backbone import OVT_INITS
    from nvcc_pt.prompt.methods import METHODS

    d = STUDY_DEFAULTS
    s = sub.add_parser("study", help="NVCiM-PT vs its baselines on a real LLM and real text (resumable, with report)")
    s.add_argument("--model", default="builtin:smollm2-135m",
                   help="builtin:smollm2-135m, builtin:tiny-* or a local Hugging Face checkpoint directory")
    s.add_argument("--task", choices=("wordnet", "fortunes"), default="wordnet")
    s.add_argument("--devices", default=d["devices"])
    s.add_argument("--sigmas", type=check.arg_reals, default=(0.0, 0.025, 0.05, 0.075, 0.1, 0.125))
    s.add_argument("--methods", default=",".join(METHODS))
    s.add_argument("--chips", type=check.arg_positive, default=d["chips"], help="programmed chips per point")
    s.add_argument("--seeds", type=_seeds, default=d["seeds"], help="training seeds, comma-separated")
    s.add_argument("--users", type=check.arg_positive, default=d["users"])
    s.add_argument("--queries-per-user", type=check.arg_positive, default=d["queries_per_user"])
    s.add_argument("--buffers", type=check.arg_positive, default=d["buffers"])
    s.add_argument("--buffer-size", type=check.arg_positive, default=25)
    s.add_argument("--clusters", type=check.arg_positive, default=2)
    s.add_argument("--per-cluster", type=check.arg_positive, default=12, help="training samples per domain OVT")
    s.add_argument("--n-virtual", type=check.arg_positive, default=8)
    s.add_argument("--steps", type=check.arg_count, default=d["steps"], help="batched prompt-tuning steps per OVT set")
    s.add_argument("--lr", type=check.arg_positive_real, default=0.03, help="Adam step relative to the embeddings' RMS")
    s.add_argument("--batch-size", type=check.arg_positive, default=d["batch_size"], help="samples per OVT per step")
    s.add_argument("--init", choices=OVT_INITS, default=d["init"],
                   help="where each OVT starts: its samples' label words (labels) or their pooled input embeddings")
    s.add_argument("--train-sigma", type=check.arg_real, default=0.1)
    s.add_argument("--crossbar", default="128x128")
    s.add_argument("--data-seed", type=check.arg_seed, default=0)
    s.add_argument("--kpp", type=check.arg_positive_real, default=10.0, help="percentile k of the KPP")
    s.add_argument("--query", choices=("sif", "mean", "tokens"), default="sif",
                   help="search query: the input's SIF embedding (weighted by inverse token frequency, common direction "
                   "removed), its mean token embedding, or its token embeddings")
    s.add_argument("--embedder", choices=("minilm", "lm"), default="minilm",
                   help="sentence embedder of representative selection: all-MiniLM-L6-v2, or the LM's mean input embedding")
    s.add_argument("--device", default="cpu", help="torch device of the LM: cpu or cuda")
    s.add_argument("--threads", type=check.arg_positive, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is much faster on cores that other jobs share)")
    s.add_argument("--reduced", action="store_true", help="the small two-core configuration (one device, one seed)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--prepare-only", action="store_true",
                   help="write the data and the representative selection into --out and stop (no LM): for a GPU "
                   "machine without wordnet-base or the sentence embedder, prepare here and carry the folder")
    s.add_argument("--out", default="results/nvcimpt")
    s.set_defaults(func=run)
