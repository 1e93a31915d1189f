"""NVCiM-PT against its baselines on a real LLM and real text: training, programmed chips, resumable results.

A study runs every method of `nvcc_pt.prompt.methods` on a `realtext` task with a frozen backbone, for
each training seed, device and sigma (0 is the control without variation), on `chips` programmed chip
instances. One *point* is (method, device, sigma, seed) and holds the accuracy (and retrieval accuracy)
of each chip; points are appended to `points.jsonl` as soon as they are measured, and a re-run with the
same configuration skips the finished ones. Trained OVTs are saved per configuration, seed and OVT set
under `ovts/`, so a resumed run does not train again. `runs.jsonl` records each run's wall and CPU time.

What is trained, per seed (each user's newest `buffers` buffers of `buffer_size` history items):
`buffer/plain` one OVT per buffer; `representative/plain` one per k-means domain of a buffer, on its
`per_cluster` most central samples; `representative/nat@<device>` the same, noise-aware on `<device>`
at `train_sigma`. On a chip, the OVTs of one set are stored once: the methods that share a set (plain
with SSA or MIPS) get the same read-back OVTs and differ only in the search array.

The search query is `query` (the input's SIF embedding by default, `nvcc_pt.prompt.query`). The banks are
compiled, programmed, searched and read back on the backbone's device, with the chips' variation drawn there
from the keyed generator (`targets.philox`): a seed is the same chip on a GPU as on the CPU.

Example:
    >>> cfg = StudyConfig(devices=("rram1",), seeds=(0,), chips=3)
    >>> points = run_study(cfg, "results/nvcimpt")                 # resumable
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.errors import DataError, InputError
from nvcc_pt.files import write_text
from nvcc_pt.prompt.backbone import OVT_INITS
from nvcc_pt.prompt.methods import METHODS, check_methods
from nvcc_pt.prompt.query import QUERIES, SifQuery
from nvcc_pt.prompt.realtext import TASKS, load_realtext, write_realtext
from nvcc_pt.prompt.studycost import SEARCH, cost, estimate, estimate_chips
from nvcc_pt.targets.spec import MAX_SIGMA


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study's numbers depend on (`fingerprint`), plus what to sweep."""

    model: str = "builtin:smollm2-135m"
    task: str = "wordnet"
    devices: tuple[str, ...] = ("rram1", "fefet2", "rram4", "fefet6")
    sigmas: tuple[float, ...] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125)
    methods: tuple[str, ...] = tuple(METHODS)
    chips: int = 10
    """Programmed chip instances per point."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (batch order and the noise-aware training's chips)."""
    users: int = 6
    queries_per_user: int = 16
    buffers: int = 2
    buffer_size: int = 25
    clusters: int = 2
    per_cluster: int = 12
    """Representatives per domain: the OVT's training samples (12 of a 25-sample buffer's two clusters of about 12;
    with 5, the OVTs fit their samples and generalise worse, `benchmarks/pt_config_search.py`)."""
    n_virtual: int = 8
    steps: int = 40
    lr: float = 0.03
    """Adam step size relative to the RMS of the LM's embedding table."""
    batch_size: int = 4
    init: str = "labels"
    """Where each OVT starts (`backbone.OVT_INITS`): `labels`, the token embeddings of its samples' label words
    (class-label initialisation, Lester et al., EMNLP 2021); `samples`, its samples' pooled input embeddings."""
    train_sigma: float = 0.1
    crossbar: str = "128x128"
    max_words: int = 16
    data_seed: int = 0
    query: str = "sif"
    """The search query (`nvcc_pt.prompt.query`): `sif`, the input's SIF embedding fitted on the users' histories
    (keys mapped alike); `mean`, its mean token embedding; `tokens`, its token embeddings pooled to the OVT's
    positions."""
    embedder: str = "minilm"
    """Sentence embedder of representative selection: `minilm` (all-MiniLM-L6-v2) or `lm` (the LM's mean input
    embedding of the text)."""
    kpp: float = 10.0
    """Percentile k of the KPP (the accuracy that the worst k% of chips x seeds do not exceed)."""

    def __post_init__(self) -> None:
        where = "StudyConfig"
        check.text("model", self.model, where=where)
        check.choice("task", self.task, TASKS, where=where)
        check.choice("embedder", self.embedder, ("minilm", "lm"), where=where)
        check.choice("query", self.query, QUERIES, where=where)
        check.choice("init", self.init, OVT_INITS, where=where)
        object.__setattr__(self, "methods", check_methods(tuple(self.methods)))
        for name in ("devices", "sigmas", "seeds"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
                raise InputError(f"{where}: {name}={value!r:.80} must be a non-empty list")
            object.__setattr__(self, name, tuple(value))
        for i, s in enumerate(self.sigmas):
            check.real(f"sigmas[{i}]", s, lo=0.0, hi=MAX_SIGMA, where=where)
        for i, s in enumerate(self.seeds):
            check.seed(f"seeds[{i}]", s, where=where)
        for name in ("chips", "users", "queries_per_user", "buffers", "clusters", "per_cluster", "n_virtual",
                     "batch_size"):
            check.integer(name, getattr(self, name), lo=1, hi=10**6, where=where)
        check.integer("buffer_size", self.buffer_size, lo=max(2, self.clusters), hi=10**6, where=where)
        check.integer("steps", self.steps, lo=0, hi=10**7, where=where)
        check.integer("max_words", self.max_words, lo=3, hi=10**4, where=where)
        check.seed("data_seed", self.data_seed, where=where)
        check.real("lr", self.lr, lo=0.0, lo_open=True, where=where)
        check.real("train_sigma", self.train_sigma, lo=0.0, hi=MAX_SIGMA, where=where)
        check.real("kpp", self.kpp, lo=0.0, hi=100.0, where=where)
        from nvcc_pt.targets import get_target

        for device in self.devices:  # an unknown device fails now, not after the training
            get_target(f"{device}-{self.crossbar}")

    def fingerprint(self) -> str:
        """A hash of the fields that change a point's numbers (not the sweep: devices, sigmas, methods, seeds)."""
        sweep = {"devices", "sigmas", "methods", "seeds", "kpp"}
        fixed = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in sweep}
        if fixed["init"] == "samples":  # the only initialisation before `init` existed: older results keep their hash
            del fixed["init"]
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]

    def selection_key(self) -> str:
        """A hash of the fields that the data and the representative selection depend on (not the training's)."""
        keep = ("model", "task", "users", "queries_per_user", "buffers", "buffer_size", "clusters", "per_cluster",
                "max_words", "data_seed", "embedder")
        fixed = {name: getattr(self, name) for name in keep}
        return "sel-" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg: StudyConfig, folder: str | Path):
    """The study's task, generated into `folder` (or read from it when its labels file is already there)."""
    folder = Path(folder)
    if not (folder / "labels.json").is_file():
        write_realtext(folder, cfg.task, users=cfg.users, buffers=cfg.buffers, buffer_size=cfg.buffer_size,
                       queries_per_user=cfg.queries_per_user, max_words=cfg.max_words, seed=cfg.data_seed)
    return load_realtext(folder)


def _domains_of(examples) -> list[str]:
    """The domains that make up at least a third of an OVT's training samples."""
    doms = [e.meta.get("domain") for e in examples]
    return sorted({d for d in doms if d is not None and doms.count(d) * 3 >= len(doms)})


def select_groups(cfg: StudyConfig, data, out: str | Path, embedder=None) -> dict[str, list[tuple[int, list]]]:
    """Each user's buffers and their representative domains, `{"buffer": [(user, examples)], "representative": ...}`.

    The choice is saved in `out/selection/<selection_key>.json` (history ids) and read from there on the next run,
    so a resumed run, one with other training settings, or one on a machine without the sentence embedder selects
    nothing again. (A file named by the configuration's `fingerprint`, as older runs saved it, is read too.)
    """
    from nvcc_pt.prompt.selection import select_representatives

    cache = Path(out) / "selection" / f"{cfg.selection_key()}.json"
    older = Path(out) / "selection" / f"{cfg.fingerprint()}.json"
    source = cache if cache.is_file() or not older.is_file() else older
    saved = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else None
    users: dict[tuple, int] = {}
    for q in data.dataset.queries:
        users.setdefault(q.profile, len(users))
    groups: dict[str, list[tuple[int, list]]] = {"buffer": [], "representative": []}
    for profile, u in users.items():
        history = list(profile)[-cfg.buffers * cfg.buffer_size:]
        for b in range(0, len(history), cfg.buffer_size):
            buf = history[b:b + cfg.buffer_size]
            if len(buf) >= cfg.clusters:
                groups["buffer"].append((u, buf))
                if saved is None:
                    for dom in select_representatives(buf, cfg.clusters, cfg.per_cluster, embedder=embedder,
                                                      seed=cfg.data_seed):
                        groups["representative"].append((u, list(dom.examples)))
    if not groups["buffer"]:
        raise DataError(f"no user history holds a buffer of {cfg.buffer_size} items; generate longer histories")
    if saved is not None:
        try:
            hist = {u: {e.id: e for e in p} for p, u in users.items()}
            groups["representative"] = [(u, [hist[u][i] for i in ids]) for u, ids in saved["representative"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source} does not match the data in {Path(out) / 'data'} ({e!r}); delete it") from None
    else:
        doc = {"representative": [[u, [e.id for e in ex]] for u, ex in groups["representative"]]}
        write_text(cache, json.dumps(doc), "selection")
    return groups


class Study:
    """One study: data, backbone, OVT groups, training (cached) and the evaluation of (device, sigma, seed)."""

    def __init__(self, cfg: StudyConfig, backbone, data, out: str | Path, *, embedder=None, progress: bool = True):
        self.cfg, self.bb, self.data, self.out, self.progress = cfg, backbone, data, Path(out), progress
        queries = [q for q in data.dataset.queries if q.output is not None]
        label = {x: i for i, x in enumerate(backbone.labels)}
        self.texts = [q.input for q in queries]
        self.gold = [label[q.output] for q in queries]
        self.qdomain = [data.query_domains[q.id] for q in queries]
        users: dict[tuple, int] = {}
        self.quser = torch.tensor([users.setdefault(q.profile, len(users)) for q in queries])
        self.key_map = None
        if cfg.query == "sif":  # fitted on every history text: the bank's own data, no query among them
            sif = SifQuery.fit(backbone, sorted({e.input for q in queries for e in q.profile}))
            self.qembeds, self.key_map = [sif.query(t) for t in self.texts], sif.project
        else:
            self.qembeds = [query_embeds(backbone, t, cfg.query) for t in self.texts]
        if embedder is None and cfg.embedder == "lm":
            def embedder(texts):
                return torch.stack([backbone.query_embeds(t).mean(0) for t in texts])
        self.groups = select_groups(cfg, data, out, embedder)


    def _samples(self, examples) -> list[tuple[str, int]]:
        label = {x: i for i, x in enumerate(self.bb.labels)}
        return [(e.input, label[e.output]) for e in examples if e.output in label]

    def banks(self, seed: int) -> dict[str, object]:
        """The seed's OVT sets (trained, or loaded from `ovts/`): `buffer/plain`, `representative/plain`, `.../nat@dev`."""
        from nvcc_pt.prompt.bank import OVTBank

        cfg, want = self.cfg, {}
        for m in (METHODS[name] for name in cfg.methods if METHODS[name].prompt):
            for device in (cfg.devices if m.mitigation.noise_aware else [None]):
                want[m.bank + (f"@{device}" if device else "")] = (m.selection, device)
        banks, todo = {}, []
        for name, spec in want.items():
            folder = self.out / "ovts" / self.cfg.fingerprint() / f"seed{seed}" / name.replace("/", "-")
            if (folder / "bank.json").is_file():
                banks[name] = OVTBank.load(folder)
            else:
                todo.append((name, spec, folder))
        steps = sum(self.cfg.steps for _ in todo)
        with tqdm(total=steps, desc=f"training OVTs (seed {seed})", disable=not self.progress or not todo) as bar:
            for name, (selection, device), folder in todo:
                groups = self.groups[selection]
                target = None if device is None else f"{device}-{cfg.crossbar}"
                ovts = self.bb.train_ovts([self._samples(g) for _, g in groups], n_virtual=cfg.n_virtual,
                                          steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, init=cfg.init,
                                          target=target,
                                          sigma=cfg.train_sigma if target else None, seed=seed, progress=bar)
                bank = OVTBank()
                for i, ((u, g), ovt) in enumerate(zip(groups, ovts)):
                    bank.add(f"u{u}/{i}", ovt, {"user": u, "domains": _domains_of(g)})
                bank.save(folder)
                banks[name] = bank
        return banks

    def evaluate(self, seed: int, device: str, sigma: float, banks: dict) -> list[dict]:
        """Every method's point at (device, sigma, seed): accuracy and retrieval accuracy per chip."""
        cfg, n = self.cfg, len(self.texts)
        target = f"{device}-{cfg.crossbar}"
        uses: dict[str, set[str]] = {}
        for name in cfg.methods:
            m = METHODS[name]
            if m.prompt:
                key = m.bank + (f"@{device}" if m.mitigation.noise_aware else "")
                uses.setdefault(key, set()).add(m.mitigation.search)
        compiled = {}
        for key, searches in uses.items():
            for search in sorted(searches, reverse=True):  # ssa first: its store is the one read back
                scales, weights = SEARCH[search]
                compiled[key, search] = banks[key].compile(target, sigma=sigma, scales=scales, weights=weights,
                                                           seed=seed, device=self.bb.device, key_map=self.key_map)
        masks = {key: self.quser[:, None] == torch.tensor([banks[key].meta[k]["user"] for k in banks[key].keys])[None]
                 for key in uses}
        results = {name: {"values": [], "retrieval": []} for name in cfg.methods}
        memo: dict[tuple, tuple[float, float]] = {}
        for chip in range(cfg.chips):
            chip_seed = seed * 1_000_003 + chip
            for key, searches in uses.items():
                read = None
                for search in sorted(searches, reverse=True):
                    cb = compiled[key, search].program(chip_seed)
                    read = cb.read_back() if read is None else read
                    idx = cb.scores(self.qembeds).cpu().masked_fill(~masks[key], -math.inf).argmax(1)
                    # sigma 0 programs identical chips: the same read-back and choices give the same numbers
                    tag = (key, search, hashlib.sha1(read.cpu().numpy().tobytes()).hexdigest(), tuple(idx.tolist()))
                    if tag not in memo:
                        preds = self.bb.classify(self.texts, read[idx])
                        acc = sum(p == g for p, g in zip(preds, self.gold)) / n
                        doms = [banks[key].meta[banks[key].keys[i]]["domains"] for i in idx.tolist()]
                        memo[tag] = (acc, sum(d in ds for d, ds in zip(self.qdomain, doms)) / n)
                    for name in cfg.methods:
                        m = METHODS[name]
                        if m.prompt and m.mitigation.search == search and \
                                key == m.bank + (f"@{device}" if m.mitigation.noise_aware else ""):
                            results[name]["values"].append(memo[tag][0])
                            results[name]["retrieval"].append(memo[tag][1])
        if "no-prompt" in cfg.methods:
            acc = self.no_prompt()
            results["no-prompt"] = {"values": [acc] * cfg.chips, "retrieval": None}
        return [{"method": name, "device": device, "sigma": sigma, "seed": seed, "fingerprint": cfg.fingerprint(),
                 **results[name]} for name in cfg.methods]

    def no_prompt(self) -> float:
        if not hasattr(self, "_no_prompt"):
            preds = self.bb.classify(self.texts)
            self._no_prompt = sum(p == g for p, g in zip(preds, self.gold)) / len(self.gold)
        return self._no_prompt


def query_embeds(backbone, text: str, query: str = "mean") -> torch.Tensor:
    """The `tokens` or `mean` search query of `text`: `[T, H]` token embeddings, or `[1, H]` their mean
    (pooled to every OVT position alike). `sif` needs a fitted `query.SifQuery`.

    Example:
        >>> query_embeds(bb, "a large feline of forests", "mean").shape     # torch.Size([1, 576])
    """
    t = backbone.query_embeds(text)
    return t.mean(0, keepdim=True) if query == "mean" else t


def command_for(cfg: StudyConfig, out: str | Path, device: str = "cpu") -> str:
    """The `nvcc-pt nvcimpt study` command line that runs `cfg` into `out`."""
    import shlex

    parts = ["nvcc-pt", "nvcimpt", "study"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "methods" and value == tuple(METHODS):
            continue
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, tuple) \
            else f"{value:g}" if isinstance(value, float) else str(value)
        parts += [f"--{f.name.replace('_', '-')}", text]
    return " ".join(shlex.quote(p) for p in parts + ["--device", device, "--out", str(out)])


def read_points(path: Path, fingerprint: str) -> list[dict]:
    """The points of a `points.jsonl` file; `DataError` when they were measured with another configuration.

    A last line cut short (an interrupted run) is dropped from the file, so its point is measured again.
    """
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines = lines[:-1]
        write_text(path, "".join(line + "\n" for line in lines), "points file")
    points = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            p = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{i} is not a JSON point; delete the line (it is measured again) or the file") from None
        if not isinstance(p, dict) or p.get("fingerprint") != fingerprint:
            fp = p.get("fingerprint") if isinstance(p, dict) else None
            raise DataError(f"{path}:{i} was measured with another configuration (fingerprint {fp} != {fingerprint}); "
                            f"use another --out folder or delete {path}")
        points.append(p)
    return points


def run_study(cfg: StudyConfig, out: str | Path, *, backbone=None, embedder=None, device: str = "cpu",
              progress: bool = True, log=print, prepare_only: bool = False) -> list[dict]:
    """Run (or resume) the study into `out`; returns every point of the configuration's sweep.

    `embedder` (a callable list[str] -> Tensor [n, d]) replaces the configuration's sentence embedder.
    `prepare_only` writes the data and the representative selection (`select_groups`) and stops, without the LM
    (with `embedder="lm"` the selection needs the LM and is left to the run): a machine without `wordnet-base`
    or the sentence embedder (a GPU host, say) then runs the study from the prepared folder.
    """
    t_start, cpu_start = time.time(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp = cfg.fingerprint()
    jsonl = out / "points.jsonl"
    points = read_points(jsonl, fp)
    done = {(p["method"], p["device"], p["sigma"], p["seed"]) for p in points}
    groups = [(s, d, sg) for s in cfg.seeds for d in cfg.devices for sg in cfg.sigmas
              if any((m, d, sg, s) not in done for m in cfg.methods)]
    c = cost(cfg)
    log(f"study {fp}: {c['points']} points ({len(cfg.methods)} methods x {len(cfg.devices)} devices x "
        f"{len(cfg.sigmas)} sigmas x {len(cfg.seeds)} seeds), {cfg.chips} chips each; {len(done)} already in {jsonl}")
    log(f"cost: {c['ovts']} OVTs, {c['train_steps']} batched training steps ({c['train_sequences']} sequences), "
        f"at most {c['eval_sequences']} evaluation forwards")
    write_text(out / "config.json", json.dumps({**asdict(cfg), "fingerprint": fp}, indent=1), "study configuration")
    if not groups and not prepare_only:
        return [p for p in points if p["method"] in cfg.methods and p["device"] in cfg.devices
                and p["sigma"] in cfg.sigmas and p["seed"] in cfg.seeds]
    data = prepare_data(cfg, out / "data")
    if prepare_only:
        if embedder is not None or cfg.embedder != "lm":
            select_groups(cfg, data, out, embedder)
        log(f"prepared {out / 'data'} and {out / 'selection'}")
        return []
    if backbone is None:
        from nvcc_pt.prompt.backbone import load_backbone

        backbone = load_backbone(cfg.model, data.labels, device)
    study = Study(cfg, backbone, data, out, embedder=embedder, progress=progress)
    lm_train, lm_eval = estimate(study, c)
    chips = estimate_chips(study)
    log(f"estimated time: LM training {lm_train / 60:.1f} min, LM evaluation at most {lm_eval / 60:.1f} min, "
        f"compiling, programming and searching the OVT banks {chips / 60:.1f} min on {device} "
        f"(from one timed batch and chip); total {(lm_train + lm_eval + chips) / 60:.1f} min")
    t0 = time.time()
    with tqdm(total=len(groups), desc="points (device, sigma, seed)", disable=not progress) as bar:
        for seed in sorted({s for s, _, _ in groups}):
            banks = study.banks(seed)
            for s, d, sg in (g for g in groups if g[0] == seed):
                new = [p for p in study.evaluate(s, d, sg, banks) if (p["method"], d, sg, s) not in done]
                with jsonl.open("a", encoding="utf-8") as f:  # one line per point: an interrupted run loses none
                    for p in new:
                        f.write(json.dumps(p) + "\n")
                points += new
                bar.update(1)
                bar.set_postfix(device=d, sigma=sg, seed=s)
    wall, cpu = time.time() - t_start, time.process_time() - cpu_start
    log(f"measured {len(groups)} (device, sigma, seed) groups in {time.time() - t0:.0f} s; this run {wall:.0f} s "
        f"wall, {cpu:.0f} s CPU")
    with (out / "runs.jsonl").open("a", encoding="utf-8") as f:  # what each (resumed) run cost
        f.write(json.dumps({"groups": len(groups), "points": len(points), "wall_s": round(wall, 1),
                            "cpu_s": round(cpu, 1), "device": device, "torch_threads": torch.get_num_threads(),
                            "chip_draws": f"on {device}, keyed (a seed is the same chip on every device)",
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}) + "\n")
    return [p for p in points if p["method"] in cfg.methods and p["device"] in cfg.devices
            and p["sigma"] in cfg.sigmas and p["seed"] in cfg.seeds]
