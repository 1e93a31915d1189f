"""Which prompt tuning works on the NVCiM-PT study's task: clean accuracy of the representative OVTs against no prompt.

For each point of a grid of (init, lr, steps, n_virtual, per_cluster), trains the clean (plain) representative
OVTs of the study's users exactly as `nvcc-pt nvcimpt study` does (`Study.banks`' training call) and scores the
users' queries three ways, all without device variation:

- `mips`: the OVT that the compiled bank retrieves by MIPS at sigma 0 (`rep-pt-mips` at sigma 0 in the study),
  with its `retrieval` accuracy (the share of queries given an OVT of their own domain);
- `oracle`: the user's newest OVT of the query's own domain (what the OVT can do when retrieval is right);
- `train`: each OVT on its own training samples (how far it fits them).

beside `no_prompt`, the frozen LM alone. Prints one JSON document; progress goes to stderr.

The study folder (`--study`) holds the task (`data/`) and the representative selection (`selection/`, written by
`nvcc-pt nvcimpt study --prepare-only`, or by this script where the sentence embedder is installed), so a GPU host
needs neither WordNet nor the embedder for the `per_cluster` values that were prepared.

    python benchmarks/pt_config_search.py --study results/nvcimpt --device cuda          # the full grid
    python benchmarks/pt_config_search.py --users 0 --inits labels,samples --lrs 0.03 \\
        --steps 20 --n-virtual 8 --threads 1                                             # a reduced grid on a CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def _list(kind):
    return lambda text: tuple(kind(t) for t in text.split(",") if t)


def oracle_picks(study, bank) -> list[int]:
    """Per query, the index in `bank` of its user's newest OVT that holds the query's domain (else the user's first)."""
    picks = []
    for u, dom in zip(study.quser.tolist(), study.qdomain):
        own = [i for i, k in enumerate(bank.keys) if bank.meta[k]["user"] == u]
        match = [i for i in own if dom in bank.meta[bank.keys[i]]["domains"]]
        picks.append((match or own)[-1 if match else 0])
    return picks


def keep_users(study, users):
    """`study` with the queries and OVT groups of `users` only (None: all); the search query stays fitted on all."""
    import torch

    if users is None:
        return study
    keep = [i for i, u in enumerate(study.quser.tolist()) if u in users]
    for name in ("texts", "gold", "qdomain", "qembeds"):
        setattr(study, name, [getattr(study, name)[i] for i in keep])
    study.quser = study.quser[torch.tensor(keep)]
    study.groups = {k: [(u, g) for u, g in v if u in users] for k, v in study.groups.items()}
    study.__dict__.pop("_no_prompt", None)
    return study


def measure(study, cfg, seed: int = 0) -> dict:
    """Train `cfg`'s plain representative OVTs on `study`'s users and score them (see the module docstring)."""
    import torch

    from nvcc_pt.prompt.bank import OVTBank
    from nvcc_pt.prompt.study import _domains_of

    bb, groups = study.bb, study.groups["representative"]
    samples = [study._samples(g) for _, g in groups]
    t0 = time.time()
    ovts = bb.train_ovts(samples, n_virtual=cfg.n_virtual, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                         init=cfg.init, seed=seed)
    train_s = time.time() - t0
    bank = OVTBank()
    for i, ((u, g), ovt) in enumerate(zip(groups, ovts)):
        bank.add(f"u{u}/{i}", ovt, {"user": u, "domains": _domains_of(g)})
    point = next(p for p in study.evaluate(seed, cfg.devices[0], 0.0, {"representative/plain": bank})
                 if p["method"] == "rep-pt-mips")
    n = len(study.gold)
    preds = bb.classify(study.texts, ovts[torch.tensor(oracle_picks(study, bank))])
    fit = [p == y for s, ovt in zip(samples, ovts)
           for p, y in zip(bb.classify([t for t, _ in s], ovt[None].expand(len(s), -1, -1)), [y for _, y in s])]
    return {"init": cfg.init, "lr": cfg.lr, "steps": cfg.steps, "n_virtual": cfg.n_virtual,
            "per_cluster": cfg.per_cluster, "batch_size": cfg.batch_size, "ovts": len(groups),
            "mips": round(point["values"][0], 4), "retrieval": round(point["retrieval"][0], 4),
            "oracle": round(sum(p == g for p, g in zip(preds, study.gold)) / n, 4),
            "train": round(sum(fit) / len(fit), 4), "train_s": round(train_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="results/nvcimpt", help="a study folder with data/ (and selection/)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--users", type=_list(int), default=None, help="user indices to keep (default: all)")
    ap.add_argument("--inits", type=_list(str), default=("labels", "samples"))
    ap.add_argument("--lrs", type=_list(float), default=(0.03, 0.1))
    ap.add_argument("--steps", type=_list(int), default=(20, 40, 80))
    ap.add_argument("--n-virtual", type=_list(int), default=(8, 16))
    ap.add_argument("--per-cluster", type=_list(int), default=(5, 12))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from nvcc_pt.prompt.backbone import load_backbone
    from nvcc_pt.prompt.study import Study, StudyConfig, prepare_data

    if args.threads:
        torch.set_num_threads(args.threads)
    base = StudyConfig(methods=("no-prompt", "rep-pt-mips"), devices=("rram1",), chips=1)
    data = prepare_data(base, Path(args.study) / "data")
    bb = load_backbone(base.model, data.labels, args.device)
    rows, studies = [], {}
    grid = list(itertools.product(args.per_cluster, args.inits, args.n_virtual, args.lrs, args.steps))
    t_start = time.time()
    for k, (per_cluster, init, n_virtual, lr, steps) in enumerate(grid):
        cfg = replace(base, per_cluster=per_cluster, init=init, n_virtual=n_virtual, lr=lr, steps=steps,
                      batch_size=args.batch_size)
        if per_cluster not in studies:
            studies[per_cluster] = keep_users(Study(cfg, bb, data, args.study, progress=False), args.users)
        study = studies[per_cluster]
        study.cfg = cfg
        row = measure(study, cfg, args.seed)
        rows.append(row)
        print(f"[{k + 1}/{len(grid)}] {json.dumps(row)}", file=sys.stderr, flush=True)
    no_prompt = next(iter(studies.values())).no_prompt()
    best = max(rows, key=lambda r: (r["mips"], r["oracle"]))
    print(json.dumps({"study": args.study, "device": args.device, "users": args.users, "queries": len(study.gold),
                      "no_prompt": round(no_prompt, 4), "seed": args.seed, "wall_s": round(time.time() - t_start, 1),
                      "best_by_mips": best, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
