"""NVCiM-PT evaluation harness: task metric against device sigma, per device and method.

Methods (Qin et al., DATE 2025, Sec. IV compares NVCiM-PT with its baselines and ablations):

  no-prompt        the LLM alone;
  pt-mips          one soft prompt per buffer of user samples, trained without noise on all of them,
                   stored in NVCiM and retrieved by plain MIPS (the no-mitigation baseline);
  nvcimpt          representative selection + noise-aware training + SSA;
  nvcimpt-mips     ablation: MIPS instead of SSA;
  nvcimpt-no-nat   ablation: no noise-aware training.

Every bank is compiled onto `<device>-<crossbar>` with the sigma under test and programmed
`instances` times (seeds `seed`, `seed+1`, ...); for each instance the search runs on the
simulator and the LLM gets the OVT read back from the cells. Reported per (method, device,
sigma): the mean of the task metric over instances and its KPP, the k-th percentile performance
(the worst k% of programmed chips; k=1 by default, Yan et al., ICCAD 2022), plus retrieval accuracy
when the true domain of each query is known.

Users: queries that share one profile are one user. All users' OVTs sit in one compiled bank and
a query's search is restricted to its own user's rows (one bank per user, sharing the arrays).
Noise-aware OVTs are trained once per device at `train_sigma` (0.1, the paper's main setting) and
evaluated at every sigma.

Example:
    >>> res = evaluate(model, tokenizer, load_lamp(q, o), EvalConfig(devices=("rram1", "fefet6")))
    >>> print(res.to_text()); res.to_json("eval.json"); res.plot("eval.png")
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.files import write_text, write_with
from nvcc_pt.prompt.bank import OVTBank, query_embeddings
from nvcc_pt.prompt.lamp import Example, LampDataset
from nvcc_pt.prompt.metrics import LOWER_IS_BETTER
from nvcc_pt.prompt.selection import Embedder, select_representatives
from nvcc_pt.prompt.ssa import SSA_SCALES, SSA_WEIGHTS, check_scales
from nvcc_pt.prompt.training import predict, score, train_ovt
from nvcc_pt.targets.spec import MAX_SIGMA

METHODS = ("no-prompt", "pt-mips", "nvcimpt", "nvcimpt-mips", "nvcimpt-no-nat")
DEVICES = ("rram1", "rram4", "fefet2", "fefet6")
SIGMAS = (0.025, 0.05, 0.075, 0.1, 0.125)


@dataclass(frozen=True)
class EvalConfig:
    """What to compare and how to train the OVTs."""

    devices: tuple[str, ...] = DEVICES
    """Device models; each is evaluated on `<device>-<crossbar>`."""
    sigmas: tuple[float, ...] = SIGMAS
    """Device sigmas (fraction of the conductance range)."""
    instances: int = 3
    """Programmed chip instances per (device, sigma)."""
    methods: tuple[str, ...] = METHODS
    crossbar: str = "128x128"
    n_virtual: int = 8
    """Virtual tokens per OVT."""
    buffer_size: int = 25
    """User samples per buffer (25 in the paper)."""
    max_buffers: int = 2
    """Most recent buffers of each user's history that become OVTs."""
    n_clusters: int = 2
    """k-means clusters (domains) per buffer."""
    per_cluster: int = 5
    """Representative samples per cluster."""
    steps: int = 120
    lr: float = 0.05
    batch_size: int = 8
    train_sigma: float = 0.1
    """Sigma of the noise injected in noise-aware training."""
    censor: float | None = None
    """Right-censor the training noise at this many sigmas (None: plain Gaussian)."""
    scales: tuple[int, ...] = SSA_SCALES
    weights: tuple[float, ...] = SSA_WEIGHTS
    kpp: float = 1.0
    """Percentile k of the KPP."""
    seed: int = 0

    def __post_init__(self) -> None:
        where = "EvalConfig"
        for name in ("devices", "methods"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value \
                    or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}: {name}={value!r:.80} must be a non-empty tuple of names")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.sigmas, (str, bytes)) or not isinstance(self.sigmas, (tuple, list)) or not self.sigmas:
            raise InputError(f"{where}: sigmas={self.sigmas!r:.80} must be a non-empty tuple of numbers")
        object.__setattr__(self, "sigmas", tuple(check.real(f"sigmas[{i}]", s, lo=0.0, hi=MAX_SIGMA, where=where)
                                                 for i, s in enumerate(self.sigmas)))
        counts = {"instances": (1, 10**6), "n_virtual": (1, 4096), "buffer_size": (1, 2**20), "max_buffers": (1, 2**20),
                  "n_clusters": (1, 2**20), "per_cluster": (1, 2**20), "steps": (0, 10**9), "batch_size": (1, 2**20)}
        for name, (lo, hi) in counts.items():
            check.integer(name, getattr(self, name), lo=lo, hi=hi, where=where)
        check.text("crossbar", self.crossbar, where=where)
        if not re.fullmatch(r"[0-9]{1,4}x[0-9]{1,4}", self.crossbar):
            raise InputError(f"{where}: crossbar={self.crossbar!r:.80} must read '<rows>x<cols>', such as '128x128'")
        check.real("lr", self.lr, lo=0.0, lo_open=True, where=where)
        check.real("train_sigma", self.train_sigma, lo=0.0, hi=MAX_SIGMA, where=where)
        check.optional_real("censor", self.censor, lo=0.0, lo_open=True, where=where)
        check_scales(self.scales, self.weights)
        check.real("kpp", self.kpp, lo=0.0, hi=100.0, where=where)
        check.seed("seed", self.seed, where=where)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise InputError(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
        from nvcc_pt.targets import get_target

        for device in self.devices:  # an unknown device fails here, not after hours of training
            get_target(f"{device}-{self.crossbar}")


def kpp(values: Sequence[float], k: float, lower_is_better: bool = False) -> float:
    """The k-th percentile performance: the value that the worst k% of instances do not exceed."""
    check.real("k", k, lo=0.0, hi=100.0, where="kpp")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InputError(f"kpp: values={values!r:.80} must be a non-empty list of numbers")
    t = torch.tensor([check.real(f"values[{i}]", v, where="kpp") for i, v in enumerate(values)], dtype=torch.float64)
    q = (100 - k) / 100 if lower_is_better else k / 100
    return float(torch.quantile(t, q))


@dataclass
class EvalResult:
    """Rows of (method, device, sigma) with the metric's mean and KPP over programmed instances."""

    task: int
    metric: str
    rows: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def row(self, method: str, device: str, sigma: float) -> dict:
        return next(r for r in self.rows if r["method"] == method and r["device"] == device
                    and math.isclose(r["sigma"], sigma))

    def to_text(self) -> str:
        cfg = self.config
        lines = [f"LaMP-{self.task}, metric {self.metric} (mean over {cfg.get('instances')} programmed instances; "
                 f"KPP k={cfg.get('kpp')}%; retrieval = share of queries given an OVT of their own domain)"]
        methods = [m for m in METHODS if any(r["method"] == m for r in self.rows)]
        sigmas = sorted({r["sigma"] for r in self.rows})
        for device in dict.fromkeys(r["device"] for r in self.rows):
            lines.append(f"\n{device}")
            head = ["method"] + [f"s={s:g}" for s in sigmas]
            table = [head]
            for m in methods:
                cells = [m]
                for s in sigmas:
                    r = self.row(m, device, s)
                    ret = "" if r.get("retrieval") is None else f" r{r['retrieval']:.2f}"
                    cells.append(f"{r['mean']:.3f} ({r['kpp']:.3f}){ret}")
                table.append(cells)
            widths = [max(len(row[i]) for row in table) for i in range(len(head))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        return "\n".join(lines)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"task": self.task, "metric": self.metric, "config": self.config, "rows": self.rows}, indent=1)
        if path is not None:
            write_text(path, text, "results")
        return text

    def plot(self, path: str | Path) -> Path:
        """Metric against sigma, one panel per device, one line per method (dotted: KPP)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        devices = list(dict.fromkeys(r["device"] for r in self.rows))
        fig, axes = plt.subplots(1, len(devices), figsize=(4 * len(devices), 3.4), squeeze=False, sharey=True)
        for ax, device in zip(axes[0], devices):
            for i, m in enumerate(dict.fromkeys(r["method"] for r in self.rows)):
                rs = sorted((r for r in self.rows if r["device"] == device and r["method"] == m), key=lambda r: r["sigma"])
                xs = [r["sigma"] for r in rs]
                line, = ax.plot(xs, [r["mean"] for r in rs], marker="o", label=m, color=f"C{i}")
                ax.plot(xs, [r["kpp"] for r in rs], linestyle=":", color=line.get_color())
            ax.set_title(device)
            ax.set_xlabel("device sigma")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{self.metric} (solid: mean, dotted: KPP)")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary name has no suffix to infer it from
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt), "plot")
        plt.close(fig)
        return Path(path)


def _majority_domain(examples: Sequence[Example]):
    doms = [e.meta.get("domain") for e in examples if "domain" in e.meta]
    return max(set(doms), key=doms.count) if doms else None


def _buffers(profile: Sequence[Example], cfg: EvalConfig) -> list[list[Example]]:
    chunks = [list(profile[i:i + cfg.buffer_size]) for i in range(0, len(profile), cfg.buffer_size)]
    chunks = [c for c in chunks if len(c) >= max(cfg.n_clusters, 1)]
    return chunks[-cfg.max_buffers:]


def _check_run(model, dataset, cfg, where: str) -> None:
    check.instance("model", model, nn.Module, where=where)
    check.instance("dataset", dataset, LampDataset, where=where)
    check.instance("cfg", cfg, EvalConfig, where=where)


def build_banks(model: nn.Module, tokenizer, dataset: LampDataset, cfg: EvalConfig, *, embedder: Embedder | None = None,
                progress: bool = True) -> tuple[dict[str, OVTBank], list[int]]:
    """Train every OVT the methods need; returns the banks (by method, or `nvcimpt@<device>`) and each query's user."""
    _check_run(model, dataset, cfg, "build_banks")
    users: dict[tuple, int] = {}
    query_user = [users.setdefault(q.profile, len(users)) for q in dataset.queries]
    hidden = model.get_input_embeddings().weight.shape[1]
    banks = {name: OVTBank() for name in ("pt", "plain", *(f"nat@{d}" for d in cfg.devices))}
    needs = set(cfg.methods)
    jobs = []
    for profile, u in users.items():
        if not profile:
            raise InputError(f"user {u} has an empty profile; NVCiM-PT trains its OVTs on the user's history")
        for b, buf in enumerate(_buffers(profile, cfg)):
            if "pt-mips" in needs:
                jobs.append(("pt", f"u{u}/b{b}", buf, None, u))
            if needs & {"nvcimpt", "nvcimpt-mips", "nvcimpt-no-nat"}:
                for c, dom in enumerate(select_representatives(buf, cfg.n_clusters, cfg.per_cluster, embedder=embedder,
                                                               seed=cfg.seed)):
                    if "nvcimpt-no-nat" in needs:
                        jobs.append(("plain", f"u{u}/b{b}/c{c}", list(dom.examples), None, u))
                    if needs & {"nvcimpt", "nvcimpt-mips"}:
                        jobs += [(f"nat@{d}", f"u{u}/b{b}/c{c}", list(dom.examples), d, u) for d in cfg.devices]
    for i, (bank, key, examples, device, u) in enumerate(tqdm(jobs, desc="training OVTs", disable=not progress)):
        target = None if device is None else f"{device}-{cfg.crossbar}"
        ovt = train_ovt(model, tokenizer, examples, n_virtual=cfg.n_virtual, steps=cfg.steps, lr=cfg.lr,
                        batch_size=cfg.batch_size, target=target, sigma=cfg.train_sigma if target else None,
                        censor=cfg.censor, seed=cfg.seed + i, progress=False)
        banks[bank].add(key, ovt, {"user": u, "domain": _majority_domain(examples)})
    for bank in banks.values():
        bank.check_width(hidden)
    return banks, query_user


def evaluate(model: nn.Module, tokenizer, dataset: LampDataset, cfg: EvalConfig = EvalConfig(), *,
             embedder: Embedder | None = None, query_domains: dict[str, object] | None = None,
             banks: dict[str, OVTBank] | None = None, progress: bool = True) -> EvalResult:
    """Run every method of `cfg` on `dataset` over devices, sigmas and programmed instances."""
    _check_run(model, dataset, cfg, "evaluate")
    queries = [q for q in dataset.queries if q.output is not None]
    if not queries:
        raise InputError("the dataset has no queries with gold outputs; load the LaMP outputs file too")
    dataset = LampDataset(dataset.task, queries)
    task, metric = dataset.task, dataset.task.metrics[0]
    golds = [q.output for q in queries]
    if banks is None:
        banks, query_user = build_banks(model, tokenizer, dataset, cfg, embedder=embedder, progress=progress)
    else:
        hidden = model.get_input_embeddings().weight.shape[1]
        for bank in banks.values():
            bank.check_width(hidden)
        users: dict[tuple, int] = {}
        query_user = [users.setdefault(q.profile, len(users)) for q in queries]
    embeds = query_embeddings(model, tokenizer, [q.input for q in queries])
    result = EvalResult(task.task_id, metric, config=asdict(cfg))
    low = metric in LOWER_IS_BETTER

    def add(method, device, sigma, values, retrieval=None):
        result.rows.append({"method": method, "device": device, "sigma": sigma, "mean": sum(values) / len(values),
                            "kpp": kpp(values, cfg.kpp, low), "values": values, "retrieval": retrieval})

    base = None
    if "no-prompt" in cfg.methods:
        base = score(task, predict(model, tokenizer, task, [q.input for q in queries]), golds)[metric]
    variants = {"pt-mips": ("pt", (1,), (1.0,)), "nvcimpt": ("nat", cfg.scales, cfg.weights),
                "nvcimpt-mips": ("nat", (1,), (1.0,)), "nvcimpt-no-nat": ("plain", cfg.scales, cfg.weights)}
    grid = [(d, s, m) for d in cfg.devices for s in cfg.sigmas for m in cfg.methods]
    for device, sigma, method in tqdm(grid, desc="evaluating", disable=not progress):
        if method == "no-prompt":
            add(method, device, sigma, [base] * cfg.instances)
            continue
        name, scales, weights = variants[method]
        bank = banks[f"nat@{device}" if name == "nat" else name]
        owner = torch.tensor([bank.meta[k]["user"] for k in bank.keys])
        mask = owner[None, :] == torch.tensor(query_user)[:, None]
        if not mask.any(1).all():
            raise InputError(f"some users have no OVT in the {method} bank; their histories are shorter than n_clusters")
        cb = bank.compile(f"{device}-{cfg.crossbar}", sigma=sigma, scales=scales, weights=weights, seed=cfg.seed)
        values, hits = [], []
        for inst in range(cfg.instances):
            cb.program(cfg.seed + inst)
            scores = cb.scores(embeds).masked_fill(~mask, -math.inf)
            idx = scores.argmax(1).tolist()
            stored = cb.read_back()
            preds = predict(model, tokenizer, task, [q.input for q in queries], [stored[i] for i in idx])
            values.append(score(task, preds, golds)[metric])
            if query_domains is not None:
                doms = [bank.meta[bank.keys[i]]["domain"] for i in idx]
                hits.append(sum(d == query_domains.get(q.id) for d, q in zip(doms, queries)) / len(queries))
        add(method, device, sigma, values, sum(hits) / len(hits) if hits else None)
    return result
