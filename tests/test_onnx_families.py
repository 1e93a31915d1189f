"""onnxruntime against the simulator for every model family, at every exported fidelity where the family's
wiring meets the fidelity's function.

One-layer versions of the built-in tiny models, compiled once per family at `noisy` (seed 7)
and re-lowered to the other levels with the same seed. Every family runs at `exact` (its graph) and `bit-serial`
(the longest CimLinear function); every fidelity runs on Llama, on GPT-2 (Conv1D's transposed weights) and on
Qwen2 (biased projections), which between them hold each way a family hands a weight and a bias to an op. The tolerance is `mismatch` of
test_onnx.py (float32 slack; at the quantized levels, rare single-token rounding flips bounded by head steps).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from nvcc_pt.targets.onnx import SUPPORTED_FIDELITIES
from test_onnx import compare

import nvcc_pt
from nvcc_pt.models import BUILTIN, builtin_config


def one_layer(name: str):
    from transformers import AutoModelForCausalLM

    cfg = builtin_config(name)
    for attr in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, 1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def compiled():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = nvcc_pt.compile(one_layer(name), "reram-128x128", fidelity="noisy", seed=7)
        return cache[name]

    return get


EVERY_FIDELITY = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")
CASES = [(family, fidelity) for family in sorted(BUILTIN) for fidelity in SUPPORTED_FIDELITIES
         if family in EVERY_FIDELITY or fidelity in ("exact", "bit-serial")]


@pytest.mark.parametrize("family, fidelity", CASES)
def test_family_matches_simulator(compiled, family, fidelity, tmp_path):
    cm = compiled(family)
    cm = cm if fidelity == cm.fidelity else cm.with_fidelity(fidelity)
    path = cm.export_onnx(tmp_path / f"{family}.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    calls = sum((n.domain, n.op_type) == ("nvcc_pt", "CimLinear") for n in proto.graph.node)
    assert calls == len(cm.plan.states()) > 0
    compare(cm, path)
