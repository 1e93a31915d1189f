"""A study's points as statistics, the pre-stated criteria, tables, a plot and the comparison with the paper.

Statistics per (method, device, sigma) pool the chips of every training seed (n = chips x seeds):
the mean, the KPP (k-th percentile performance: the accuracy the worst k% of chips x seeds do not
exceed; Yan et al., ICCAD 2022) and a 95% percentile-bootstrap confidence interval of the mean
(2000 resamples of the n values). A gap between two methods is bootstrapped the same way over the
paired differences (same seed, same chip index).

The criteria are the ones stated in advance for reproducing NVCiM-PT's effect; each is computed
from the points, and prints as met or not met with its numbers.

Example:
    >>> rows = summarize(points, kpp_k=10)
    >>> for c in criteria(points, rows): print(c["text"])
    >>> write_report(points, cfg, "results/nvcimpt", command="nvcc-pt nvcimpt study ...")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nvcc_pt.files import write_text, write_with
from nvcc_pt.prompt.methods import METHODS

PAPER = ("Qin et al., NVCiM-PT, DATE 2025", "LaMP (personalization)", "Gemma-2B, Phi-2, Mistral-7B-GPTQ",
         "up to 36.7% over the baselines at sigma 0.1")
"""The paper's headline claim this study is set beside."""
BASELINES = ("rep-pt-mips", "pt-buffer-mips")


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values`."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(t) < 2:
        return float(t.mean()), float(t.mean())
    g = torch.Generator().manual_seed(seed)
    means = t[torch.randint(0, len(t), (n_boot, len(t)), generator=g)].mean(1)
    return float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))


def _pooled(points, method, device, sigma, field="values"):
    rows = sorted((p for p in points if p["method"] == method and p["device"] == device
                   and math.isclose(p["sigma"], sigma)), key=lambda p: p["seed"])
    if not rows or any(p[field] is None for p in rows):
        return None
    return [v for p in rows for v in p[field]]


def summarize(points: list[dict], kpp_k: float = 10.0) -> list[dict]:
    """One row per (method, device, sigma): n, mean, kpp, ci, retrieval (mean, None without domains)."""
    from nvcc_pt.prompt.harness import kpp

    keys = sorted({(p["method"], p["device"], p["sigma"]) for p in points},
                  key=lambda k: (list(METHODS).index(k[0]), k[1], k[2]))
    rows = []
    for method, device, sigma in keys:
        values = _pooled(points, method, device, sigma)
        ret = _pooled(points, method, device, sigma, "retrieval")
        lo, hi = bootstrap_ci(values)
        rows.append({"method": method, "device": device, "sigma": sigma, "n": len(values),
                     "mean": sum(values) / len(values), "kpp": kpp(values, kpp_k), "ci": [lo, hi],
                     "retrieval": None if ret is None else sum(ret) / len(ret)})
    return rows


def gap(points, a: str, b: str, device: str, sigma: float) -> dict | None:
    """`a` minus `b` over paired chips: mean difference, its 95% bootstrap CI, and the relative gain over `b`."""
    va, vb = _pooled(points, a, device, sigma), _pooled(points, b, device, sigma)
    if va is None or vb is None or len(va) != len(vb):
        return None
    d = [x - y for x, y in zip(va, vb)]
    base = sum(vb) / len(vb)
    lo, hi = bootstrap_ci(d)
    return {"diff": sum(d) / len(d), "ci": [lo, hi], "rel": (sum(d) / len(d)) / base if base else math.inf,
            "base": base, "ours": sum(va) / len(va)}


def _row(rows, method, device, sigma):
    return next((r for r in rows if r["method"] == method and r["device"] == device
                 and math.isclose(r["sigma"], sigma)), None)


def criteria(points: list[dict], rows: list[dict]) -> list[dict]:
    """The five pre-stated criteria: name, met (True, False, or None when the sweep cannot decide) and text."""
    devices = sorted({r["device"] for r in rows})
    sigmas = sorted({r["sigma"] for r in rows})
    out = []

    def add(name, met, text):
        out.append({"name": name, "met": met,
                    "text": f"[{'met' if met else 'NOT met' if met is False else 'undecided'}] {name}: {text}"})

    clean = {d: _row(rows, "rep-pt-mips", d, 0.0) for d in devices}
    base = {d: _row(rows, "no-prompt", d, 0.0) for d in devices}
    if all(clean.values()) and all(base.values()):
        g = sum(clean[d]["mean"] - base[d]["mean"] for d in devices) / len(devices)
        add("clean prompt tuning >= 15 points above no prompt", g >= 0.15,
            f"rep-pt-mips at sigma 0 {sum(clean[d]['mean'] for d in devices) / len(devices):.3f} vs no prompt "
            f"{base[devices[0]]['mean']:.3f}: {100 * g:+.1f} points")
        lost = {}
        for d in devices:
            noisy = _row(rows, "rep-pt-mips", d, 0.1)
            gain = clean[d]["mean"] - base[d]["mean"]
            if noisy and gain > 0:
                lost[d] = (clean[d]["mean"] - noisy["mean"]) / gain
        if lost:
            m = sum(lost.values()) / len(lost)
            add("plain OVT loses >= 1/3 of that gain at sigma 0.1", m >= 1 / 3,
                f"share lost {m:.2f} on average ({', '.join(f'{d} {v:.2f}' for d, v in lost.items())})")
        else:
            add("plain OVT loses >= 1/3 of that gain at sigma 0.1", None,
                "no sigma 0.1 points" if not any(_row(rows, "rep-pt-mips", d, 0.1) for d in devices)
                else "the clean plain OVT gains nothing over no prompt, so there is no gain to lose")
    else:
        add("clean prompt tuning >= 15 points above no prompt", None, "needs sigma 0 and the no-prompt method")
    gaps = {d: gap(points, "nvcimpt", "rep-pt-mips", d, 0.1) for d in devices}
    good = [d for d, g in gaps.items() if g and g["rel"] >= 0.10 and g["ci"][0] > 0]
    need = min(2, len(devices))
    detail = "; ".join(f"{d} {100 * g['rel']:+.1f}% ({g['ours']:.3f} vs {g['base']:.3f}, diff CI "
                       f"[{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}])" for d, g in gaps.items() if g)
    if 0.025 in sigmas and 0.125 in sigmas:
        grow = {d: (gap(points, "nvcimpt", "rep-pt-mips", d, 0.025), gap(points, "nvcimpt", "rep-pt-mips", d, 0.125))
                for d in devices}
        growing = [d for d, (a, b) in grow.items() if a and b and b["diff"] > a["diff"]]
        detail += "; gap 0.025 -> 0.125: " + ", ".join(f"{d} {a['diff']:+.3f} -> {b['diff']:+.3f}"
                                                        for d, (a, b) in grow.items() if a and b)
        good = [d for d in good if d in growing]
    if any(gaps.values()):
        add(f"NVCiM-PT >= 10% over rep-pt-mips at sigma 0.1 on >= {need} device(s), CI > 0, gap growing",
            len(good) >= need, detail + (f" (with {len(devices)} device(s) in the sweep)" if len(devices) < 2 else ""))
    else:
        add("NVCiM-PT >= 10% over rep-pt-mips at sigma 0.1", None, "no sigma 0.1 points")
    zero = [(d, _row(rows, "nvcimpt", d, 0.0), _row(rows, "nvcimpt-no-nat", d, 0.0)) for d in devices]
    zero = [(d, a, b) for d, a, b in zero if a and b]
    if zero:
        worst = max(abs(a["mean"] - b["mean"]) for _, a, b in zero)
        add("at sigma 0 noise-aware OVTs within 2 points of plain", worst <= 0.02,
            ", ".join(f"{d} {a['mean']:.3f} vs {b['mean']:.3f}" for d, a, b in zero))
    ssa = [r["retrieval"] for r in rows if r["method"] == "nvcimpt" and r["sigma"] > 0 and r["retrieval"] is not None]
    mips = [r["retrieval"] for r in rows if r["method"] == "nvcimpt-mips" and r["sigma"] > 0 and r["retrieval"] is not None]
    if ssa and mips:
        a, b = sum(ssa) / len(ssa), sum(mips) / len(mips)
        add("SSA retrieves the right domain at least as often as MIPS under noise", a >= b,
            f"retrieval accuracy over sigma > 0: SSA {a:.3f}, MIPS {b:.3f}")
    return out


def _cell(r) -> str:
    ret = "" if r["retrieval"] is None else f" r{r['retrieval']:.2f}"
    return f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] k{r['kpp']:.3f}{ret}"


def markdown(rows: list[dict], crits: list[dict], cfg: dict, paper: list[dict]) -> str:
    sigmas = sorted({r["sigma"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [f"# NVCiM-PT on {cfg['model']}, task {cfg['task']}", "",
             f"Accuracy (restricted-vocabulary label scoring) over {cfg['chips']} chips x {len(cfg['seeds'])} seed(s): "
             f"mean [95% bootstrap CI of the mean] k KPP (k={cfg['kpp']}%), r retrieval accuracy "
             "(share of queries given an OVT of their own domain).", ""]
    for device in dict.fromkeys(r["device"] for r in rows):
        lines += [f"## {device}", "", "| method | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
                  "|---|" + "---|" * len(sigmas)]
        for m in methods:
            cells = [_row(rows, m, device, s) for s in sigmas]
            lines.append(f"| {m} | " + " | ".join(_cell(c) if c else "" for c in cells) + " |")
        lines.append("")
    lines += ["## Criteria stated in advance", ""] + [f"- {c['text']}" for c in crits] + [""]
    lines += ["## Beside the paper", "", "| | source | task | model | NVCiM-PT over the baselines at sigma 0.1 |",
              "|---|---|---|---|---|"]
    lines.append(f"| paper | {PAPER[0]} | {PAPER[1]} | {PAPER[2]} | {PAPER[3]} |")
    for p in paper:
        lines.append(f"| this study | {p['device']} | {cfg['task']} (LaMP-2 format) | {cfg['model']} | "
                     f"{p['text']} |")
    return "\n".join(lines) + "\n"


def paper_rows(points: list[dict], rows: list[dict]) -> list[dict]:
    """NVCiM-PT's relative gain over each baseline at sigma 0.1, per device (the paper's headline measure)."""
    out = []
    for device in sorted({r["device"] for r in rows}):
        parts, best = [], None
        for b in BASELINES:
            g = gap(points, "nvcimpt", b, device, 0.1)
            if g:
                parts.append(f"{100 * g['rel']:+.1f}% over {b}")
                best = g["rel"] if best is None else max(best, g["rel"])
        if parts:
            out.append({"device": device, "best_rel": best, "text": ", ".join(parts)})
    return out


def plot(rows: list[dict], path: Path, metric: str = "accuracy") -> None:
    """Mean accuracy against sigma, one panel per device, one line per method (band: 95% CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(1, len(devices), figsize=(4 * len(devices), 3.4), squeeze=False, sharey=True)
    for ax, device in zip(axes[0], devices):
        for i, m in enumerate(m for m in METHODS if any(r["method"] == m for r in rows)):
            rs = sorted((r for r in rows if r["device"] == device and r["method"] == m), key=lambda r: r["sigma"])
            xs = [r["sigma"] for r in rs]
            ax.plot(xs, [r["mean"] for r in rs], marker="o", label=m, color=f"C{i}")
            ax.fill_between(xs, [r["ci"][0] for r in rs], [r["ci"][1] for r in rs], color=f"C{i}", alpha=0.15)
        ax.set_title(device)
        ax.set_xlabel("device sigma")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (mean, 95% CI)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    for suffix in ("png", "svg"):
        write_with(path.with_suffix(f".{suffix}"), lambda tmp, s=suffix: fig.savefig(tmp, dpi=120, format=s), "plot")
    plt.close(fig)


def write_report(points: list[dict], cfg: dict, out: str | Path, *, command: str = "", wall_s: float | None = None) -> str:
    """Write `results.json`, `table.md`, `plot.png`/`.svg` and `command.txt` into `out`; returns the table.

    The wall and CPU time of the runs that measured the points come from `out/runs.jsonl` when it is there.
    """
    out = Path(out)
    rows = summarize(points, cfg.get("kpp", 10.0))
    crits = criteria(points, rows)
    paper = paper_rows(points, rows)
    table = markdown(rows, crits, cfg, paper)
    runs = []
    if (out / "runs.jsonl").is_file():
        runs = [json.loads(line) for line in (out / "runs.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    measured = sum(r["wall_s"] for r in runs if r.get("groups"))
    if runs:
        table += (f"\nMeasured in {measured:.0f} s wall ({sum(r['cpu_s'] for r in runs if r.get('groups')):.0f} s CPU) "
                  f"over {sum(1 for r in runs if r.get('groups'))} run(s) on {runs[-1]['device']}, "
                  f"{runs[-1]['torch_threads']} torch thread(s) (`runs.jsonl`).\n")
    doc = {"config": cfg, "rows": rows, "criteria": crits, "paper": {"claim": PAPER, "this_study": paper},
           "wall_s": wall_s, "measured_wall_s": measured, "runs": runs, "command": command, "ci": "95% percentile bootstrap over chips x seeds (2000 resamples)"}
    write_text(out / "results.json", json.dumps(doc, indent=1), "results")
    write_text(out / "table.md", table, "table")
    if command:
        write_text(out / "command.txt", command + "\n", "command")
    plot(rows, out / "plot")
    return table

