"""map_dynamic: attention's QK^T and AV on crossbars, their operand written per input.

Covers the decomposition (equal to SDPA), the plan (two more mapped ops per attention layer, arrays
of their own), the numbers (exact equals the model, noisy draws write noise a hand-built reference
reproduces, seeds replay), the cost (cell writes counted from the shapes) and dynamic shapes.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from nvcc_pt.passes.decompose_attention import ATTENTION, _Emitter, decompose_attention
from nvcc_pt.passes.lower import write_states
from nvcc_pt.targets.costs import ISAAC_COSTS
from nvcc_pt.targets.devices import magnitudes, program_levels, quantize_weight, slice_levels
from nvcc_pt.targets.philox import BlockKey
from torch import nn

import nvcc_pt
from nvcc_pt.errors import ExportError
from nvcc_pt.meta import NoiseInfo
from nvcc_pt.models import build_model
from nvcc_pt.passmanager import PassContext, run_passes

DYNAMIC = {"map_dynamic": True}


def _logits(out):
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def llama():
    return build_model("builtin:tiny-llama")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def noisy(llama):
    return nvcc_pt.compile(llama, fidelity="noisy", seed=3, policy=DYNAMIC)


@pytest.fixture(scope="module")
def plain(llama):
    """The same compile without map_dynamic."""
    return nvcc_pt.compile(llama, fidelity="noisy", seed=3)


# -- the decomposition ---------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.kwargs)


def _decomposed(module, args, map_dynamic=True):
    gm = torch.export.export(module, args, strict=False).module()
    ctx = PassContext(target=nvcc_pt.get_target("reram-128x128"), policy=nvcc_pt.MappingPolicy(map_dynamic=map_dynamic))
    return run_passes(gm, ctx, [decompose_attention])


def _parts(gm):
    return sorted(n.meta[ATTENTION] for n in gm.graph.nodes if ATTENTION in n.meta)


def _qkv(b=2, hq=4, hkv=4, length=5, source=7, e=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, length, e, generator=g), torch.randn(b, hkv, source, e, generator=g),
            torch.randn(b, hkv, source, 3, generator=g))


@pytest.mark.parametrize("case", ["plain", "bool-mask", "float-mask", "causal", "scale", "gqa", "gqa-causal-mask"])
def test_decomposition_equals_sdpa(case):
    q, k, v = _qkv(hkv=2 if case.startswith("gqa") else 4)
    g = torch.Generator().manual_seed(1)
    kwargs, mask = {}, None
    if case in ("bool-mask", "gqa-causal-mask"):
        mask = torch.rand(2, 1, 5, 7, generator=g) > 0.4
        mask[0, 0, 2] = False  # a fully masked row: SDPA gives zeros there
    if case == "float-mask":
        mask = torch.randn(5, 7, generator=g)
    if case == "causal":
        kwargs["is_causal"] = True
    if case == "scale":
        kwargs["scale"] = 0.3
    if case.startswith("gqa"):
        kwargs["enable_gqa"] = True
    module = Attention(**kwargs)
    args = (q, k, v) if mask is None else (q, k, v, mask)
    gm = _decomposed(module, args)
    assert not [n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert _parts(gm) == ["av", "qk"]
    torch.testing.assert_close(gm(*args), module(*args), rtol=0, atol=1e-5)
    if case.startswith("gqa"):  # each key/value head is written once: the products run over Hkv = 2 heads
        qk = next(n for n in gm.graph.nodes if n.meta.get(ATTENTION) == "qk")
        assert qk.args[1].meta["val"].shape[1] == 2


def test_decomposition_leaves_attention_alone_without_map_dynamic_or_with_dropout():
    args = _qkv()
    for gm in (_decomposed(Attention(), args, map_dynamic=False), _decomposed(Attention(dropout_p=0.1), args)):
        assert [n for n in gm.graph.nodes if "scaled_dot_product" in str(n.target)]
        assert _parts(gm) == []


# -- the plan ------------------------------------------------------------------------------------
def test_emitted_ops_leave_the_graphs_dynamic_inputs_dynamic():
    class Sum(nn.Module):
        def forward(self, x, y):
            return x.sum() + y.sum()

    ep = torch.export.export(Sum(), (torch.randn(2, 3), torch.randn(2, 3)),
                             dynamic_shapes=({0: torch.export.Dim("batch", max=64)}, None))
    x, y = [n for n in ep.graph.nodes if n.op == "placeholder"]
    anchor = next(n for n in ep.graph.nodes if n.op == "output")
    _Emitter(ep.graph, anchor)(torch.ops.aten.add.Tensor, x, y)  # broadcasting compares the batch with 2
    assert not x.meta["val"].shape[0].node.expr.is_number  # a guard there would fix every call's batch at 2


def test_map_dynamic_maps_qk_and_av_of_every_attention_layer(llama, noisy, plain):
    layers = llama.config.num_hidden_layers
    assert noisy.report.totals["mapped_ops"] == plain.report.totals["mapped_ops"] + 2 * layers
    # attention's products; the rotary embedding's product of positions stays digital (not lowerable)
    dynamic = [o for o in noisy.report.ops if o["kind"] == "dynamic" and o["module"].endswith("self_attn")]
    assert [o["mapped"] for o in dynamic] == [True] * 2 * layers
    assert {o["module"] for o in dynamic} == {f"model.layers.{i}.self_attn" for i in range(layers)}
    assert not [o for o in plain.report.ops if o["kind"] == "dynamic" and o["mapped"]]
    assert "dynamic" not in plain.report.totals
    # Their arrays are their own: no two ops' placements overlap, and each head's grid is counted.
    spans = []
    for recs in noisy.plan.records.values():
        place = recs.get(nvcc_pt.meta.PLACEMENT)
        if place is not None:
            heads = recs[nvcc_pt.meta.MATMUL].instances
            assert place.arrays == recs[nvcc_pt.meta.TILES].arrays * heads
            spans.append((place.first_array, place.first_array + place.arrays))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert noisy.report.totals["arrays"] > plain.report.totals["arrays"]


def test_policy_exclude_keeps_a_layers_attention_digital_and_written_operands_get_no_copies(llama):
    cm = nvcc_pt.compile(llama, fidelity="exact", policy={"map_dynamic": True, "exclude": ["*.layers.1.self_attn"]},
                         duplicate=True, tokens=8)
    dynamic = {o["module"]: o for o in cm.report.ops if o["kind"] == "dynamic"}
    assert dynamic["model.layers.0.self_attn"]["mapped"] and not dynamic["model.layers.1.self_attn"]["mapped"]
    assert "exclude" in dynamic["model.layers.1.self_attn"]["reason"]
    assert dynamic["model.layers.0.self_attn"]["duplicates"] == 1
    with pytest.raises(nvcc_pt.errors.DuplicationError, match="dynamic products, written per input, are not duplicated"):
        nvcc_pt.compile(llama, fidelity="exact", policy=DYNAMIC, duplicate={"model.layers.0.self_attn": 2})


# -- the numbers ---------------------------------------------------------------------------------
def test_exact_equals_the_model(llama, ids):
    cm = nvcc_pt.compile(llama, fidelity="exact", policy=DYNAMIC)
    with torch.no_grad():
        torch.testing.assert_close(_logits(cm(ids)), llama(ids).logits, rtol=0, atol=1e-5)


class MaskedLM(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def test_exact_equals_the_model_with_an_attention_mask(llama, ids):
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    model = MaskedLM(llama)
    cm = nvcc_pt.compile(model, fidelity="exact", example_inputs=(ids, mask), policy=DYNAMIC)
    assert cm.report.totals["dynamic"]["mapped_ops"] == 4
    with torch.no_grad():
        torch.testing.assert_close(_logits(cm(ids, mask)), model(ids, mask), rtol=0, atol=1e-5)


def test_noisy_writes_change_the_output(llama, ids, noisy, plain):
    with torch.no_grad():
        exact = llama(ids).logits
        err_dynamic = (_logits(noisy.program(3)(ids)) - exact).abs().max()
        err_plain = (_logits(plain(ids)) - exact).abs().max()
    assert err_dynamic != err_plain and err_dynamic > 0


def _reference(a, b, cfg, seed, op_index, call):
    """`a @ b` with `b` written as 8-bit differential weights in 2-bit cells, by hand from the numerics."""
    n, k = b.shape[-1], b.shape[-2]
    w = b.transpose(-2, -1).reshape(-1, k)
    wq, scale = quantize_weight(w, cfg["weight_bits"])
    levels = slice_levels(magnitudes(wq, cfg["sign"], cfg["weight_bits"]), cfg["cell_bits"], cfg["slices"])
    levels = levels.transpose(0, 1)  # [P, S, N, K]
    noise = NoiseInfo("reram", 0.0, tuple(cfg["level_sigmas"]))
    key = BlockKey.start(seed, op_index)
    key[:, 1] = call  # the call's block of each stream
    cells = program_levels(levels, noise, cfg["cell_bits"], BlockKey(key))
    place = torch.tensor([4.0**s for s in range(cfg["slices"])])
    mag = (cells * place[:, None, None]).sum(1)  # [P, N, K]
    w_eff = (mag[0] - mag[1] if cfg["sign"] == "differential" else mag[0] - 2 ** (cfg["weight_bits"] - 1))
    w_eff = w_eff * scale[:, None]
    a_scale = a.abs().amax(-1, keepdim=True) / 127
    aq = torch.round(a / a_scale) * a_scale
    return aq @ w_eff.view(*b.shape[:-2], n, k).transpose(-2, -1)


def test_noisy_op_equals_a_hand_built_reference_and_draws_per_call(noisy):
    name, state = write_states(noisy.graph_module)[1]
    cfg = state.config
    assert cfg["fidelity"] == "noisy" and cfg["sign"] == "offset"  # the ISAAC preset's biased weights
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 18, generator=g)
    state.reseed(11)
    first = torch.ops.nvcc_pt.cim_matmul(a, b, state.key, state.config_json())
    second = torch.ops.nvcc_pt.cim_matmul(a, b, state.key, state.config_json())
    assert state.calls == 2
    torch.testing.assert_close(first, _reference(a, b, cfg, 11, cfg["op_index"], 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, _reference(a, b, cfg, 11, cfg["op_index"], 2), rtol=1e-5, atol=1e-5)
    assert not torch.equal(first, second)  # a fresh write per call
    assert (first - a @ b).abs().max() > 0


def test_a_seed_reproduces_and_each_call_writes_afresh(llama, ids, noisy):
    again = nvcc_pt.compile(llama, fidelity="noisy", seed=3, policy=DYNAMIC)
    with torch.no_grad():
        first = _logits(noisy.program(3)(ids))
        second = _logits(noisy(ids))
        assert torch.equal(first, _logits(again(ids)))
        assert not torch.equal(first, second)
        assert torch.equal(first, _logits(noisy.program(3)(ids)))
        assert not torch.equal(first, _logits(noisy.program(4)(ids)))


def test_save_and_load_replay_the_first_call(noisy, ids, tmp_path):
    loaded = nvcc_pt.load(noisy.program(3).save(tmp_path / "plan"))
    assert len(write_states(loaded.graph_module)) == 4
    with torch.no_grad():
        torch.testing.assert_close(_logits(loaded(ids)), _logits(noisy(ids)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fidelity", ["noisy", "bit-serial"])
def test_a_new_batch_and_sequence_length_run(noisy, fidelity):
    cm = noisy if fidelity == "noisy" else noisy.with_fidelity(fidelity)
    for shape in ((3, 5), (1, 11)):
        x = torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            out = _logits(cm(x))
        assert out.shape == (*shape, 101) and torch.isfinite(out).all()


def test_straight_through_gradient_is_that_of_the_product(noisy):
    _, state = write_states(noisy.graph_module)[0]
    g = torch.Generator().manual_seed(6)
    a = torch.randn(2, 2, 4, 18, generator=g, requires_grad=True)
    b = torch.randn(2, 1, 18, 4, generator=g, requires_grad=True)  # broadcast over heads, as a GQA operand may be
    upstream = torch.randn(2, 2, 4, 4, generator=g)
    torch.ops.nvcc_pt.cim_matmul(a, b, state.key, state.config_json()).backward(upstream)
    grads = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    (a @ b).backward(upstream)
    torch.testing.assert_close(grads, (a.grad, b.grad))


# -- the cost ------------------------------------------------------------------------------------
def test_cell_writes_and_write_energy_follow_the_shapes(llama, noisy):
    cfg = llama.config
    heads, head_dim, seq = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, 8
    slices, sign_columns = math.ceil(8 / 2), 1  # 8-bit offset (biased) weights in 2-bit cells
    per_op = heads * head_dim * seq * slices * sign_columns  # K^T [d, S] or V [S, d] per head
    dynamic = noisy.report.totals["dynamic"]
    assert dynamic["mapped_ops"] == 2 * cfg.num_hidden_layers
    assert dynamic["cell_writes_per_inference"] == 2 * cfg.num_hidden_layers * per_op
    for row in (o for o in noisy.report.ops if o["kind"] == "dynamic"):
        assert row["cell_writes_per_inference"] == per_op and row["seq_len"] == seq
        assert row["write_energy_pj"] == pytest.approx(per_op / seq * ISAAC_COSTS.cell_write_energy_pj, rel=1e-5)
        assert row["energy_breakdown_pj"]["programming"] == row["write_energy_pj"] > 0
        assert row["lifetime_inferences"] == ISAAC_COSTS.cell_endurance_cycles
    assert dynamic["write_energy_pj"] > 0 and dynamic["extra_latency_ns"] > 0
    assert "cell writes per inference" in str(noisy.report)


def test_static_ops_cost_the_same_with_map_dynamic(noisy, plain):
    static = {o["name"]: o["energy_pj"] for o in plain.report.ops if o["kind"] == "static"}
    assert static == {o["name"]: o["energy_pj"] for o in noisy.report.ops if o["kind"] == "static"}


def test_the_command_line_maps_dynamic_products(tmp_path, capsys):
    from nvcc_pt.cli import main

    assert main(["compile", "--model", "builtin:tiny-llama", "--map-dynamic", "--report", str(tmp_path / "r.json")]) == 0
    assert "cell writes per inference" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["dynamic"]["mapped_ops"] == 4


def test_onnx_export_refuses_mapped_dynamic_products(noisy, tmp_path):
    with pytest.raises(ExportError, match="map_dynamic"):
        noisy.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fidelity", ["noisy", "adc"])
def test_write_noise_on_cuda_is_the_cpus(fidelity, ids):
    cpu = nvcc_pt.compile(build_model("builtin:tiny-llama"), fidelity=fidelity, seed=3, policy=DYNAMIC)
    gpu = nvcc_pt.compile(build_model("builtin:tiny-llama"), fidelity=fidelity, seed=3, policy=DYNAMIC).to("cuda")
    gpu.program(3)
    with torch.no_grad():
        on_gpu = [_logits(gpu(ids.cuda())).cpu() for _ in range(4)]  # eager, recorded, replayed twice
        on_cpu = [_logits(cpu(ids)) for _ in range(4)]
    assert len(gpu._graphs) == 1 and not torch.equal(on_gpu[2], on_gpu[3])  # a replay writes afresh
    for a, b in zip(on_gpu, on_cpu):  # the same draws on both devices, to float rounding (an ADC code may move)
        assert float((a - b).abs().mean()) < 0.01 * float(b.abs().mean())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fidelity", ["quantized", "noisy", "adc", "bit-serial"])
def test_written_products_replay_from_cuda_graphs_as_eager_calls(fidelity, ids):
    cm = nvcc_pt.compile(build_model("builtin:tiny-llama"), fidelity=fidelity, seed=3, policy=DYNAMIC).to("cuda")
    cm.program(3)
    with torch.no_grad():
        replayed = [_logits(cm(ids.cuda())) for _ in range(4)]
        assert len(cm._graphs) == 1
        cm.cuda_graphs = False
        cm.program(3)
        eager = [_logits(cm(ids.cuda())) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(replayed, eager))  # the recording's warm-up wrote nothing for good
    if fidelity != "quantized":
        assert not torch.equal(replayed[2], replayed[3])
