"""The OVT bank's search query: SIF retrieves an OVT initialised from its domain's samples; the bank on a device."""

import math
import random

import pytest
import torch

from nvcc_pt.errors import InputError
from nvcc_pt.prompt.backbone import load_backbone
from nvcc_pt.prompt.bank import OVTBank
from nvcc_pt.prompt.query import SifQuery
from nvcc_pt.prompt.study import SEARCH, query_embeds

COMMON = "a the of and in to is with for by".split()
DOMAINS = {d: [f"{d}{i}" for i in range(6)] for d in ("zoo", "mill")}  # random embeddings: only shared words tell


def _text(rng: random.Random, domain: str) -> str:
    """Six common words and three of the domain's, shuffled: the domain is a third of the tokens."""
    words = rng.choices(COMMON, k=6) + rng.sample(DOMAINS[domain], 3)
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    bb = load_backbone("builtin:tiny-gpt2", labels=("zoo", "mill"))
    rng = random.Random(0)
    history = {d: [_text(rng, d) for _ in range(12)] for d in DOMAINS}
    queries = [(d, _text(rng, d)) for d in DOMAINS for _ in range(20)]
    bank = OVTBank()
    for d, texts in history.items():  # each OVT starts from its domain's samples, as the study trains them
        bank.add(d, bb.sample_init([(t, 0) for t in texts], 4), {"domains": [d]})
    return bb, history, queries, bank


def _retrieval(bank, queries, qembeds, sigma, search, key_map=None, chips=3) -> float:
    scales, weights = SEARCH[search]
    cb = bank.compile("rram1-128x128", sigma=sigma, scales=scales, weights=weights, key_map=key_map)
    hits = []
    for chip in range(chips):
        idx = cb.program(chip).scores(qembeds).argmax(1).tolist()
        hits += [bank.keys[i] == d for (d, _), i in zip(queries, idx)]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("search", ["ssa", "mips"])
def test_sif_query_retrieves_the_ovt_of_its_domain(setup, search):
    bb, history, queries, bank = setup
    sif = SifQuery.fit(bb, [t for texts in history.values() for t in texts])
    qembeds = [sif.query(t) for _, t in queries]
    assert qembeds[0].shape == (1, bb.hidden)
    for sigma in (0.0, 0.1):
        assert _retrieval(bank, queries, qembeds, sigma, search, sif.project) >= 0.9, sigma
    # the plain mean is swamped by the common words
    means = [query_embeds(bb, t, "mean") for _, t in queries]
    assert _retrieval(bank, queries, means, 0.0, search) <= 0.8


def test_sif_projection_removes_the_mean_and_the_common_direction(setup):
    bb, history, _, _ = setup
    texts = [t for ts in history.values() for t in ts]
    sif = SifQuery.fit(bb, texts)
    h = torch.stack([sif.project(sif.embed(t)) for t in texts])
    assert h.mean(0).norm() < 1e-4 * h.norm(dim=1).mean()  # centred on the corpus
    assert (h @ sif.u.T).abs().max() < 1e-4  # nothing left along the table's top principal directions
    assert torch.allclose(sif.u @ sif.u.T, torch.eye(sif.u.shape[0]), atol=1e-5)
    ovts = torch.randn(3, 4, bb.hidden)
    assert torch.allclose(sif.project(ovts)[1, 2], sif.project(ovts[1, 2]))  # per position, any leading shape
    with pytest.raises(InputError, match="at least two texts"):
        SifQuery.fit(bb, ["only one"])


def test_bank_on_a_device_is_the_cpu_path(setup):
    """`compile(device=...)` programs, searches and reads back there; on the CPU it gives the CPU's numbers."""
    bb, _, queries, bank = setup
    qembeds = [query_embeds(bb, t, "mean") for _, t in queries]
    plain = bank.compile("rram1-128x128", sigma=0.1, seed=3)
    on = bank.compile("rram1-128x128", sigma=0.1, seed=3, device=bb.device)
    for chip in (0, 1):
        assert torch.equal(plain.program(chip).read_back(), on.program(chip).read_back())
        assert torch.equal(plain.scores(qembeds), on.scores(qembeds))
    with pytest.raises(InputError, match="key_map"):
        bank.compile("rram1-128x128", key_map=lambda x: x[:, :2])


def test_mean_query_is_one_row(setup):
    bb, _, queries, _ = setup
    t = queries[0][1]
    assert query_embeds(bb, t, "tokens").shape == (len(t.split()), bb.hidden)
    assert torch.allclose(query_embeds(bb, t, "mean")[0], query_embeds(bb, t, "tokens").mean(0))
    assert not math.isnan(query_embeds(bb, t, "mean").sum().item())


def test_one_row_query_makes_ssa_a_scaled_mips():
    from nvcc_pt.prompt.ssa import SSA_SCALES, SSA_WEIGHTS, ssa_scores_direct

    gen = torch.Generator().manual_seed(0)
    ovts, query = torch.randn(5, 8, 16, generator=gen), torch.randn(1, 16, generator=gen)
    ssa = ssa_scores_direct(query, ovts, SSA_SCALES, SSA_WEIGHTS)
    mips = ssa_scores_direct(query, ovts, (1,), (1.0,))
    assert torch.allclose(ssa, 1.55 * mips, rtol=1e-5, atol=1e-5)  # 1 + 0.8/2 + 0.6/4: the same ranking at sigma 0
