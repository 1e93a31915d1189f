"""NVCiM-PT: selection, SSA, device noise on OVTs, noise-aware training, the bank, PEFT round trip, harness."""

import pytest
import torch
from nvcc_pt.targets.simulator import op_generator
from transformers import GPT2Config, GPT2LMHeadModel

import nvcc_pt
from nvcc_pt.errors import InputError, NvccPtError, PlanFormatError
from nvcc_pt.prompt import SoftPromptLM
from nvcc_pt.prompt.bank import OVTBank
from nvcc_pt.prompt.lamp import Example
from nvcc_pt.prompt.noise import read_back_ovt
from nvcc_pt.prompt.selection import select_representatives
from nvcc_pt.prompt.ssa import ssa_keys, ssa_query, ssa_scores_direct

# -- representative selection ------------------------------------------------------------------


def _planted(n_per=8, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(dim)[:3] * 10
    points, buffer = [], []
    for c in range(3):
        for j in range(n_per):
            if j % 2 == 0:
                u = torch.randn(dim, generator=g)
                u[c] = 0.0  # off-axis: the angle to the center grows with the spread
            # Mirrored pairs keep the centroid on the center; pair j//2 is the (j//2)-th closest.
            spread = 0.1 + 0.6 * (j // 2)
            points.append(centers[c] + (-1) ** j * spread * u / u.norm())
            buffer.append(Example(f"c{c}s{j}", "out", f"{c}-{j}", {"cluster": c}))
    table = {e.input: p for e, p in zip(buffer, points)}
    return buffer, lambda texts: torch.stack([table[t] for t in texts])


def test_selection_recovers_planted_clusters_and_central_samples():
    buffer, embed = _planted()
    domains = select_representatives(buffer, n_clusters=3, per_cluster=2, embedder=embed)
    found = sorted(tuple(sorted({buffer[i].meta["cluster"] for i in d.members})) for d in domains)
    assert found == [(0,), (1,), (2,)]
    assert all(len(d.members) == 8 for d in domains)
    for d in domains:
        c = buffer[d.members[0]].meta["cluster"]
        # The representatives are the samples closest to the planted center (smallest spread first).
        assert {e.id for e in d.examples} == {f"{c}-0", f"{c}-1"}


def test_selection_bad_input():
    buffer, embed = _planted()
    with pytest.raises(InputError, match="empty"):
        select_representatives([], embedder=embed)
    with pytest.raises(InputError, match="fewer than n_clusters"):
        select_representatives(buffer[:2], n_clusters=3, embedder=embed)
    assert issubclass(InputError, NvccPtError)


def test_default_embedder_is_minilm():
    import nvcc_pt.prompt.selection as sel

    e = sel.minilm_embed(["a film about space travel", "a space opera movie", "a recipe for bread"])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


# -- scaled search ------------------------------------------------------------------------------


def test_ssa_scores_equal_direct_computation():
    g = torch.Generator().manual_seed(0)
    ovts = torch.randn(5, 8, 16, generator=g)
    for length in (3, 8, 13):
        q = torch.randn(length, 16, generator=g)
        one_product = ssa_keys(ovts) @ ssa_query(q, 8)
        assert torch.allclose(one_product, ssa_scores_direct(q, ovts), atol=1e-4)
    # Scales and weights are parameters; MIPS is scale 1 alone: plain dot products of the pooled query.
    q = torch.randn(8, 16, generator=g)
    mips = ssa_keys(ovts, (1,), (1.0,)) @ ssa_query(q, 8, (1,))
    assert torch.allclose(mips, (ovts * q).sum((1, 2)), atol=1e-4)
    custom = ssa_keys(ovts, (2, 8), (0.5, 2.0)) @ ssa_query(q, 8, (2, 8))
    assert torch.allclose(custom, ssa_scores_direct(q, ovts, (2, 8), (0.5, 2.0)), atol=1e-4)
    assert not torch.allclose(custom, mips, atol=1e-2)


def test_ovt_noise_is_the_simulators():
    ovt = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    lin = torch.nn.Linear(32, 8, bias=False)
    lin.weight.data = ovt.clone()
    cm = nvcc_pt.compile(lin, "fefet6-128x128", example_inputs=(torch.zeros(1, 32),), seed=5)
    programmed = cm.plan.states()[0][1].weight
    assert torch.equal(read_back_ovt(ovt, "fefet6-128x128", op_generator(5, 0)), programmed)
    clean = read_back_ovt(ovt, "fefet6-128x128", op_generator(5, 0), sigma=0.0)
    assert (clean - ovt).abs().max() <= ovt.abs().amax(1).max() / 127  # only quantization left
    censored = read_back_ovt(ovt, "fefet6-128x128", op_generator(5, 0), censor=0.5)
    loose = read_back_ovt(ovt, "fefet6-128x128", op_generator(5, 0), censor=50.0)
    # a censor 50 sigmas out changes nothing but the rounding of taking a level off and adding it back
    assert torch.allclose(loose, programmed, rtol=0, atol=1e-6) and not torch.allclose(censored, programmed)


def _bank(n=6, hidden=32, n_virtual=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = OVTBank()
    for i in range(n):
        bank.add(f"d{i}", torch.randn(n_virtual, hidden, generator=g), {"domain": i})
    return bank


def test_search_at_sigma_zero_equals_exact_search():
    bank = _bank()
    g = torch.Generator().manual_seed(1)
    queries = [bank.get(f"d{i % 6}").repeat(3, 1)[: 3 + i] + 0.8 * torch.randn(3 + i, 32, generator=g)
               for i in range(20)]
    cb = bank.compile("rram4-128x128", sigma=0.0)
    idx, scores = cb.search(queries)
    exact = torch.stack([ssa_scores_direct(q, bank.stacked()) for q in queries])
    assert idx == exact.argmax(1).tolist()
    assert torch.allclose(scores, exact, rtol=0.03, atol=0.03 * exact.abs().max().item())
    noisy = bank.compile("rram4-128x128", sigma=0.1).scores(queries)
    assert not torch.allclose(noisy, exact, rtol=0.03, atol=0.03 * exact.abs().max().item())


def test_retrieval_accuracy_falls_as_sigma_grows():
    bank = _bank(n=8)
    g = torch.Generator().manual_seed(3)
    truth = [i % 8 for i in range(64)]
    queries = [bank.get(f"d{d}") + 4.0 * torch.randn(8, 32, generator=g) for d in truth]
    acc = {}
    for sigma in (0.0, 0.2, 0.5):  # the group's per-weight model is about half the per-cell one's noise
        cb = bank.compile("fefet6-128x128", sigma=sigma)
        hits = []
        for seed in range(3):
            idx, _ = cb.program(seed).search(queries)
            hits.append(sum(i == t for i, t in zip(idx, truth)) / len(truth))
        acc[sigma] = sum(hits) / len(hits)
    assert acc[0.0] > acc[0.2] > acc[0.5]
    # The OVT that is used is the one read back from the cells.
    cb = bank.compile("fefet6-128x128", sigma=0.1)
    stored = cb.read_back()
    assert not torch.allclose(stored, bank.stacked(), atol=1e-2)
    assert torch.equal(cb.retrieve(queries[:1])[0], stored[cb.search(queries[:1])[0][0]])


def test_bank_round_trip_and_bad_input(tmp_path):
    bank = _bank(n=3)
    bank.remove("d1")
    bank.save(tmp_path / "bank")
    back = OVTBank.load(tmp_path / "bank")
    assert back.keys == ["d0", "d2"] and back.meta["d2"] == {"domain": 2}
    assert torch.equal(back.stacked(), bank.stacked())
    with pytest.raises(InputError, match="shape"):
        back.add("wide", torch.zeros(8, 48))
    with pytest.raises(InputError, match="hidden size is 64"):
        back.check_width(64)
    with pytest.raises(InputError, match="no OVT"):
        back.remove("nope")
    with pytest.raises(InputError, match="empty"):
        OVTBank().stacked()
    (tmp_path / "bank" / "bank.json").write_text("{")
    with pytest.raises(PlanFormatError):
        OVTBank.load(tmp_path / "bank")


# -- soft prompts and training --------------------------------------------------------------------


def _tiny_lm(vocab=40, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


class _Tok:
    pad_token_id, eos_token_id = 0, 1

    def encode(self, text, add_special_tokens=False):
        return [3 + (sum(map(ord, w)) % 37) for w in text.split()]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_noise_aware_training_narrows_the_noise_gap():
    from nvcc_pt.prompt.training import example_loss, train_ovt

    model, tok = _tiny_lm(), _Tok()
    examples = [Example(f"w{i} x{i % 3} y", f"z{i % 4}") for i in range(12)]
    target, sigma = "fefet6-128x128", 0.1

    def gap(ovt):
        clean = example_loss(model, tok, examples, ovt)
        noisy = sum(example_loss(model, tok, examples, read_back_ovt(ovt, target, torch.Generator().manual_seed(100 + s),
                                                                     sigma=sigma)) for s in range(8)) / 8
        return noisy - clean

    plain = train_ovt(model, tok, examples, steps=150, lr=0.1, progress=False)
    aware = train_ovt(model, tok, examples, steps=150, lr=0.1, target=target, sigma=sigma, progress=False)
    assert example_loss(model, tok, examples, plain) < example_loss(model, tok, examples, None)
    assert gap(aware) < gap(plain)
    # Seeded: the same call gives the same OVT.
    again = train_ovt(model, tok, examples, steps=150, lr=0.1, target=target, sigma=sigma, progress=False)
    assert torch.equal(aware, again)


def test_soft_prompt_peft_round_trip(tmp_path):
    model = _tiny_lm()
    lm = SoftPromptLM(model, num_virtual_tokens=4, seed=3)
    with torch.no_grad():
        lm.prompt.add_(0.5)
    lm.save_peft(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    back = SoftPromptLM.load_peft(_tiny_lm(), tmp_path / "adapter")
    assert torch.allclose(back.prompt, lm.prompt)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(back(ids), lm(ids), atol=1e-5)
    with pytest.raises(InputError, match="not a PEFT"):
        SoftPromptLM.from_peft(model)


# -- harness ------------------------------------------------------------------------------------


def test_harness_runs_and_writes_table_json_plot(tmp_path):
    from nvcc_pt.prompt.harness import EvalConfig, evaluate
    from nvcc_pt.prompt.lamp import load_lamp
    from nvcc_pt.prompt.synthetic import SyntheticWorld

    world = SyntheticWorld(task=2, n_users=2, n_domains=3, domains_per_user=2, history_len=20, queries_per_user=4)
    ds = load_lamp(*world.write(tmp_path))
    tok = world.tokenizer()
    model = _tiny_lm(vocab=len(tok))
    vocab = tok.get_vocab()

    def bow(texts):
        x = torch.zeros(len(texts), len(vocab))
        for i, t in enumerate(texts):
            for w in t.split():
                x[i, vocab[w]] += 1
        return x

    cfg = EvalConfig(devices=("rram1",), sigmas=(0.1,), instances=2, steps=3, buffer_size=10)
    res = evaluate(model, tok, ds, cfg, embedder=bow, query_domains=world.query_domains(), progress=False)
    assert {r["method"] for r in res.rows} == set(cfg.methods)
    row = res.row("nvcimpt", "rram1", 0.1)
    assert len(row["values"]) == 2 and 0 <= row["kpp"] <= row["mean"] <= 1 and row["retrieval"] is not None
    assert "nvcimpt-no-nat" in res.to_text()
    res.to_json(tmp_path / "eval.json")
    assert res.plot(tmp_path / "eval.png").stat().st_size > 1000
    with pytest.raises(InputError, match="unknown method"):
        EvalConfig(methods=("magic",))
    wide = OVTBank()
    wide.add("x", torch.zeros(8, 48), {"user": 0, "domain": 0})
    with pytest.raises(InputError, match="hidden size"):
        evaluate(model, tok, ds, EvalConfig(devices=("rram1",), sigmas=(0.1,), instances=1,
                                            methods=("pt-mips",)), banks={"pt": wide}, progress=False)


def test_noise_aware_training_sees_what_the_compiled_bank_reads_back():
    from nvcc_pt.prompt.bank import OVTBank
    from nvcc_pt.prompt.training import _OvtStore

    ovt = torch.randn(4, 16) * 0.05
    store = _OvtStore(ovt, "rram4-128x128", 0.1, None, seed=0)
    seen = store.read_back(0)  # step 0 of seed 0 programs with seed 0
    bank = OVTBank()
    bank.add("a", ovt)
    assert torch.equal(seen.detach(), bank.compile("rram4-128x128", sigma=0.1, seed=0).read_back()[0])
    assert not torch.equal(seen.detach(), ovt)
    seen.sum().backward()  # straight through to the clean OVT
    assert torch.equal(store.param.grad, torch.ones_like(ovt))
