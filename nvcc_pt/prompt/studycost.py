"""What a study costs: its points, training and evaluation sequences, and the time they take on a device.

`cost` counts from the configuration alone; `estimate` times one batch of the LM's training and evaluation,
`estimate_chips` one chip of each OVT bank (compile, program, search), and scales them to the whole study.

Example:
    >>> cost(StudyConfig())["points"]
    432
"""

from __future__ import annotations

import time

import torch

from nvcc_pt.prompt.methods import METHODS
from nvcc_pt.prompt.ssa import SSA_SCALES, SSA_WEIGHTS

SEARCH = {"ssa": (SSA_SCALES, SSA_WEIGHTS), "mips": ((1,), (1.0,))}
"""Scales and weights of each search."""


def cost(cfg) -> dict:
    """Points, training steps and sequences, and evaluation forwards of a study (an upper bound: sigma 0 is cheaper)."""
    ms = [METHODS[m] for m in cfg.methods]
    per_buffer = {"buffer": 1, "representative": cfg.clusters}
    sets = {(m.selection, m.mitigation.noise_aware) for m in ms if m.prompt}
    ovts = sum(cfg.users * cfg.buffers * per_buffer[s] * (len(cfg.devices) if nat else 1) for s, nat in sets)
    queries = cfg.users * cfg.queries_per_user
    points = len(cfg.methods) * len(cfg.devices) * len(cfg.sigmas) * len(cfg.seeds)
    prompted = sum(m.prompt for m in ms)
    n_sets = sum(len(cfg.devices) if nat else 1 for _, nat in sets)
    return {"points": points, "ovts": ovts * len(cfg.seeds), "train_steps": len(cfg.seeds) * n_sets * cfg.steps,
            "train_sequences": ovts * len(cfg.seeds) * cfg.steps * cfg.batch_size,
            "eval_sequences": prompted * len(cfg.devices) * len(cfg.sigmas) * len(cfg.seeds) * cfg.chips * queries}


def estimate(study, c: dict, n: int = 16) -> tuple[float, float]:
    """Seconds the LM needs for the study's training and evaluation sequences, from one timed batch of `n` of each."""
    bb = study.bb
    texts = (study.texts * n)[:n]
    prompts = torch.zeros(n, study.cfg.n_virtual, bb.hidden, device=bb.device, requires_grad=True)

    def timed(fn) -> float:
        fn()  # warm-up
        if bb.device.type == "cuda":
            torch.cuda.synchronize(bb.device)
        t = time.perf_counter()
        fn()
        if bb.device.type == "cuda":
            torch.cuda.synchronize(bb.device)
        return time.perf_counter() - t

    train = timed(lambda: bb.logits(texts, prompts).sum().backward())
    evaluate = timed(lambda: bb.classify(texts, prompts.detach()))
    return c["train_sequences"] / n * train, c["eval_sequences"] / n * evaluate


def estimate_chips(study) -> float:
    """Seconds the simulator needs to compile, program and search the study's OVT banks, from one timed chip of each.

    Banks of random OVTs of the study's sizes stand in for the trained ones (the cost does not depend on the values).
    """
    from nvcc_pt.prompt.bank import OVTBank

    cfg, bb = study.cfg, study.bb
    pairs = {(METHODS[m].bank, METHODS[m].selection, METHODS[m].mitigation.search) for m in cfg.methods
             if METHODS[m].prompt}
    gen = torch.Generator().manual_seed(0)
    per_point = per_chip = 0.0
    for _, selection, search in sorted(pairs):
        bank = OVTBank()
        for i in range(len(study.groups[selection])):
            bank.add(f"o{i}", torch.randn(cfg.n_virtual, bb.hidden, generator=gen))
        scales, weights = SEARCH[search]
        t = time.perf_counter()
        cb = bank.compile(f"{cfg.devices[0]}-{cfg.crossbar}", sigma=max(cfg.sigmas), scales=scales, weights=weights,
                          device=bb.device, key_map=study.key_map)
        t1 = time.perf_counter()
        for chip in range(2):  # the first one warms up
            t2 = time.perf_counter()
            cb.program(chip).read_back()
            cb.scores(study.qembeds).cpu()
        per_point += t1 - t
        per_chip += time.perf_counter() - t2
    return len(cfg.seeds) * len(cfg.devices) * len(cfg.sigmas) * (per_point + cfg.chips * per_chip)
