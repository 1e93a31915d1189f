"""Training speed through the plan: one step (forward + backward) as a ratio to plain steps in the same run.

    python benchmarks/training_speed.py                  # CPU, a 1024x1024 layer at batch 256
    python benchmarks/training_speed.py --device cuda --size 4096 --batch 4096   # a GPU-sized layer

Goals (docs/training.md): a `noisy` step at most 2x a plain PyTorch step; a `bit-serial` step at
most 1.5x the `bit-serial` forward alone. A step trains the layer's weight and bias
(`cm.train_weights()`); re-programming the chip after the optimizer step is timed on its own
(`program_s`), since `nvcc_pt.train` may draw new variation only every few steps.
The layer runs on 128x128 arrays, 8-bit weights on 2-bit cells, 8-bit inputs, 8-bit ADC; bit-serial
with a 1-bit DAC and two's-complement inputs (8 cycles). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from simulator_speed import paired  # the same alternating timer as the inference benchmark

import nvcc_pt


def step_of(model):
    def step():
        for p in params:
            p.grad = None
        model(x).square().mean().backward()
    params = [p for p in layer.parameters()]
    return step


def forward_of(model):
    def forward():
        with torch.no_grad():
            model(x)
    return forward


def main() -> None:
    global layer, x
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = torch.nn.Linear(args.size, args.size).to(device)
    x = torch.randn(args.batch, args.size, device=device)
    base = nvcc_pt.get_target("reram-128x128").replace(weight_bits=8, cell_bits=2, input_bits=8, adc_bits=8,
                                                       sigma=0.02)
    out: dict = {"device": str(device), "layer": [args.size, args.size], "batch": args.batch,
                 "threads": torch.get_num_threads(), "torch": torch.__version__}
    noisy = nvcc_pt.compile(layer, base.replace(dac_bits=8), example_inputs=(x,), fidelity="noisy").to(device)
    noisy.train_weights()
    out["noisy_step_s"], out["plain_step_s"] = paired(step_of(noisy), step_of(layer), device, args.repeat)
    out["noisy_step_ratio_to_plain_step"] = out["noisy_step_s"] / out["plain_step_s"]
    out["noisy_program_s"], _ = paired(lambda: noisy.program(1), lambda: None, device, args.repeat)
    spec = base.replace(dac_bits=1, extra=(("input_encoding", "twos-complement"),))
    serial = nvcc_pt.compile(layer, spec, example_inputs=(x,), fidelity="bit-serial").to(device)
    serial.train_weights()
    out["bit_serial_step_s"], out["bit_serial_forward_s"] = paired(step_of(serial), forward_of(serial), device,
                                                                   args.repeat)
    out["bit_serial_step_ratio_to_forward"] = out["bit_serial_step_s"] / out["bit_serial_forward_s"]
    out["goals"] = {"noisy_step_ratio_to_plain_step": 2.0, "bit_serial_step_ratio_to_forward": 1.5}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
