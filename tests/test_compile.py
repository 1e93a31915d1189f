import pytest
import torch
from conftest import FAMILIES, logits
from nvcc_pt.targets.simulator import quantize_input, quantize_weight

import nvcc_pt
from nvcc_pt.prompt import SoftPromptLM


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_equals_the_model_with_and_without_a_soft_prompt(tiny_models, family, ids):
    model = tiny_models(family)
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    with torch.no_grad():
        assert rel(cm(ids).logits, logits(model, ids)) < 1e-5
        # Other batch and sequence sizes run on the same plan (dynamic shapes).
        other = ids[:1, :5]
        assert rel(cm(other).logits, logits(model, other)) < 1e-5

    lm = SoftPromptLM(model, num_virtual_tokens=3, seed=1)
    cmp = nvcc_pt.compile(lm, "reram-128x128", fidelity="exact")
    other_prompt = torch.randn_like(lm.prompt) * 0.02
    with torch.no_grad():
        assert rel(cmp(ids).logits, lm(ids)) < 1e-5
        swapped = cmp(ids, soft_prompt=other_prompt).logits
        assert rel(swapped, lm(ids, soft_prompt=other_prompt)) < 1e-5
        assert rel(swapped, cmp(ids).logits) > 1e-3  # the prompt is an input, not a constant


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_is_counted_once_mapped_or_digital(tiny_models, family):
    model = tiny_models(family)
    report = nvcc_pt.compile(model, "reram-128x128", fidelity="exact").report
    totals = report.totals
    assert totals["mapped_params"] + totals["digital_params"] == sum(p.numel() for p in model.parameters())
    assert totals["mapped_params"] > 0 and totals["mapped_macs_fraction"] == 1.0
    if model.config.tie_word_embeddings:
        (tie,) = report.to_dict()["params"]["tied"]
        assert tie["counted_as"] == "mapped" and "lm_head" in tie["used_by"]


def test_constant_prompt_is_baked_in(tiny_models, ids):
    lm = SoftPromptLM(tiny_models("tiny-llama"), num_virtual_tokens=2)
    cm = nvcc_pt.compile(lm, "reram-128x128", fidelity="exact", constant_prompt=True)
    assert [i.name for i in cm.plan.capture.inputs] == ["input_ids", "attention_mask"]
    with torch.no_grad():
        assert rel(cm(ids).logits, lm(ids)) < 1e-5
    with pytest.raises(nvcc_pt.InputError, match="has no input 'soft_prompt'"):
        cm(ids, soft_prompt=lm.prompt)


@pytest.mark.parametrize("kind", ["prompt-tuning", "p-tuning"])
def test_peft_prompt_learning_model_is_unwrapped(tiny_models, ids, kind):
    peft = pytest.importorskip("peft")
    base = tiny_models("tiny-llama")
    if kind == "prompt-tuning":
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    else:
        config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16)
    pm = peft.get_peft_model(base, config).eval()
    cm = nvcc_pt.compile(pm, "reram-128x128", fidelity="exact")
    assert cm.plan.capture.kind == "soft-prompt-lm" and cm.plan.capture.num_virtual_tokens == 4
    with torch.no_grad():
        assert rel(cm(ids).logits, pm(input_ids=ids).logits) < 1e-5
    # Only the base model's weights are mapped; the prompt stays an input.
    assert cm.report.totals["model_params"] == sum(p.numel() for p in base.parameters())


def test_noisy_with_zero_sigma_equals_direct_quantization(tiny_models, ids):
    model = tiny_models("tiny-llama")
    spec = nvcc_pt.get_target("rram4-128x128").replace(sigma=0.0)
    cm = nvcc_pt.compile(model, spec, fidelity="noisy")
    # The same quantization written directly: per-channel weights, per-token inputs.
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(4, layer.in_features)
    wq, scale = quantize_weight(layer.weight.detach(), 8)
    qmax = 127
    xs = x.abs().amax(-1, keepdim=True) / qmax
    direct = torch.nn.functional.linear(torch.round(x / xs).clamp(-qmax, qmax) * xs, wq * scale[:, None])
    name = next(o["name"] for o in cm.report.ops if o["module"] == "model.layers.0.mlp.down_proj")
    state = dict(cm.plan.states())[name]
    torch.testing.assert_close(state.weight, wq * scale[:, None], rtol=0, atol=0)
    got = torch.ops.nvcc_pt.cim_linear(x, state.weight, None, [getattr(state, n) for n in state.STATE], state.config_json())
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=1e-6)
    assert torch.equal(quantize_input(x, 8), torch.round(x / xs).clamp(-qmax, qmax) * xs)
    with torch.no_grad():
        quantized = cm.with_fidelity("quantized")(ids).logits
        torch.testing.assert_close(cm(ids).logits, quantized, rtol=1e-5, atol=1e-5)
        assert rel(cm(ids).logits, logits(model, ids)) > 1e-4  # quantization does change the numbers


def test_seeds_reproduce_and_differ(tiny_models, ids):
    model = tiny_models("tiny-qwen2")
    a = nvcc_pt.compile(model, "rram4-128x128", seed=3)
    b = nvcc_pt.compile(model, "rram4-128x128", seed=3)
    with torch.no_grad():
        out_a, out_b = a(ids).logits, b(ids).logits
        assert torch.equal(out_a, out_b)
        wa = [s.weight.clone() for _, s in a.plan.states()]
        a.program(seed=4)
        assert all(not torch.equal(w, s.weight) for w, (_, s) in zip(wa, a.plan.states()))
        assert not torch.equal(a(ids).logits, out_a)
        a.program(seed=3)
        assert torch.equal(a(ids).logits, out_a)


def test_policy_keeps_selected_layers_digital_with_a_reason(tiny_models, ids):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact",
                         policy=nvcc_pt.MappingPolicy(exclude=("*.mlp.*",), map_lm_head=False))
    rows = {o["module"]: o for o in cm.report.ops}
    assert not rows["lm_head"]["mapped"] and "map_lm_head" in rows["lm_head"]["reason"]
    assert not rows["model.layers.1.mlp.up_proj"]["mapped"] and "exclude" in rows["model.layers.1.mlp.up_proj"]["reason"]
    assert rows["model.layers.1.self_attn.q_proj"]["mapped"]
    assert cm.report.totals["mapped_macs_fraction"] < 0.5
    with torch.no_grad():
        assert rel(cm(ids).logits, logits(model, ids)) < 1e-5


def test_layerwise_precision_overrides(tiny_models):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="quantized",
                         precision={"*.mlp.*": {"weight_bits": 4, "adc_bits": 6}})
    rows = {o["module"]: o for o in cm.report.ops if o["mapped"]}
    assert rows["model.layers.0.mlp.up_proj"]["weight_bits"] == 4 and rows["model.layers.0.mlp.up_proj"]["slices"] == 2
    assert rows["model.layers.0.self_attn.q_proj"]["weight_bits"] == 8
    name = rows["model.layers.0.mlp.up_proj"]["name"]
    w = dict(cm.plan.states())[name].weight
    assert all(len(torch.unique(row)) <= 15 for row in w)  # 4-bit signed: at most 15 levels per channel
    with pytest.raises(nvcc_pt.TargetError, match="weight_bits=1"):
        nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", precision={"*": {"weight_bits": 1}})
