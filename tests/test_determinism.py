"""A plan's seed fixes every random draw: variation, faults, drift and per-call read noise.

The same plan, seed and inputs give bit-identical logits whatever torch's global generator holds,
on one or two threads, and in a fresh process; `program(seed)` restarts the read-noise sequence.
"""

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nvcc_pt
import nvcc_pt.api as api
from nvcc_pt.models import build_model

SEED = 5
FIDELITIES = ("noisy", "adc")


def _logits(out):
    return getattr(out, "logits", out)


def _cached_capture():
    """Capture the tiny model once per process: the passes and programming are what this file tests."""
    real, cache = api.capture, {}

    def capture(model, *args, **kwargs):
        if id(model) not in cache:
            cache[id(model)] = real(model, *args, **kwargs)
        return cache[id(model)]

    return capture


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def digests() -> dict[str, list[str]]:
    """For every preset and fidelity: digests of two calls, a call after re-programming another seed with drift."""
    model = build_model("builtin:tiny-llama", seed=0)
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(3))
    api.capture = _cached_capture()
    out = {}
    with torch.no_grad():
        for name in nvcc_pt.list_targets():
            noisy = nvcc_pt.compile(model, name, fidelity="noisy", seed=SEED)
            for fidelity, cm in (("noisy", noisy), ("adc", noisy.with_fidelity("adc"))):
                calls = [_digest(_logits(cm(ids))) for _ in range(2)]
                cm.program(SEED + 1, time_s=3600.0)
                calls.append(_digest(_logits(cm(ids))))
                out[f"{name}/{fidelity}"] = calls
    return out


@pytest.fixture(scope="module")
def reference():
    """The digests from a fresh process on one thread."""
    code = (f"import sys, json, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); torch.set_num_threads(1); "
            "import test_determinism as t; print(json.dumps(t.digests()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_preset_repeats_across_processes_threads_and_global_seeds(reference, monkeypatch):
    assert set(reference) == {f"{n}/{f}" for n in nvcc_pt.list_targets() for f in FIDELITIES}
    threads = torch.get_num_threads()
    monkeypatch.setattr(api, "capture", api.capture)  # digests() swaps in a cached capture; put it back after
    try:
        torch.set_num_threads(2)
        torch.manual_seed(12345)
        here = digests()
    finally:
        torch.set_num_threads(threads)
    assert here == reference
    # read noise is drawn per call: with read noise two calls differ, without it they agree
    for name in nvcc_pt.list_targets():
        reads = nvcc_pt.get_target(name).device.read_sigma > 0
        for fidelity in FIDELITIES:
            first, second, _ = reference[f"{name}/{fidelity}"]
            assert (first != second) == reads, (name, fidelity)


def test_program_restarts_the_read_noise_sequence_whatever_the_global_generator_holds(tiny_models, ids):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "pcm-256x256", fidelity="noisy", seed=2)
    with torch.no_grad():
        first = [_logits(cm(ids)) for _ in range(3)]
        torch.manual_seed(99)
        torch.randn(1000)
        cm.program(2)
        again = [_logits(cm(ids)) for _ in range(3)]
        cm.program(3)
        other = _logits(cm(ids))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # a fresh draw per call
    assert not torch.equal(first[0], other)  # another seed, another chip


def test_read_noise_is_the_keyed_stream_of_seed_op_and_call():
    from nvcc_pt.targets.philox import BLOCK_STRIDE, READ, ChipKey, randn
    from nvcc_pt.targets.simulator import _read_noise_weight

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Linear(10, 6))
    spec = nvcc_pt.get_target("pcm-256x256").replace(read_sigma=0.02)
    cm = nvcc_pt.compile(model, spec, example_inputs=(torch.randn(5, 12),), fidelity="noisy", seed=7)
    _, state = cm.plan.states()[1]
    weight = state.effective_weight()
    for call in (1, 2):  # the calls after programming
        noise = (_read_noise_weight(weight, state.scale, state.config) - weight) / state.scale[:, None]
        z = randn(ChipKey(7, 1).stream_seed(READ), weight.numel(), start=call * BLOCK_STRIDE).view(weight.shape)
        ratio = noise / z  # one sigma for every cell: the read noise of the weight's cells summed
        torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=0)
        assert float(ratio.mean()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fidelity", ["noisy", "adc"])
def test_read_noise_is_the_same_on_cpu_and_cuda(fidelity):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    x = torch.randn(6, 40)
    spec = nvcc_pt.get_target("pcm-256x256").replace(rows=16, cols=16)
    cpu = nvcc_pt.compile(model, spec, example_inputs=(x,), fidelity=fidelity, seed=3)
    gpu = nvcc_pt.compile(copy.deepcopy(model), spec, example_inputs=(x,), fidelity=fidelity, seed=3)
    gpu.to("cuda").program(3)
    cpu.program(3)
    with torch.no_grad():
        for _ in range(2):  # successive calls draw successive blocks of each op's stream
            on_gpu, on_cpu = gpu(x.cuda()).cpu(), cpu(x)
            # the normals agree to float rounding, so at adc a read on a rounding boundary may land one code apart
            assert float((on_gpu - on_cpu).abs().mean()) < 0.01 * float(on_cpu.abs().mean())


def test_a_moved_or_reloaded_plan_keeps_its_read_noise_stream(tiny_models, ids, tmp_path):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "pcm-256x256", fidelity="noisy", seed=4)
    with torch.no_grad():
        first = _logits(cm(ids))
        cm.program(4)
        cm.to("cpu")  # moving the state keeps the stream (and its position)
        assert torch.equal(_logits(cm(ids)), first)
        cm.program(4)
        cm.save(tmp_path / "plan")
        loaded = nvcc_pt.load(tmp_path / "plan")
        assert torch.equal(_logits(loaded(ids)), first)
