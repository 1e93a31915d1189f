"""The simulator's fast paths against a plain tile-by-tile, bit-by-bit reference written with loops."""

from __future__ import annotations

import math

import pytest
import torch
from nvcc_pt.targets.devices import as_stored, program_levels
from nvcc_pt.targets.simulator import op_generator

import nvcc_pt
from nvcc_pt import meta

K, N, B = 37, 45, 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.ReLU(), torch.nn.Linear(N, 29))


def _spec(**changes):
    base = dict(rows=16, cols=24, sigma=0.0, sign="differential", adc_range="full-scale",
                extra=(("input_encoding", "two-phase"),))
    base.update(changes)
    return nvcc_pt.get_target("reram-128x128").replace(**base)


def _compile(spec, fidelity, seed=0):
    model = _model()
    x = torch.randn(B, K, generator=torch.Generator().manual_seed(1))
    return model, x, nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=seed)


# --- the reference: everything by hand, one array, one column and one input bit at a time -----------------

def ref_levels(w: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Ideal levels [P, S, N, K] and scales [N], digit by digit."""
    bits, c, s_count = cfg["weight_bits"], cfg["cell_bits"], cfg["slices"]
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    wq = torch.round(w / scale[:, None]).clamp(-qmax, qmax).long()
    p_count = 2 if cfg["sign"] == "differential" else 1
    levels = torch.zeros(p_count, s_count, *w.shape)
    for n in range(w.shape[0]):
        for k in range(w.shape[1]):
            v = int(wq[n, k])
            mags = [max(v, 0), max(-v, 0)] if p_count == 2 else [v + 2 ** (bits - 1)]
            for p, mag in enumerate(mags):
                for s in range(s_count):
                    levels[p, s, n, k] = (mag >> (c * s)) & (2**c - 1)
    return levels, scale


def ref_cycles(xi: torch.Tensor, cfg: dict, bit_serial: bool) -> list[tuple[torch.Tensor, float]]:
    bits, dac = cfg["input_bits"], cfg["dac_bits"]
    if not bit_serial or dac >= bits:
        return [(xi, 1.0)]
    cycles = []
    digits = math.ceil((bits - 1) / dac)
    if cfg["input_encoding"] == "twos-complement":
        code = torch.where(xi < 0, xi + 2 ** (bits - 1), xi).long()
        for j in range(digits):
            cycles.append((((code >> (j * dac)) & (2**dac - 1)).float(), float(2 ** (j * dac))))
        cycles.append(((xi < 0).float(), -float(2 ** (bits - 1))))
        return cycles
    for sign in (1, -1):
        mag = torch.where(sign * xi > 0, xi.abs(), torch.zeros_like(xi)).long()
        for j in range(digits):
            cycles.append((((mag >> (j * dac)) & (2**dac - 1)).float(), sign * float(2 ** (j * dac))))
    return cycles


def ref_window(cfg, tile_rows, bipolar, flipped, adc_range=None):
    """(lowest code, step) of one tile's ADC, written out from the range modes' definitions."""
    top, codes = 2 ** cfg["cell_bits"] - 1, 2 ** cfg["adc_bits"] - 1
    half = 2 ** (cfg["adc_bits"] - 1)
    if adc_range is not None:  # calibrated: step snapped to the level grid where that loses nothing
        lo, hi = adc_range
        raw = (hi - lo) / codes
        if raw <= 1:
            step = 2.0 ** math.ceil(math.log2(raw))
        else:
            step = float(math.ceil(raw)) if math.ceil(raw) ** 2 - 1 <= raw**2 else raw
        return round(lo / step), step
    dmax = 2 ** (cfg["input_bits"] - 1) - 1 if bipolar else 2 ** cfg["dac_bits"] - 1
    full = tile_rows * top * dmax
    signed = bipolar or cfg["sign"] == "differential"
    if flipped:
        full = math.floor(full / 2)
    step = full / (max(half - 1, 1) if signed else codes)
    if cfg["adc_range"] == "exact":
        step = 2.0 ** math.ceil(math.log2(step))
    return (-half if signed else 0), step


def reference(x, w, b, cfg, programmed, scale, bit_serial, adc: bool, adc_range=None):
    n_out, k_in = w.shape
    p_count, s_count = programmed.shape[:2]
    qmax = 2 ** (cfg["input_bits"] - 1) - 1
    sx = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    xi = torch.round(x / sx).clamp(-qmax, qmax)
    cols = n_out * p_count * s_count
    g = torch.zeros(k_in, cols)  # the physical conductance matrix, column (n*P + p)*S + s
    for n in range(n_out):
        for p in range(p_count):
            for s in range(s_count):
                g[:, (n * p_count + p) * s_count + s] = programmed[p, s, n]
    top, rows = 2 ** cfg["cell_bits"] - 1, cfg["rows"]
    cycles = ref_cycles(xi, cfg, bit_serial)
    bipolar = not bit_serial or cfg["dac_bits"] >= cfg["input_bits"]
    flipping = adc_range is None and cfg["adc_range"] == "exact" and p_count == 1 and not bipolar
    codes = 2 ** cfg["adc_bits"] - 1
    y = torch.zeros(x.shape[0], n_out)
    for r in range(math.ceil(k_in / rows)):
        rs = slice(r * rows, min(k_in, (r + 1) * rows))
        real_rows = rs.stop - rs.start
        # ISAAC: a column whose levels sum to more than half its maximum holds top - l
        flip = (g[rs].sum(0) > top * real_rows / 2) if flipping else torch.zeros(cols, dtype=torch.bool)
        g_tile = torch.where(flip, top - g[rs], g[rs])
        lo_code, step = ref_window(cfg, real_rows, bipolar, flipping, adc_range)
        for plane, place in cycles:
            current = torch.zeros(x.shape[0], cols)
            for c in range(math.ceil(cols / cfg["cols"])):
                cs = slice(c * cfg["cols"], min(cols, (c + 1) * cfg["cols"]))
                current[:, cs] = plane[:, rs] @ g_tile[:, cs]
            digits = plane[:, rs].sum(1, keepdim=True)
            for s in range(s_count):  # one ADC per (output, slice) column; a differential pair is sensed as one
                at = [(n * p_count) * s_count + s for n in range(n_out)]
                v = current[:, at]
                if p_count == 2:
                    v = v - current[:, [(n * p_count + 1) * s_count + s for n in range(n_out)]]
                if adc:
                    v = step * torch.round(v / step).clamp(lo_code, lo_code + codes)
                v = torch.where(flip[at], top * digits - v, v)  # a flipped column, read back
                y += place * 2 ** (cfg["cell_bits"] * s) * v
    if p_count == 1:
        y -= 2 ** (cfg["weight_bits"] - 1) * xi.sum(-1, keepdim=True)
    return y * sx * scale + b


def first_layer(cm, model, x, seed, fidelity, adc_range=None, device="cpu"):
    """Fast path output (run on `device`) of the first mapped layer and the reference's, for the same cells."""
    name, state = cm.plan.states()[0]
    cfg = state.config
    w, b = model[0].weight.detach(), model[0].bias.detach()
    levels, scale = ref_levels(w, cfg)
    if cm.target.sigma > 0:
        levels = program_levels(levels, cm.plan.records[name][meta.NOISE], cfg["cell_bits"], op_generator(seed, 0))
        levels = as_stored(levels, cfg["sign"], cfg["cell_bits"])  # the columns as every path reads them
    on = lambda t: t.to(device)  # noqa: E731
    fast = torch.ops.nvcc_pt.cim_linear(on(x), on(state.weight), on(model[0].bias),
                                        [on(state.scale), on(state.levels), on(state.adc_range)], state.config_json())
    fast = fast.cpu()
    ref = reference(x, w, b, cfg, levels, scale, fidelity == "bit-serial", fidelity in ("adc", "bit-serial"), adc_range)
    return fast, ref


def assert_close(fast, ref, rel=1e-5):
    err = (fast - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), f"max error {err} vs scale {ref.abs().max().item()}"


CASES = [
    ("quantized", {}),
    ("noisy", {"sigma": 0.05}),
    ("adc", {}),
    ("adc", {"sigma": 0.05, "adc_bits": 6}),
    ("adc", {"sign": "offset", "cell_bits": 3}),
    ("bit-serial", {}),
    ("bit-serial", {"sigma": 0.08, "adc_bits": 5, "dac_bits": 2}),
    ("bit-serial", {"sign": "offset", "sigma": 0.03, "adc_bits": 7}),
    ("bit-serial", {"extra": (("input_encoding", "twos-complement"),), "sigma": 0.05}),
    ("bit-serial", {"extra": (("input_encoding", "twos-complement"),), "dac_bits": 3, "input_bits": 7}),
    ("adc", {"adc_range": "exact", "adc_bits": 7}),
    ("bit-serial", {"adc_range": "exact", "sign": "offset", "sigma": 0.05}),
    ("bit-serial", {"adc_range": "exact", "sign": "offset", "adc_bits": 6,
                    "extra": (("input_encoding", "twos-complement"),)}),
    ("bit-serial", {"adc_range": "exact", "sign": "offset", "dac_bits": 2, "sigma": 0.03}),
    ("bit-serial", {"adc_range": "exact", "sigma": 0.03}),
    ("adc", {"input_bits": 14, "sigma": 0.02}),  # codes beyond float16's integers: the GPU takes the float32 path
]


@pytest.mark.parametrize(("fidelity", "changes"), CASES)
def test_fast_path_matches_reference(fidelity, changes):
    model, x, cm = _compile(_spec(**changes), fidelity, seed=3)
    fast, ref = first_layer(cm, model, x, 3, fidelity)
    assert_close(fast, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("fidelity", "changes"), CASES)
def test_cuda_fused_paths_match_reference(fidelity, changes):
    model, x, cm = _compile(_spec(**changes), fidelity, seed=3)
    fast, ref = first_layer(cm, model, x, 3, fidelity, device="cuda")
    assert_close(fast, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("encoding", "dac_bits", "input_bits", "bit_serial"), [
    ("two-phase", 1, 8, True), ("two-phase", 3, 8, True), ("twos-complement", 1, 8, True),
    ("twos-complement", 3, 7, True), ("two-phase", 8, 8, False), ("two-phase", 2, 12, True)])
def test_cuda_dac_planes_are_the_input_planes(encoding, dac_bits, input_bits, bit_serial):
    from nvcc_pt.targets import simulator_triton
    from nvcc_pt.targets.devices import input_planes

    cfg = {"input_bits": input_bits, "dac_bits": dac_bits, "input_encoding": encoding}
    top = 2 ** (input_bits - 1) - 1
    xi = torch.randint(-top, top + 1, (19, 45), generator=torch.Generator().manual_seed(0)).float()
    xi[0] = 0
    xi[1, :5] = torch.tensor([top, -top, 1, -1, 0])
    want, _ = input_planes(xi, cfg, bit_serial)
    rows, tiles = 16, 3  # 45 inputs on 16-row tiles: the last tile holds 13
    sums = torch.nn.functional.pad(want, (0, tiles * rows - 45)).view(len(want), 19, tiles, rows).sum(-1)
    planes, digits = simulator_triton.dac_planes(xi.cuda(), cfg, bit_serial, rows, digits=True)
    assert planes.dtype == torch.float16
    assert torch.equal(planes.float().cpu(), want)
    assert torch.equal(digits.cpu(), sums)


def test_calibrated_adc_matches_reference():
    model, x, cm = _compile(_spec(sigma=0.04, adc_bits=5), "bit-serial", seed=2)
    cm.calibrate([x, x * 0.5])
    state = cm.plan.states()[0][1]
    lo, hi = state.adc_range.tolist()
    assert lo < 0 < hi
    fast, ref = first_layer(cm, model, x, 2, "bit-serial", adc_range=(lo, hi))
    assert_close(fast, ref)


def test_levels_agree_where_they_should():
    _, x, q = _compile(_spec(), "quantized")
    yq = q(x)
    assert_close(q.with_fidelity("noisy")(x), yq)  # ideal devices: noisy is quantized
    for fidelity in ("adc", "bit-serial"):
        _, _, cm = _compile(_spec(adc_bits=14, adc_range="exact"), fidelity)  # ideal devices, enough ADC bits
        assert_close(cm(x), yq)
    _, _, dac8 = _compile(_spec(dac_bits=8, sigma=0.05, adc_bits=6), "bit-serial")
    _, _, adc = _compile(_spec(dac_bits=8, sigma=0.05, adc_bits=6), "adc")
    assert torch.equal(dac8(x), adc(x))  # a DAC as wide as the input is the adc level
    _, _, noisy = _compile(_spec(sigma=0.05), "noisy")
    _, _, fine = _compile(_spec(sigma=0.05, adc_bits=24), "adc")  # same cells, (nearly) ideal ADC
    assert_close(fine(x), noisy(x), rel=1e-4)


def test_exact_is_pytorch():
    model, x, cm = _compile(_spec(sigma=0.1), "exact")
    assert torch.equal(cm(x), model(x))


def test_state_dependent_variation_scales_middle_levels():
    spec = nvcc_pt.get_target("rram4-128x128")
    noise = meta.NoiseInfo("rram4", spec.sigma, spec.device.level_sigmas(4))
    levels = torch.arange(4.0).repeat(20000)
    programmed = program_levels(levels, noise, 2, torch.Generator().manual_seed(0))
    std = [(programmed[levels == lv] - lv).std().item() / 3 for lv in range(4)]
    norm = math.sqrt(0.4 * 16 + 0.6)
    assert std[0] == pytest.approx(0.1 / norm, rel=0.05) and std[3] == pytest.approx(0.1 / norm, rel=0.05)
    assert std[1] == pytest.approx(0.4 / norm, rel=0.05) and std[2] == pytest.approx(0.4 / norm, rel=0.05)


def test_stuck_at_faults_hit_their_rate():
    noise = meta.NoiseInfo("reram", 0.0, (0.0,) * 4, stuck_at_gmin=0.1, stuck_at_gmax=0.05)
    levels = torch.full((40000,), 1.0)
    programmed = program_levels(levels, noise, 2, torch.Generator().manual_seed(0))
    assert (programmed == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (programmed == 3).float().mean().item() == pytest.approx(0.05, abs=0.01)
    assert (programmed == 1).float().mean().item() == pytest.approx(0.85, abs=0.01)


def test_seeds_reproduce_and_program_resamples():
    _, x, cm = _compile(_spec(sigma=0.05), "bit-serial", seed=4)
    y4 = cm(x)
    assert torch.equal(cm.program(5)(x), cm.program(5)(x))
    assert not torch.equal(cm.program(5)(x), y4)
    assert torch.equal(cm.program(4)(x), y4)


def test_read_noise_is_drawn_per_call_with_the_right_size():
    spec = _spec(read_sigma=0.02)
    model, x, noisy = _compile(spec, "noisy")
    _, _, adc = _compile(spec.replace(adc_bits=24), "adc")
    _, _, q = _compile(spec, "quantized")
    yq = q(x)
    torch.manual_seed(0)
    spread_noisy = torch.stack([noisy(x) - yq for _ in range(100)]).std().item()
    spread_adc = torch.stack([adc(x) - yq for _ in range(100)]).std().item()
    assert spread_noisy > 0
    assert spread_adc == pytest.approx(spread_noisy, rel=0.15)  # the same per-cell noise through either path


def test_chunking_over_batch_rows_changes_nothing(monkeypatch):
    from nvcc_pt.targets import simulator

    _, x, cm = _compile(_spec(sigma=0.05, adc_bits=6), "bit-serial")
    whole = cm(x)
    monkeypatch.setitem(simulator.CHUNK_BYTES, "cpu", 1)  # one batch row per chunk
    assert torch.equal(cm(x), whole)
