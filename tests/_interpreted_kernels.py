"""Run by `test_triton_on_cpu.py` in a process of its own with `TRITON_INTERPRET=1`: the simulator's Triton
kernels executed by Triton's interpreter (numpy on the CPU) against the torch ops they stand in for. Prints one
JSON object per check.

The interpreter has no libdevice; the functions the kernels use stand in as the float32 numpy operations they
are (IEEE-rounded division, multiplication and addition; rounding half to even by adding and subtracting
1.5 * 2^23, exact for the codes here, all below 2^22).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import replace

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from triton.language.extra import libdevice  # noqa: E402

libdevice.div_rn = lambda a, b, **_: a / b
libdevice.mul_rn = lambda a, b, **_: a * b
libdevice.add_rn = lambda a, b, **_: a + b
libdevice.sub_rn = lambda a, b, **_: a - b
libdevice.rint = lambda a, **_: (a + 12582912.0) - 12582912.0

from triton.runtime import interpreter  # noqa: E402

_patch_tensor = interpreter._patch_lang_tensor


def _patch_tensor_index(tensor, scope) -> None:
    """The interpreter's scalars are one-element arrays, which numpy 2 no longer turns into an int: index by the
    element (a loop bound such as `range(T)`)."""
    _patch_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


interpreter._patch_lang_tensor = _patch_tensor_index

import torch  # noqa: E402
from nvcc_pt.targets import simulator_triton  # noqa: E402
from nvcc_pt.targets.devices import input_planes  # noqa: E402
from nvcc_pt.targets.simulator import KeyedChip  # noqa: E402

import nvcc_pt  # noqa: E402
from nvcc_pt import meta  # noqa: E402

CHIPS = [
    ("reram-128x128", {}),  # per-cell, offset weights
    ("reram-128x128", {"sign": "differential", "cell_bits": 1, "stuck_at_gmin": 0.02, "stuck_at_gmax": 0.01}),
    ("rram4-128x128", {}),  # per-weight, differential
    ("fefet2-128x128", {"sign": "offset", "stuck_at_gmax": 0.02, "sigma": 0.3}),  # per-weight, offset, faults
]


def keyed_chips() -> None:
    """`keyed_columns` regenerates what `program_state` stored, per op, for each device model."""
    for target, changes in CHIPS:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(37, 48), torch.nn.ReLU(), torch.nn.Linear(48, 9))
        with torch.no_grad():
            model[0].weight[3] = 0  # a row of zeros: no conductance scale, no deviation
        spec = nvcc_pt.get_target(target).replace(rows=16, cols=16, **changes)
        cm = nvcc_pt.compile(model, target=spec, example_inputs=(torch.randn(5, 37),), fidelity="bit-serial", seed=3)
        for i, (name, state) in enumerate(cm.plan.states()):
            chip = KeyedChip(3, i, cm.plan.records[name][meta.NOISE], None, 0.0, cm.target.device.drift_t0_s)
            got = chip.kernel_columns(simulator_triton, state.source, state.scale, state.config)
            held = replace(chip, seeds=torch.tensor(chip.stream_seeds()))  # the seeds read from memory, as replays do
            read = held.kernel_columns(simulator_triton, state.source, state.scale, state.config, replayable=True)
            print(json.dumps({"check": f"keyed {target} {sorted(changes)} {name}", "variation": chip.noise.variation,
                              "equal": torch.equal(got, state.levels), "seeds_read_equal": torch.equal(read, got),
                              "cells_apart": int((got != state.levels).sum())}), flush=True)


def dac_planes() -> None:
    """`dac_planes` gives `devices.input_planes` and the digit sums per row tile."""
    for encoding, dac, bits, bit_serial in [("two-phase", 1, 8, True), ("twos-complement", 3, 7, True),
                                            ("two-phase", 8, 8, False)]:
        cfg = {"input_bits": bits, "dac_bits": dac, "input_encoding": encoding}
        top = 2 ** (bits - 1) - 1
        xi = torch.randint(-top, top + 1, (19, 45), generator=torch.Generator().manual_seed(0)).float()
        want, _ = input_planes(xi, cfg, bit_serial)
        sums = torch.nn.functional.pad(want, (0, 3)).view(len(want), 19, 3, 16).sum(-1)
        planes, digits = simulator_triton.dac_planes(xi, cfg, bit_serial, 16, digits=True)
        print(json.dumps({"check": f"planes {encoding} dac {dac} bits {bits}", "equal": torch.equal(
            planes.float(), want) and torch.equal(digits, sums)}), flush=True)


PATHS = [  # (fidelity, changes to the test target): what `test_simulator.py` runs on the GPU, in brief
    ("quantized", {}),
    ("noisy", {"sigma": 0.05}),
    ("adc", {"sigma": 0.05, "adc_bits": 6}),
    ("adc", {"sign": "offset", "cell_bits": 3}),
    ("bit-serial", {"sigma": 0.08, "adc_bits": 5, "dac_bits": 2}),
    ("bit-serial", {"adc_range": "exact", "sign": "offset", "sigma": 0.05}),  # ISAAC's flipped columns
    ("bit-serial", {"extra": (("input_encoding", "twos-complement"),), "sigma": 0.05}),
    ("bit-serial", None),  # the default preset as it is
]


def gpu_paths() -> None:
    """Whole models through the GPU's code paths (the fused kernels serve CPU tensors here) against the CPU's: outputs
    and input gradients, which read the crossbar kernel's clip flags."""
    import triton
    from nvcc_pt.targets import simulator

    # one block shape, so that the autotuner has nothing to time
    simulator_triton._crossbar_kernel.configs = [triton.Config({"BM": 16, "BN": 32}, num_warps=1)]
    simulator_triton._split_linear_kernel.configs = [triton.Config({"BM": 16, "BN": 16, "BK": 16}, num_warps=1)]
    cpu_kernels = simulator.kernels_for
    calls = {"crossbar_codes": 0, "split_linear": 0, "dac_planes": 0}

    def counting(name: str):
        kernel = getattr(simulator_triton, name)

        def counted(*args, **kwargs):
            calls[name] += 1
            return kernel(*args, **kwargs)
        return counted

    for name in calls:  # count what the GPU paths ran
        setattr(simulator_triton, name, counting(name))
    for fidelity, changes in PATHS:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(37, 45), torch.nn.ReLU(), torch.nn.Linear(45, 29))
        base = nvcc_pt.get_target("reram-128x128")
        spec = base if changes is None else base.replace(
            **{"rows": 16, "cols": 24, "sigma": 0.0, "sign": "differential", "adc_range": "full-scale", **changes})
        x = torch.randn(5, 37, generator=torch.Generator().manual_seed(1))
        cm = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity=fidelity, seed=3)
        runs = []
        for counter in calls:
            calls[counter] = 0
        for kernels in (cpu_kernels, lambda t: simulator_triton):
            simulator.kernels_for = kernels
            xg = x.clone().requires_grad_()
            y = cm(xg)
            y.square().sum().backward()
            runs.append((y.detach(), xg.grad))
        simulator.kernels_for = cpu_kernels
        (y_cpu, g_cpu), (y_gpu, g_gpu) = runs
        print(json.dumps({"check": f"path {fidelity} {changes}", "scale": float(y_cpu.abs().max()),
                          "error": float((y_gpu - y_cpu).abs().max()), "grad_scale": float(g_cpu.abs().max()),
                          "grad_error": float((g_gpu - g_cpu).abs().max()), "kernel_calls": dict(calls)}),
              flush=True)


@contextmanager
def as_on_a_gpu(threads: int | None = None):
    """The simulator's GPU choices on the CPU: its Triton kernels (`kernels_for`), chips regenerated per call, and
    with `threads`, torch's thread count (programming runs ops on that many threads; the interpreter is not
    thread-safe)."""
    from nvcc_pt.targets import simulator

    kernels, regenerate, count = simulator.kernels_for, dict(simulator.REGENERATE_LEVELS), torch.get_num_threads()
    simulator.kernels_for = lambda t: simulator_triton
    simulator.REGENERATE_LEVELS["cpu"] = simulator.REGENERATE_LEVELS["cuda"]
    torch.set_num_threads(threads or count)
    try:
        yield
    finally:
        simulator.kernels_for = kernels
        simulator.REGENERATE_LEVELS.update(regenerate)
        torch.set_num_threads(count)


def regenerated_chips() -> None:
    """Models compiled as on a GPU, whose chips regenerate per call (`simulator.KeyedChip`), against stored chips, both
    through the GPU code paths."""
    from nvcc_pt.ops import CHIP_ATTR

    for target in ("reram-128x128", "rram4-128x128"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(37, 48), torch.nn.ReLU(), torch.nn.Linear(48, 9))
        spec = nvcc_pt.get_target(target).replace(rows=16, cols=16)
        x = torch.randn(5, 37, generator=torch.Generator().manual_seed(1))
        stored = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="adc", seed=3)
        with as_on_a_gpu(), torch.no_grad():
            keyed = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="adc", seed=3)
            same = torch.equal(keyed(x), stored(x))
        chips = all(getattr(state.levels, CHIP_ATTR, None) is not None for _, state in keyed.plan.states())
        print(json.dumps({"check": f"regenerated {target}", "keyed": chips, "equal": same}), flush=True)
        # noisy chips: the keyed kernel draws the columns, the effective weight is read back from them
        stored = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="noisy", seed=3)
        with as_on_a_gpu(threads=1):
            drawn = nvcc_pt.compile(model, target=spec, example_inputs=(x,), fidelity="noisy", seed=3)
        same = all(torch.equal(a.weight, b.weight) for (_, a), (_, b) in zip(stored.plan.states(), drawn.plan.states()))
        print(json.dumps({"check": f"noisy drawn {target}", "equal": same}), flush=True)


def read_noise_blocks() -> None:
    """The draw kernel reading a read-noise stream's (seed, call) from memory draws the call's block of the stream."""
    from nvcc_pt.targets import philox, philox_triton

    seed, n = philox.ChipKey(5, 2).stream_seed(philox.READ), 1001
    for call in (1, 7):
        state = torch.tensor([seed, call], dtype=torch.int64)
        error = (philox_triton.draw_block(state, n, 2**36) - philox.randn(seed, n, start=call * 2**36)).abs().max()
        print(json.dumps({"check": f"read block {call}", "error": float(error)}), flush=True)


if __name__ == "__main__":
    read_noise_blocks()
    keyed_chips()
    dac_planes()
    gpu_paths()
    regenerated_chips()
