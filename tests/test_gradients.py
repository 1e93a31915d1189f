"""Backward through the plan: equal to the model's at `exact`, the straight-through rule elsewhere."""

import pytest
import torch
from nvcc_pt.targets import get_target
from nvcc_pt.targets.devices import quantize_input_int
from torch import nn

import nvcc_pt
from nvcc_pt.prompt import SoftPromptLM


def _logits(out):
    return getattr(out, "logits", out)


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).to(dtype)


def _grads(fn, x, params):
    for p in params:
        p.grad = None
    x = x.clone().requires_grad_()
    fn(x).pow(2).sum().backward()
    return [x.grad] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("fidelity", ["exact", "quantized", "noisy", "adc", "bit-serial"])
def test_backward_runs_at_every_fidelity(fidelity):
    m = _mlp()
    x = torch.randn(4, 12)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,), fidelity=fidelity)
    xg = x.clone().requires_grad_()
    cm(xg).sum().backward()
    assert xg.grad.shape == x.shape and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_exact_gradients_equal_the_models():
    m = _mlp()
    x = torch.randn(6, 12)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,), fidelity="exact").train_weights()
    params = list(m.parameters())
    for got, want in zip(_grads(cm, x, params), _grads(m, x, params)):
        assert (got - want).abs().max() < 1e-5


def test_weight_gradients_are_opt_in():
    m = _mlp()
    x = torch.randn(3, 12)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,), fidelity="noisy")
    cm(x).sum().backward()
    assert m[0].weight.grad is None and m[0].bias.grad is not None  # biases are the model's, as in PyTorch
    cm.train_weights()
    cm(x).sum().backward()
    assert m[0].weight.grad is not None
    m.zero_grad(set_to_none=True)
    cm.train_weights(False)
    cm(x).sum().backward()
    assert m[0].weight.grad is None


def test_gradcheck_at_exact_in_float64():
    m = _mlp(torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x.detach(),), fidelity="exact")
    assert torch.autograd.gradcheck(lambda t: cm(t), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fidelity", ["quantized", "noisy"])
def test_quantized_and_noisy_follow_straight_through_by_hand(fidelity):
    torch.manual_seed(1)
    layer = nn.Linear(10, 4)
    x = torch.randn(5, 10)
    cm = nvcc_pt.compile(layer, "rram4-128x128", example_inputs=(x,), fidelity=fidelity).train_weights()
    (_, state), = cm.plan.states()
    w_eff = state.weight.clone()
    assert (w_eff - layer.weight).abs().max() > 1e-4  # the chip's weights are not the model's
    xg = x.clone().requires_grad_()
    g = torch.randn(5, 4)
    (cm(xg) * g).sum().backward()
    assert torch.allclose(xg.grad, g @ w_eff, atol=1e-6)            # through the programmed weight
    assert torch.allclose(layer.weight.grad, g.t() @ x, atol=1e-6)  # quantizers and variation: identity
    assert torch.allclose(layer.bias.grad, g.sum(0), atol=1e-6)


def test_adc_clipping_zeroes_the_gradient_of_clipped_tile_outputs():
    torch.manual_seed(2)
    layer = nn.Linear(20, 6)
    x = torch.randn(7, 20)
    spec = get_target("reram-256x256").replace(rows=8, cols=8)  # 3 row tiles
    cm = nvcc_pt.compile(layer, spec, example_inputs=(x,), fidelity="adc").train_weights()
    (_, state), = cm.plan.states()
    cfg = state.config
    state.adc_range = torch.tensor([-40.0, 40.0])  # narrow: some partial sums clip, others do not
    xg = x.clone().requires_grad_()
    g = torch.randn(7, 6)
    (cm(xg) * g).sum().backward()
    # The rule by hand: tile r's partial sum of output n clips if any slice's read rounds past the end codes.
    codes = 2 ** cfg["adc_bits"] - 1
    step = 80.0 / codes
    lo = round(-40.0 / step)
    xi, _ = quantize_input_int(x, cfg["input_bits"])
    rows, slices, n = cfg["rows"], cfg["slices"], 6
    want_x, want_w = torch.zeros_like(x), torch.zeros_like(layer.weight)
    clipped_any = kept_any = False
    for r in range(state.levels.shape[0]):
        cols = slice(r * rows, min((r + 1) * rows, 20))
        part = xi[:, cols] @ state.levels[r, : cols.stop - cols.start].float() / step  # [M, S*N]
        clip = ((part.round() < lo) | (part.round() > lo + codes)).view(7, slices, n).any(1)
        clipped_any, kept_any = clipped_any or bool(clip.any()), kept_any or bool((~clip).any())
        gr = g * ~clip
        want_x[:, cols] = gr @ state.weight[:, cols]
        want_w[:, cols] = gr.t() @ x[:, cols]
    assert clipped_any and kept_any
    assert torch.allclose(xg.grad, want_x, atol=1e-5)
    assert torch.allclose(layer.weight.grad, want_w, atol=1e-5)
    assert torch.allclose(layer.bias.grad, g.sum(0), atol=1e-6)  # the bias is added after the ADC


IDEAL = nvcc_pt.get_target("reram-128x128").replace(sigma=0.0)
"""The default preset with ideal cells: its exact ADC holds every partial sum (with variation, a level-0 cell's negative
deviation can take a sum below the lowest code, which then clips)."""


@pytest.mark.parametrize("seed", range(4))
def test_an_adc_that_holds_every_sum_makes_bit_serial_straight_through(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(30, 5)
    x = torch.randn(4, 30)
    cm = nvcc_pt.compile(layer, IDEAL, example_inputs=(x,), fidelity="bit-serial")
    (_, state), = cm.plan.states()
    xg = x.clone().requires_grad_()
    g = torch.randn(4, 5)
    (cm(xg) * g).sum().backward()
    assert torch.allclose(xg.grad, g @ state.weight, atol=1e-6)


def test_conv_gradient_at_exact_equals_the_models():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
    x = torch.randn(2, 3, 8, 8)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,), fidelity="exact").train_weights()
    params = list(m.parameters())
    for got, want in zip(_grads(cm, x, params), _grads(m, x, params)):
        assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("map_dynamic", [False, True])
def test_soft_prompt_gradient_through_a_compiled_lm_equals_the_models(tiny_models, ids, map_dynamic):
    lm = SoftPromptLM(tiny_models("tiny-llama"), num_virtual_tokens=3, seed=1)
    cm = nvcc_pt.compile(lm, "reram-128x128", fidelity="exact", policy={"map_dynamic": map_dynamic})
    prompt = torch.randn(3, lm.prompt.shape[1]) * 0.05
    grads = []
    for run in (lambda p: _logits(cm(ids, soft_prompt=p)), lambda p: _logits(lm(ids, soft_prompt=p))):
        p = prompt.clone().requires_grad_()
        run(p).float().logsumexp(-1).sum().backward()
        grads.append(p.grad)
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() < 1e-5 * max(1.0, grads[1].abs().max().item())


def test_noisy_soft_prompt_gradient_is_finite_per_row(tiny_models, ids):
    lm = SoftPromptLM(tiny_models("tiny-llama"), num_virtual_tokens=2, seed=1)
    cm = nvcc_pt.compile(lm, "rram4-128x128", fidelity="noisy")
    p = torch.randn(ids.shape[0], 2, lm.prompt.shape[1], requires_grad=True)
    _logits(cm(ids, soft_prompt=p)).sum().backward()
    assert p.grad.shape == p.shape and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_a_loaded_plan_refuses_weight_gradients(tmp_path):
    m = _mlp()
    x = torch.randn(2, 12)
    nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,)).save(tmp_path / "plan")
    loaded = nvcc_pt.load(tmp_path / "plan")
    with pytest.raises(nvcc_pt.InputError, match="loaded from .*compile the model again"):
        loaded.train_weights()
    xg = x.clone().requires_grad_()
    loaded(xg).sum().backward()  # inputs still get gradients
    assert xg.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fidelity", ["exact", "noisy", "bit-serial"])
def test_cuda_gradients_equal_the_cpus(fidelity):
    m = _mlp()
    x = torch.randn(6, 12)
    cm = nvcc_pt.compile(m, "reram-128x128", example_inputs=(x,), fidelity=fidelity).train_weights()
    params = list(m.parameters())
    on_cpu = _grads(cm, x, params)
    cm.to("cuda")
    on_gpu = [g.cpu() for g in _grads(cm, x.cuda(), params)]
    for a, b in zip(on_gpu, on_cpu):
        assert (a - b).abs().max() < 1e-3 * max(1.0, b.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fidelity", ["adc", "bit-serial"])
def test_cuda_fused_clip_mask_gives_the_cpus_gradients(fidelity, monkeypatch):
    from nvcc_pt.targets import simulator_triton

    torch.manual_seed(2)
    layer = nn.Linear(20, 6)
    x = torch.randn(7, 20)
    spec = get_target("reram-256x256").replace(rows=8, cols=8)  # 3 row tiles, the last one partial
    cm = nvcc_pt.compile(layer, spec, example_inputs=(x,), fidelity=fidelity).train_weights()
    (_, state), = cm.plan.states()
    state.adc_range = torch.tensor([-40.0, 40.0])  # narrow: some partial sums clip, others do not
    params = list(layer.parameters())
    on_cpu = _grads(cm, x, params)
    calls = []
    kernel = simulator_triton.crossbar_codes
    monkeypatch.setattr(simulator_triton, "crossbar_codes",
                        lambda *a, **kw: calls.append(kw.get("clips") is not None) or kernel(*a, **kw))
    cm.to("cuda")
    on_gpu = [g.cpu() for g in _grads(cm, x.cuda(), params)]
    assert calls and all(calls)  # the fused kernel ran and recorded the clip flags
    cm.to("cpu")
    state.adc_range = torch.tensor([-1e4, 1e4])
    unclipped = _grads(cm, x, params)
    assert not torch.allclose(unclipped[0], on_cpu[0], atol=1e-3)  # the narrow range did clip
    for a, b in zip(on_gpu, on_cpu):
        assert (a - b).abs().max() < 1e-3 * max(1.0, b.abs().max().item())


def test_the_clip_bound_never_misses_a_clipped_read():
    from nvcc_pt.targets.adc import Grid
    from nvcc_pt.targets.simulator import _clip_limits, _may_clip

    torch.manual_seed(4)
    rows, tiles, k = 8, 3, 20
    levels = torch.randn(tiles, rows, 6) * 3
    planes = torch.randint(0, 2, (4, 5, k)).float()
    xt = torch.nn.functional.pad(planes, (0, tiles * rows - k)).view(4, 5, tiles, rows)
    sums = torch.stack([xt[..., r, :] @ levels[r] for r in range(tiles)])
    for top in (int(sums.max() * 0.5), int(sums.max() * 0.9), int(sums.max() * 1.1), int(sums.abs().max() * 10)):
        ones = torch.ones(tiles, 1)
        g = Grid(inv_step=ones, step=ones, lo=-top * ones, hi=top * ones, flip=None, top=3.0)  # codes -top..top
        clipped = bool((sums >= top + 0.5).any() or (sums < -top - 0.5).any())
        may = _may_clip(planes, *_clip_limits(g, levels, bipolar=False))
        assert may or not clipped  # a bound: it may over-report, never miss
    assert not may  # and a wide ADC is proven safe


def test_a_clip_mask_belongs_to_its_own_call():
    """A call that records clips without autograd (inputs that want gradients, run under no_grad) leaves no mask for
    the next call's gradient."""
    torch.manual_seed(5)
    layer = nn.Linear(30, 5)
    x = torch.randn(4, 30)
    cm = nvcc_pt.compile(layer, IDEAL, example_inputs=(x,), fidelity="bit-serial")
    (_, state), = cm.plan.states()
    xg = x.clone().requires_grad_()
    full_scale = state.adc_range
    state.adc_range = torch.tensor([-2.0, 2.0])  # narrow: reads clip
    with torch.no_grad():
        cm(xg)
    state.adc_range = full_scale  # nothing clips
    g = torch.randn(4, 5)
    (cm(xg) * g).sum().backward()
    assert torch.allclose(xg.grad, g @ state.weight, atol=1e-6)
