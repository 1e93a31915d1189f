"""The keyed Philox generator: known answers, the keying, and bit-equality with Triton's `tl.randint4x`/`tl.rand`/
`tl.randn` (on CUDA, or on the CPU under `TRITON_INTERPRET=1`)."""

import os
from contextlib import contextmanager

import pytest
import torch
from nvcc_pt.targets.philox import DRIFT, VARIATION, ChipKey, philox4x32, rand, randint4x, randn


def _words(*values):
    return [torch.tensor([v], dtype=torch.int64) for v in values]


def test_philox_matches_the_published_known_answers():
    # Salmon et al. (SC 2011), Random123's known-answer vectors for philox4x32-10
    zero = [int(w) for w in philox4x32(*_words(0, 0, 0, 0), 0, 0)]
    ones = [int(w) for w in philox4x32(*_words(*[0xFFFFFFFF] * 4), 0xFFFFFFFF, 0xFFFFFFFF)]
    pi = [int(w) for w in philox4x32(*_words(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0xA4093822,
                                       0x299F31D0)]
    assert zero == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert ones == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert pi == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_draws_are_standard_and_a_function_of_the_offset():
    z = randn(11, 200_000)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    u = rand(11, 200_000)
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.005
    assert torch.equal(randn(11, 50, start=1000), z[1000:1050])  # any cell alone, in any order
    assert torch.equal(rand(11, 7, start=2**32 + 5), rand(11, 10, start=2**32 + 2)[3:])  # 64-bit offsets


def test_chip_keys_separate_seeds_ops_calls_and_streams():
    base = ChipKey(0, 0).normal(VARIATION, (4, 8))
    for other in (ChipKey(1, 0).normal(VARIATION, (4, 8)), ChipKey(0, 1).normal(VARIATION, (4, 8)),
                  ChipKey(0, 0, call=1).normal(VARIATION, (4, 8)), ChipKey(0, 0).normal(DRIFT, (4, 8))):
        assert not torch.allclose(base, other)
    assert torch.equal(base, ChipKey(0, 0).normal(VARIATION, (32,)).view(4, 8))
    assert 0 <= ChipKey(2**62, 5).stream_seed(VARIATION) < 2**63


@pytest.mark.parametrize(("seed", "count", "start"), [(5, 9, 0), (2**62 + 17, 300_003, 7), (123, 200_001, 2**40 + 3)])
def test_the_compiled_cpu_draws_are_the_torch_ops_draws(seed, count, start, monkeypatch):
    from nvcc_pt.targets import philox

    pytest.importorskip("numba")
    compiled = rand(seed, count, start=start), randn(seed, count, start=start)
    monkeypatch.setattr(philox, "COMPILED_CPU", False)
    reference = rand(seed, count, start=start), randn(seed, count, start=start)
    assert torch.equal(compiled[0], reference[0])  # the uniforms bit for bit, across the threads' splits
    torch.testing.assert_close(compiled[1], reference[1], rtol=0, atol=1e-6)  # the normals to libm's rounding


def test_the_compiled_cpu_draws_are_the_same_from_any_thread():
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("numba")
    alone = [randn(seed, 150_000) for seed in range(4)]
    with ThreadPoolExecutor(4) as pool:  # as programming draws several ops' chips at once
        together = list(pool.map(lambda seed: randn(seed, 150_000), range(4)))
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_draw_the_same_bits():
    key = ChipKey(3, 7)
    assert torch.equal(key.uniform(VARIATION, (1000,)), key.uniform(VARIATION, (1000,), "cuda").cpu())
    torch.testing.assert_close(key.normal(VARIATION, (1000,)), key.normal(VARIATION, (1000,), "cuda").cpu(),
                               rtol=0, atol=1e-5)


def _triton_device() -> str:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device: run with TRITON_INTERPRET=1 to compare with Triton's interpreter")
    return "cpu"


def test_triton_draws_the_same_numbers():
    device = _triton_device()
    import triton
    import triton.language as tl

    @triton.jit
    def draw(seed, start, words_ptr, uniform_ptr, normal_ptr, n, BLOCK: tl.constexpr):
        at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = at < n
        offset = start + at.to(tl.int64)
        w0, w1, w2, w3 = tl.randint4x(seed, offset)
        u0, u1, u2, u3 = tl.rand4x(seed, offset)
        n0, n1, n2, n3 = tl.randn4x(seed, offset)
        # Written out: Triton's compiler does not take tuple targets in a loop.
        tl.store(words_ptr + at * 4, w0.to(tl.int32, bitcast=True), mask=ok)
        tl.store(words_ptr + at * 4 + 1, w1.to(tl.int32, bitcast=True), mask=ok)
        tl.store(words_ptr + at * 4 + 2, w2.to(tl.int32, bitcast=True), mask=ok)
        tl.store(words_ptr + at * 4 + 3, w3.to(tl.int32, bitcast=True), mask=ok)
        tl.store(uniform_ptr + at * 4, u0, mask=ok)
        tl.store(uniform_ptr + at * 4 + 1, u1, mask=ok)
        tl.store(uniform_ptr + at * 4 + 2, u2, mask=ok)
        tl.store(uniform_ptr + at * 4 + 3, u3, mask=ok)
        tl.store(normal_ptr + at * 4, n0, mask=ok)
        tl.store(normal_ptr + at * 4 + 1, n1, mask=ok)
        tl.store(normal_ptr + at * 4 + 2, n2, mask=ok)
        tl.store(normal_ptr + at * 4 + 3, n3, mask=ok)

    n, start = 300, 2**32 - 100  # counters across the 32-bit boundary use the counter's high word
    for seed in (ChipKey(0, 0).stream_seed(VARIATION), ChipKey(12345, 678, call=9).stream_seed(DRIFT)):
        words = torch.zeros(n, 4, dtype=torch.int32, device=device)
        uniform = torch.zeros(n * 4, device=device)
        normal = torch.zeros(n * 4, device=device)
        draw[(triton.cdiv(n, 128),)](seed, start, words, uniform, normal, n, BLOCK=128)
        want = torch.stack(randint4x(seed, torch.arange(start, start + n)), 1)
        assert torch.equal(words.cpu().to(torch.int64) & 0xFFFFFFFF, want)
        assert torch.equal(uniform.cpu(), rand(seed, 4 * n, start=4 * start))
        torch.testing.assert_close(normal.cpu(), randn(seed, 4 * n, start=4 * start), rtol=0, atol=1e-5)


# --- chips programmed from the keyed generator -----------------------------------------------------------------

def _chip(fidelity="adc", target="reram-128x128", seed=0, **changes):
    import nvcc_pt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    spec = nvcc_pt.get_target(target).replace(rows=16, cols=16, **changes)
    return nvcc_pt.compile(model, target=spec, example_inputs=(torch.randn(3, 20),), fidelity=fidelity, seed=seed)


def _states(cm):
    return [(state.effective_weight().clone(), state.stored_levels().clone()) for _, state in cm.plan.states()]


def test_a_chip_depends_on_seed_and_op_not_on_programming_order():
    from nvcc_pt.targets.simulator import program_state

    from nvcc_pt import meta

    cm = _chip(sigma=0.05, stuck_at_gmin=0.01, stuck_at_gmax=0.01)
    first = _states(cm)
    states = cm.plan.states()
    for i in reversed(range(len(states))):  # op by op, last first
        name, state = states[i]
        program_state(state, cm.plan.records[name][meta.NOISE], "adc", 0, i, None, cm.target.device)
    for (w, lv), (w2, lv2) in zip(first, _states(cm)):
        assert torch.equal(w, w2) and torch.equal(lv, lv2)
    other = _states(cm.program(1))
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(first, other))
    one_op = cm.plan.states()[0][1].levels
    assert not torch.equal(one_op[..., :8], cm.plan.states()[1][1].levels[..., :8])


def test_drift_and_faults_have_streams_of_their_own():
    from nvcc_pt.targets.devices import program_levels

    from nvcc_pt.meta import NoiseInfo

    levels = torch.randint(0, 4, (1, 4, 6, 10), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    info = NoiseInfo(device="pcm", sigma=0.05, level_sigmas=(0.05,) * 4, drift_nu=0.05, stuck_at_gmin=0.1,
                     stuck_at_gmax=0.1)
    key = ChipKey(4, 2)
    fresh = program_levels(levels, info, 2, key)
    drifted = program_levels(levels, info, 2, key, time_s=1000.0)
    stuck = (fresh == 0) & (drifted == 0) | (fresh == 3) & (drifted == 3)
    assert 0 < int(stuck.sum()) < levels.numel() // 2  # the same cells are stuck, drifting or not
    assert float((drifted[~stuck] != fresh[~stuck]).float().mean()) > 0.9  # and drift moves the others
    assert torch.equal(fresh, program_levels(levels, info, 2, ChipKey(4, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_seed_is_the_same_chip_on_cpu_and_cuda():
    cpu = _chip(sigma=0.05, stuck_at_gmin=0.01)
    gpu = _chip(sigma=0.05, stuck_at_gmin=0.01)
    gpu.to("cuda").program(0)
    # the normals agree to float rounding (GPU log and cosine), so a stored float16 level may round one unit apart
    for (w, lv), (w2, lv2) in zip(_states(cpu), _states(gpu)):
        assert float((lv2.cpu().float() - lv.float()).abs().max()) <= 2**-9
        assert float((lv2.cpu() != lv).float().mean()) < 0.01
        torch.testing.assert_close(w2.cpu(), w, rtol=0, atol=float(w.abs().max()) * 1e-3)


def test_the_triton_draw_kernel_draws_what_the_torch_ops_draw():
    device = _triton_device()
    from nvcc_pt.targets import philox_triton

    seed, n, start = ChipKey(8, 1).stream_seed(VARIATION), 3001, 2**34 - 1003  # not aligned on four
    normals = philox_triton.draw(seed, n, torch.device(device), start, normal=True).cpu()
    uniforms = philox_triton.draw(seed, n, torch.device(device), start, normal=False).cpu()
    assert torch.equal(uniforms, rand(seed, n, start=start))
    torch.testing.assert_close(normals, randn(seed, n, start=start), rtol=0, atol=1e-5)
    state = torch.tensor([seed, 3], dtype=torch.int64, device=device)  # a read-noise stream's (seed, call)
    block = philox_triton.draw_block(state, n, 2**36).cpu()
    torch.testing.assert_close(block, randn(seed, n, start=3 * 2**36), rtol=0, atol=1e-5)


# --- how much the programmed state adds to the model ------------------------------------------------------------

STATE_RATIO = {"exact": 0.0, "quantized": 1.01, "noisy": 1.01, "adc": 3.01, "bit-serial": 3.01}
"""Bound on (programmed state bytes) / (fp32 model bytes) on a 4-slice preset (8-bit weights, 2-bit cells):
the effective weight (float32) for the fast paths and the gradient, plus, at the crossbar fidelities, one
float16 level per slice column."""


@pytest.mark.parametrize("fidelity", sorted(STATE_RATIO))
def test_programmed_state_stays_within_its_bytes(fidelity):
    import nvcc_pt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    spec = nvcc_pt.get_target("reram-128x128").replace(sigma=0.05)
    cm = nvcc_pt.compile(model, target=spec, example_inputs=(torch.randn(3, 128),), fidelity=fidelity)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state_bytes = sum(state.programmed_bytes() for _, state in cm.plan.states())
    assert cm.plan.states()[0][1].config["slices"] == 4
    assert state_bytes <= STATE_RATIO[fidelity] * model_bytes
    assert state_bytes >= (STATE_RATIO[fidelity] - 0.05) * model_bytes  # the bound is what the state holds


def test_the_fused_kernel_reads_float16_levels_as_they_are():
    device = _triton_device()
    if device == "cpu":
        pytest.skip("the crossbar kernel calls libdevice, which Triton's interpreter does not provide")
    from nvcc_pt.targets import simulator_triton as fused

    gen = torch.Generator().manual_seed(0)
    tiles, rows, sn, batch, cycles = 2, 16, 24, 5, 3
    levels = (torch.randint(0, 4, (tiles, rows, sn), generator=gen) + 0.05 * torch.randn(tiles, rows, sn, generator=gen))
    stored = levels.half().to(device)
    planes = torch.randint(0, 2, (cycles, batch, 30), generator=gen).float().to(device)
    place = torch.tensor([1.0, 2.0, -4.0], device=device)
    step = torch.full((tiles, 1), 0.5, device=device)
    grid = (1 / step, step, torch.full_like(step, -64.0), torch.full_like(step, 63.0), None, 3.0, True)
    split = fused.crossbar_codes(planes, *fused.split_levels(stored.float()), place, *grid)
    alone = fused.crossbar_codes(planes, stored, None, place, *grid)
    assert torch.equal(split, alone) and bool(split.abs().sum() > 0)


# --- chips regenerated per call (`simulator.REGENERATE_LEVELS`) ---------------------------------------------------

needs_triton_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="regenerated chips need a CUDA GPU")

KEYED = [
    ("reram-128x128", {}),  # offset weights, 2-bit cells, ISAAC's flipped columns
    ("reram-128x128", {"sign": "differential", "cell_bits": 1, "stuck_at_gmin": 0.02, "stuck_at_gmax": 0.01}),
    ("reram-256x256", {"cell_bits": 4}),  # differential, 4-bit cells
    ("pcm-256x256", {}),  # drift (programmed at a later time) and read noise
    ("rram4-128x128", {}),  # per-weight variation (the NVCiM-PT group's model), differential
    ("fefet2-128x128", {"sign": "offset", "stuck_at_gmax": 0.02}),  # per-weight, offset weights, faults
]


@contextmanager
def _stored_chips():
    from nvcc_pt.targets import simulator

    simulator.REGENERATE_LEVELS["cuda"] = False
    try:
        yield
    finally:
        simulator.REGENERATE_LEVELS["cuda"] = True


def _regenerated_and_stored(target, changes, fidelity="bit-serial", device="cuda", time_s=None):
    import nvcc_pt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(37, 48), torch.nn.ReLU(), torch.nn.Linear(48, 9)).to(device)
    spec = nvcc_pt.get_target(target).replace(rows=16, cols=16, **changes)
    x = torch.randn(5, 37, device=device)
    keyed = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=3)
    with _stored_chips():
        stored = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=3)
        if time_s is not None:
            stored.program(3, time_s=time_s)
    if time_s is not None:
        keyed.program(3, time_s=time_s)
    return model, x, keyed, stored


@pytest.mark.parametrize("target", ["reram-128x128", "rram4-128x128"])
def test_a_regenerated_chip_serves_every_user_path(tmp_path, monkeypatch, target):
    """Every path that reads a chip (forward, gradient, analysis, plan files, ONNX, Monte Carlo) gives what the stored
    chip gives. A GPU regenerates the levels in a Triton pass; the CPU, where `REGENERATE_LEVELS["cpu"]` asks for it,
    with the torch ops."""
    import onnxruntime as ort
    from nvcc_pt.targets import simulator

    import nvcc_pt
    from nvcc_pt.ops import CHIP_ATTR

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(37, 48), torch.nn.ReLU(), torch.nn.Linear(48, 9))
    spec = nvcc_pt.get_target(target).replace(rows=16, cols=16, stuck_at_gmin=0.01)
    x = torch.randn(5, 37)
    stored = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="bit-serial", seed=3)
    monkeypatch.setattr(simulator, "REGENERATE_LEVELS", False)  # a bool sets every device type
    assert all(getattr(s.levels, CHIP_ATTR, None) is None for _, s in stored.program(3).plan.states())
    monkeypatch.setattr(simulator, "REGENERATE_LEVELS", {"cuda": True, "cpu": True})  # the CPU's switch
    keyed = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="bit-serial", seed=3)
    assert all(getattr(s.levels, CHIP_ATTR, None) is not None for _, s in keyed.plan.states())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(s.programmed_bytes() for _, s in keyed.plan.states()) < 0.1 * model_bytes
    kept = simulator._kept_total[0]
    with torch.no_grad():
        regenerated = keyed(x)
        assert simulator._kept_total[0] == kept  # levels regenerated per call keep no prepared tiles either
        assert torch.equal(regenerated, stored(x))
    for (_, k), (_, st) in zip(keyed.plan.states(), stored.plan.states()):
        assert torch.equal(k.effective_weight(), st.weight) and torch.equal(k.stored_levels(), st.levels)
    grads = []
    for cm in (keyed, stored):
        xg = x.clone().requires_grad_()
        cm(xg).square().sum().backward()
        grads.append(xg.grad)
    assert torch.equal(*grads)
    found = [cm.analyze([x], progress=False).ops for cm in (keyed, stored)]
    assert found[0] == found[1]
    metric = lambda m: float(m(x).square().mean())  # noqa: E731
    assert nvcc_pt.montecarlo(keyed, metric, seeds=2, progress=False).values == \
        nvcc_pt.montecarlo(stored, metric, seeds=2, progress=False).values
    assert keyed.plan.seed == 3 and getattr(keyed.plan.states()[0][1].levels, CHIP_ATTR, None) is not None
    keyed.save(tmp_path / "plan")
    with torch.no_grad():
        assert torch.equal(nvcc_pt.load(tmp_path / "plan")(x), stored(x))
    outputs = []
    for name, cm in (("keyed", keyed), ("stored", stored)):
        path = cm.export_onnx(tmp_path / f"{name}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert (outputs[0] == outputs[1]).all()
    assert getattr(keyed.plan.states()[0][1].levels, CHIP_ATTR, None) is not None  # the export put the chip back


@pytest.mark.parametrize("target", ["reram-128x128", "rram4-128x128"])
def test_a_keyed_chip_rebuilds_the_stored_levels_on_the_cpu(target):
    """`KeyedChip.columns` off the GPU (what a regenerated chip stores when it leaves the GPU) is the stored chip."""
    from nvcc_pt.targets.simulator import KeyedChip

    from nvcc_pt import meta

    cm = _chip(fidelity="bit-serial", target=target, sigma=0.05, stuck_at_gmin=0.01)
    for i, (name, state) in enumerate(cm.plan.states()):
        chip = KeyedChip(0, i, cm.plan.records[name][meta.NOISE], None, 0.0, cm.target.device.drift_t0_s)
        assert torch.equal(chip.columns(state.source, state.scale, state.config), state.levels)


@needs_triton_gpu
@pytest.mark.parametrize(("target", "changes"), KEYED)
def test_regenerated_levels_are_the_stored_ones(target, changes):
    from nvcc_pt.ops import CHIP_ATTR

    time_s = 1e4 if target.startswith("pcm") else None
    _, x, keyed, stored = _regenerated_and_stored(target, changes, time_s=time_s)
    for (_, k_state), (_, s_state) in zip(keyed.plan.states(), stored.plan.states()):
        assert getattr(k_state.levels, CHIP_ATTR, None) is not None and k_state.levels.numel() == 0
        regenerated = k_state.stored_levels()
        assert regenerated.dtype == s_state.levels.dtype and regenerated.shape == s_state.levels.shape
        if time_s is None:  # the same draws, each operation rounded as the torch ops round it
            assert torch.equal(regenerated, s_state.levels)
        else:  # drift's power may round a unit apart from torch's
            assert float((regenerated.float() - s_state.levels.float()).abs().max()) <= 2**-8
            assert float((regenerated != s_state.levels).float().mean()) < 0.01
        torch.testing.assert_close(k_state.effective_weight(), s_state.weight, rtol=0,
                                   atol=2**-8 * float(s_state.scale.max()) * 4)
    if time_s is None:
        with torch.no_grad():
            assert torch.equal(keyed(x), stored(x))


@needs_triton_gpu
@pytest.mark.parametrize(("target", "changes"), KEYED)
def test_noisy_chips_drawn_by_the_kernel_are_the_torch_ops_chips(target, changes, monkeypatch):
    from nvcc_pt.targets import simulator

    time_s = 1e4 if target.startswith("pcm") else None
    _, x, drawn, _ = _regenerated_and_stored(target, changes, fidelity="noisy", time_s=time_s)
    monkeypatch.setattr(simulator, "kernel_draws", lambda source, cfg, censor: False)
    _, _, torch_ops, _ = _regenerated_and_stored(target, changes, fidelity="noisy", time_s=time_s)
    for (_, a), (_, b) in zip(drawn.plan.states(), torch_ops.plan.states()):
        if time_s is None:  # the same draws, each operation rounded as the torch ops round it
            assert torch.equal(a.weight, b.weight)
        else:  # drift's power may round a stored level a unit apart from torch's
            torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=2**-8 * float(b.scale.max()) * 4)
    assert not torch.equal(drawn.plan.states()[0][1].weight, drawn.plan.states()[0][1].source)


@needs_triton_gpu
def test_a_regenerated_chip_holds_almost_no_state_and_serves_every_user_path(tmp_path):
    import nvcc_pt

    model, x, keyed, stored = _regenerated_and_stored("reram-128x128", {})
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    keyed_bytes = sum(state.programmed_bytes() for _, state in keyed.plan.states())
    stored_bytes = sum(state.programmed_bytes() for _, state in stored.plan.states())
    assert keyed_bytes <= 0.1 * model_bytes < 2.5 * model_bytes <= stored_bytes
    with torch.no_grad():
        expected = stored(x)
        assert torch.equal(keyed(x), expected)
        keyed.cuda_graphs = True
        assert torch.equal(keyed(x), expected) and torch.equal(keyed(x), expected)  # recorded, then replayed
        keyed.program(5)
        other = keyed(x)
        assert not torch.equal(other, expected)  # a new seed is a new chip, not the recorded one
        with _stored_chips():
            assert torch.equal(other, stored.program(5)(x))
            stored.program(3)
        keyed.program(3)
    # the gradient's effective weight is the chip's
    xg, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    keyed(xg).square().sum().backward()
    stored(xs).square().sum().backward()
    torch.testing.assert_close(xg.grad, xs.grad)
    # Monte Carlo programs each seed in turn and agrees with the stored chips
    metric = lambda m: float(m(x).square().mean())  # noqa: E731
    with _stored_chips():
        expected = nvcc_pt.montecarlo(stored, metric, seeds=3, progress=False).values
    assert keyed.plan.seed == 3
    torch.testing.assert_close(torch.tensor(nvcc_pt.montecarlo(keyed, metric, seeds=3, progress=False).values),
                               torch.tensor(expected), rtol=1e-6, atol=0)
    # a saved plan holds the levels; off the GPU the chip stores them
    keyed.save(tmp_path / "plan")
    loaded = nvcc_pt.load(tmp_path / "plan")
    with torch.no_grad():
        on_cpu = stored.to("cpu")(x.cpu())
        torch.testing.assert_close(loaded(x.cpu()), on_cpu, rtol=0, atol=1e-5)
        torch.testing.assert_close(keyed.to("cpu")(x.cpu()), on_cpu, rtol=0, atol=1e-5)
    assert all(state.levels.numel() for _, state in keyed.plan.states())
