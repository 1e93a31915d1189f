import pytest
import torch
from nvcc_pt.passes.find_matmuls import find_matmuls
from nvcc_pt.passes.select import select
from torch import nn

import nvcc_pt
from nvcc_pt import meta
from nvcc_pt.meta import MatmulKind
from nvcc_pt.passmanager import PassContext, graph_pass, run_passes


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(37, 45)
        self.w = nn.Parameter(torch.randn(45, 29))   # used as x @ W  ([K, N])
        self.left = nn.Parameter(torch.randn(5, 7))  # used as W @ x (stationary left operand)

    def forward(self, x, y):
        h = self.proj(x) @ self.w                    # static, transposed storage
        a = torch.bmm(h.unsqueeze(0), h.unsqueeze(0).transpose(1, 2))  # dynamic
        z = self.left @ y                            # static but not lowerable
        e = torch.einsum("bk,kn->bn", x, x.t())      # dynamic
        return h.sum() + a.sum() + z.sum() + e.sum()


def analyze(model, *args, policy=None):
    ep = torch.export.export(model, args, strict=False)
    gm = ep.module()
    ctx = PassContext(target=nvcc_pt.get_target("reram-128x128"), policy=nvcc_pt.MappingPolicy.coerce(policy))
    run_passes(gm, ctx, [find_matmuls, select])
    return {n.name: n.meta for n in gm.graph.nodes if meta.MATMUL in n.meta}


def test_find_matmuls_classifies_static_dynamic_and_unlowerable():
    found = analyze(Mixed(), torch.randn(3, 37), torch.randn(7, 2))
    infos = {m[meta.MATMUL].module + ":" + m[meta.MATMUL].op: m for m in found.values()}
    linear = next(m for k, m in infos.items() if k.startswith("proj:aten.linear"))[meta.MATMUL]
    assert (linear.kind, linear.k, linear.n, linear.weight, linear.bias) == (MatmulKind.STATIC, 37, 45, "proj.weight", "proj.bias")
    xw = [m[meta.MATMUL] for m in found.values() if m[meta.MATMUL].weight == "w"]
    assert len(xw) == 1 and xw[0].weight_transposed and (xw[0].k, xw[0].n) == (45, 29) and xw[0].lowerable
    left = [m for m in found.values() if m[meta.MATMUL].weight == "left"]
    assert len(left) == 1 and not left[0][meta.MATMUL].lowerable
    assert not left[0][meta.SELECTION].mapped and "stationary left" in left[0][meta.SELECTION].reason
    dynamic = [m for m in found.values() if m[meta.MATMUL].kind is MatmulKind.DYNAMIC]
    assert len(dynamic) == 2 and all("dynamic" in m[meta.SELECTION].reason for m in dynamic)


def test_a_model_without_matmuls_is_left_unchanged():
    class NoMatmul(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    found = analyze(NoMatmul(), torch.randn(2, 3))
    assert found == {}
    cm = nvcc_pt.compile(NoMatmul(), example_inputs=(torch.randn(2, 3),), fidelity="exact")
    assert cm.plan.states() == [] and cm.report.totals["arrays"] == 0
    x = torch.randn(4, 3)
    assert torch.equal(cm(x), torch.relu(x) * 2)


def test_a_plain_module_compiles_runs_and_maps_its_linears():
    model = nn.Sequential(nn.Linear(37, 45), nn.ReLU(), nn.Linear(45, 11)).eval()
    x = torch.randn(5, 37)
    cm = nvcc_pt.compile(model, "reram-128x128", example_inputs=(x,), fidelity="exact")
    assert cm.report.totals["mapped_ops"] == 2
    assert torch.allclose(cm(torch.randn(7, 37)).shape and cm(x), model(x), rtol=1e-5, atol=1e-6)
    targets = [n.target for n in cm.graph_module.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.nvcc_pt.cim_linear.default) == 2
    assert torch.ops.aten.linear.default not in targets


def test_pass_failures_name_the_pass_the_passes_before_and_the_node():
    @graph_pass(requires=(meta.SELECTION,))
    def broken(gm, ctx):
        for _node in ctx.nodes(gm, meta.MATMUL):
            raise RuntimeError("boom")

    model = nn.Linear(4, 3)
    gm = torch.export.export(model, (torch.randn(2, 4),), strict=False).module()
    ctx = PassContext(target=nvcc_pt.get_target("reram-128x128"))
    with pytest.raises(nvcc_pt.PassError) as err:
        run_passes(gm, ctx, [find_matmuls, select, broken])
    assert err.value.pass_name == "broken" and err.value.passes_before == ("find_matmuls", "select")
    assert err.value.node == "linear" and "boom" in str(err.value)
    with pytest.raises(nvcc_pt.PassError, match="requires"):
        run_passes(gm, PassContext(target=nvcc_pt.get_target("reram-128x128")), [select])


def test_allocation_fails_clearly_when_a_fixed_chip_count_is_too_small(tiny_models):
    small = nvcc_pt.get_target("reram-32x32").replace(arrays_per_macro=2, macros_per_chip=4, chips=1)
    with pytest.raises(nvcc_pt.AllocationError, match=r"need \d+ arrays on \d+ chip\(s\).*chips=1"):
        nvcc_pt.compile(tiny_models("tiny-llama"), small)
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), small.replace(chips=None), fidelity="exact")
    assert cm.report.totals["chips"] > 1
    placements = [o["placement"] for o in cm.report.ops if o["mapped"]]
    assert any("chips" in p for p in placements) or len({p.split(",")[0] for p in placements}) > 1


def test_dataflow_graph_links_consecutive_layers(tiny_models):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="exact")
    flow = cm.plan.dataflow
    by_module = {d["module"]: n for n, d in flow.nodes(data=True)}
    assert flow.has_edge(by_module["model.layers.0.mlp.up_proj"], by_module["model.layers.0.mlp.down_proj"])
    assert flow.has_edge(by_module["model.layers.0.self_attn.v_proj"], by_module["model.layers.0.self_attn.o_proj"])
    assert not flow.has_edge(by_module["model.layers.0.self_attn.q_proj"], by_module["model.layers.0.self_attn.k_proj"])
    stages = {o["module"]: o["stage"] for o in cm.report.ops if o["mapped"]}
    assert stages["model.layers.0.self_attn.q_proj"] == stages["model.layers.0.self_attn.k_proj"]
    assert stages["lm_head"] == max(stages.values())
