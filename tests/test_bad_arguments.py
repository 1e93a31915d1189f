"""Every bad argument a user can pass to a public entry point ends in an `NvccPtError` that names it.

One row per argument: the call, the error class, and a pattern the message must carry (the argument's
name or value and the way out).
"""

import json
import math

import pytest
import torch
from torch import nn

import nvcc_pt
import nvcc_pt.models
from nvcc_pt import DeviceError, FidelityError, InputError, NvccPtError, TargetError, get_target
from nvcc_pt.cli import main
from nvcc_pt.errors import DataError
from nvcc_pt.prompt import metrics
from nvcc_pt.prompt.bank import OVTBank, query_embeddings
from nvcc_pt.prompt.harness import EvalConfig, evaluate
from nvcc_pt.prompt.lamp import Example, get_task, load_lamp
from nvcc_pt.prompt.noise import read_back_ovt
from nvcc_pt.prompt.selection import SampleBuffer, select_representatives
from nvcc_pt.prompt.ssa import ssa_keys
from nvcc_pt.prompt.synthetic import SyntheticWorld
from nvcc_pt.prompt.training import train_ovt

NAN = math.nan
BASE = get_target("reram-128x128")


@pytest.fixture(scope="module")
def cm():
    model = nn.Linear(8, 4)
    return nvcc_pt.compile(model, "reram-128x128", example_inputs=(torch.randn(2, 8),), fidelity="adc")


def _buffer(n=6):
    return [Example(f"text {i}", str(i % 2)) for i in range(n)]


def _embed(texts):
    return torch.randn(len(texts), 4, generator=torch.Generator().manual_seed(0))


# (call, error class, message pattern); `cm` is passed to calls that take one argument
TARGETS = [
    (lambda: BASE.replace(weight_bits=32), TargetError, r"weight_bits=32 .*\[2, 16\]"),
    (lambda: BASE.replace(weight_bits=16, cell_bits=17), TargetError, r"cell_bits=17"),
    (lambda: BASE.replace(input_bits=1, dac_bits=1), TargetError, r"input_bits=1 .*\[2, 16\]"),
    (lambda: BASE.replace(rows="128"), TargetError, r"rows='128' must be an integer"),
    (lambda: BASE.replace(adc_bits=6.0), TargetError, r"adc_bits=6.0 must be an integer"),
    (lambda: BASE.replace(sign=1), TargetError, r"sign=1 is not one of"),
    (lambda: BASE.replace(clock_mhz="fast"), TargetError, r"clock_mhz='fast' must be a number"),
    (lambda: BASE.replace(chips=True), TargetError, r"chips=True must be an integer"),
    (lambda: BASE.replace(extra=[("a", 1)]), TargetError, r"extra=.* tuple of \(key, value\) pairs"),
    (lambda: BASE.replace(extra=(("input_encoding", "gray"),)), TargetError, r"input_encoding"),
    (lambda: BASE.replace(device="reram"), TargetError, r"device must be a DeviceModel"),
    (lambda: BASE.replace(g_max_us=NAN), TargetError, r"g_max_us=nan must be a finite number"),
    (lambda: BASE.replace(drift_t0_s=NAN), TargetError, r"drift_t0_s=nan must be a finite number"),
    (lambda: BASE.replace(sigma=math.inf), TargetError, r"sigma=inf must be a finite number"),
    (lambda: BASE.replace(sigma=11.0), TargetError, r"sigma=11.0 is out of range"),
    (lambda: BASE.replace(stuck_at_gmin="0.1"), TargetError, r"stuck_at_gmin='0.1' must be a number"),
    (lambda: BASE.replace(level_scale="1111"), TargetError, r"level_scale='1111' must be a sequence"),
    (lambda: BASE.replace(name=" x"), TargetError, r"whitespace"),
    (lambda: nvcc_pt.TargetSpec.from_dict([1, 2]), TargetError, r"must be a dict"),
    (lambda: nvcc_pt.TargetSpec.from_dict({**BASE.to_dict(), "zzz": 1}), TargetError, r"malformed"),
    (lambda: get_target("reram-256x256\n"), TargetError, r"whitespace; pass 'reram-256x256'"),
    (lambda: get_target("reram-10000000000x1"), TargetError, r"10000000000x1 array is out of range"),
    (lambda: get_target("reram-128x128x"), TargetError, r"Did you mean"),
    (lambda: get_target(128), TargetError, r"a name or a TargetSpec"),
    (lambda: nvcc_pt.register_target("reram-9x9"), TargetError, r"takes a TargetSpec"),
]

COMPILED = [
    (lambda cm: cm.program(seed="x"), InputError, r"program: seed='x' must be an integer"),
    (lambda cm: cm.program(seed=-1), InputError, r"seed=-1 is out of range"),
    (lambda cm: cm.program(seed=2**64), InputError, r"out of range"),
    (lambda cm: cm.program(time_s="x"), InputError, r"time_s='x' must be a number"),
    (lambda cm: cm.program(time_s=NAN), InputError, r"time_s=nan must be a finite number"),
    (lambda cm: cm.program(time_s=-1.0), InputError, r"time_s=-1.0 is out of range"),
    (lambda cm: cm.program(draw_on="gpu"), InputError, r"draw_on='gpu' is not one of"),
    (lambda cm: cm.calibrate(None), InputError, r"calibrate: batches must be an iterable"),
    (lambda cm: cm.calibrate(torch.randn(2, 8)), InputError, r"such as \[ids1, ids2\]"),
    (lambda cm: cm.to("nonsense"), DeviceError, r"'nonsense' is not a device"),
    (lambda cm: cm.to(3), InputError, r"to: device must be a str or device"),
    (lambda cm: cm.with_fidelity("perfect"), FidelityError, r"unknown fidelity 'perfect'"),
    (lambda cm: cm.with_fidelity(None), FidelityError, r"unknown fidelity None"),
    (lambda cm: cm.save(5), InputError, r"save: path=5 must be a path"),
    (lambda cm: cm.export_onnx(None), InputError, r"export_onnx: path=None must be a path"),
    (lambda cm: nvcc_pt.montecarlo(cm, 5), InputError, r"metric must be a function"),
    (lambda cm: nvcc_pt.montecarlo(cm, lambda m: 1.0, seeds="x"), InputError, r"seeds='x'"),
    (lambda cm: nvcc_pt.montecarlo(cm, lambda m: 1.0, seeds=[1, "a"]), InputError, r"seed='a'"),
    (lambda cm: nvcc_pt.montecarlo(cm, lambda m: 1.0, seeds=2, k=NAN), InputError, r"percentile k=nan"),
    (lambda cm: nvcc_pt.montecarlo(cm, lambda m: 1.0, seeds=2, instances_per_pass=0), InputError,
     r"instances_per_pass=0"),
    (lambda cm: nvcc_pt.montecarlo("cm", lambda m: 1.0), InputError, r"cm must be a CompiledModel"),
]

COMPILE = [
    ({"seed": -1}, InputError, r"compile: seed=-1"),
    ({"seed": 1.5}, InputError, r"seed=1.5 must be an integer"),
    ({"fidelity": 3}, FidelityError, r"unknown fidelity 3"),
    ({"precision": 5}, InputError, r"precision=5 must be a dict"),
    ({"precision": {"*": 4}}, InputError, r"precision\['\*'\]=4"),
    ({"precision": {"*": {"weight_bits": "4"}}}, TargetError, r"weight_bits='4' must be an integer"),
    ({"precision": {"*": {"weight_bits": 32}}}, TargetError, r"weight_bits=32"),
    ({"policy": "bogus"}, NvccPtError, r"unknown policy 'bogus'"),
    ({"policy": {"include": "*.mlp"}}, InputError, r"include='\*.mlp' must be a tuple of glob strings"),
    ({"policy": {"map_lm_head": "no"}}, InputError, r"map_lm_head='no' must be True or False"),
    ({"soft_prompt": torch.zeros(3)}, InputError, r"soft_prompt must have 2 dimension"),
    ({"soft_prompt": torch.full((2, 8), NAN)}, InputError, r"soft_prompt holds NaN"),
    ({"constant_prompt": "yes"}, InputError, r"constant_prompt='yes' must be True or False"),
    ({"duplicate": 2}, InputError, r"duplicate=2 must be True, False or a dict"),
    ({"duplicate": {"lin*": 0}}, nvcc_pt.AllocationError, r"duplicate\['lin\*'\]=0 must be a positive integer"),
    ({"duplicate": {3: 2}}, InputError, r"duplicate key=3 must be a string"),
    ({"tokens": 0}, InputError, r"tokens=0 is out of range"),
    ({"target": "reram-256x256\n"}, TargetError, r"whitespace"),
]


def _lamp_files(tmp_path, questions, outputs=None, raw=None):
    q, o = tmp_path / "q.json", tmp_path / "o.json"
    q.write_bytes(raw if raw is not None else json.dumps(questions).encode())
    o.write_text(json.dumps(outputs if outputs is not None else {"task": "LaMP_2", "golds": []}))
    return q, o


PROMPT = [
    (lambda: SampleBuffer("x"), InputError, r"capacity='x' must be an integer"),
    (lambda: SampleBuffer(0), InputError, r"capacity=0 is out of range"),
    (lambda: SampleBuffer(3).add("text"), InputError, r"example must be a Example"),
    (lambda: select_representatives(_buffer(), n_clusters=2.5, embedder=_embed), InputError, r"n_clusters=2.5"),
    (lambda: select_representatives(_buffer(), per_cluster=0, embedder=_embed), InputError, r"per_cluster=0"),
    (lambda: select_representatives(_buffer(), embedder=lambda t: torch.full((len(t), 4), NAN)), InputError,
     r"NaN or infinite embeddings"),
    (lambda: select_representatives(_buffer(), embedder=lambda t: "emb"), InputError, r"not a tensor"),
    (lambda: select_representatives("abc", embedder=_embed), InputError, r"buffer must be a sequence of Example"),
    (lambda: OVTBank().add("k", torch.full((2, 4), NAN)), InputError, r"OVT 'k' holds NaN"),
    (lambda: OVTBank().add(5, torch.zeros(2, 4)), InputError, r"key=5 must be a string"),
    (lambda: OVTBank().add("k", [[1.0]]), InputError, r"must be a torch.Tensor"),
    (lambda: OVTBank().add("k", torch.zeros(0, 4)), InputError, r"both > 0"),
    (lambda: ssa_keys(torch.zeros(1, 4, 2), scales=("a",), weights=(1.0,)), InputError, r"scales\[0\]='a'"),
    (lambda: ssa_keys(torch.zeros(1, 4, 2), scales=(1,), weights=(NAN,)), InputError, r"weights\[0\]=nan"),
    (lambda: ssa_keys(torch.zeros(1, 4, 2), scales=2, weights=(1.0,)), InputError, r"scales=2 must be a sequence"),
    (lambda: metrics.accuracy(["a"], [None]), InputError, r"references must all be strings"),
    (lambda: metrics.f1_macro(["a"], ["a"], labels=[]), InputError, r"labels=\[\] must be a non-empty list"),
    (lambda: metrics.rouge1("abc", "abd"), InputError, r"must be a list of strings"),
    (lambda: train_ovt(None, None, 5), InputError, r"examples must be a list of Example"),
    (lambda: train_ovt(None, None, _buffer(2), n_virtual=0), InputError, r"n_virtual=0"),
    (lambda: train_ovt(None, None, _buffer(2), lr=NAN), InputError, r"lr=nan"),
    (lambda: train_ovt(None, None, _buffer(2), init=3), InputError, r"init=3"),
    (lambda: read_back_ovt(torch.zeros(2, 4), "rram1-128x128", None), InputError, r"generator must be a Generator"),
    (lambda: read_back_ovt(torch.zeros(2, 4), "rram1-128x128", torch.Generator(), sigma="x"), TargetError,
     r"sigma='x'"),
    (lambda: EvalConfig(sigmas=(NAN,)), InputError, r"sigmas\[0\]=nan"),
    (lambda: EvalConfig(crossbar="big"), InputError, r"crossbar='big'"),
    (lambda: EvalConfig(devices=("nope",)), TargetError, r"unknown target 'nope-128x128'"),
    (lambda: EvalConfig(n_clusters=2.5), InputError, r"n_clusters=2.5"),
    (lambda: EvalConfig(devices="rram1"), InputError, r"devices='rram1' must be a non-empty tuple"),
    (lambda: SyntheticWorld(n_users=-1), InputError, r"n_users=-1"),
    (lambda: SyntheticWorld(words_per_input=30), InputError, r"words_per_domain >= 29"),
    (lambda: SyntheticWorld(seed="s"), InputError, r"seed='s'"),
    (lambda: get_task(2.5), DataError, r"unknown LaMP task 2.5"),
    (lambda: evaluate(nn.Linear(2, 2), None, "data"), InputError, r"evaluate: dataset must be a LampDataset"),
    (lambda: query_embeddings(None, None, "abc"), InputError, r"texts must be a list of strings"),
    (lambda: OVTBank.load(5), InputError, r"OVTBank.load: path=5 must be a path"),
    (lambda: Example(None, "x"), InputError, r"Example: input=None must be a string"),
    (lambda: load_lamp(5), DataError, r"questions=5 must be the path"),
    (lambda: nvcc_pt.models.build_model("builtin:tiny-llama", seed=-3), InputError, r"seed=-3"),
]

LAMP = [
    ([{"id": "q0", "input": None, "profile": []}], None, None, r"field 'input' is None"),
    ([{"id": "q0", "input": "x", "profile": []}], {"task": "LaMP_2", "golds": [{"id": "q0", "output": None}]}, None,
     r"field 'output' is None"),
    ([{"id": [1], "input": "x"}], None, None, r"'id' is \[1\]"),
    ([{"id": "q0", "input": "x", "profile": [{"id": "p", "description": {"a": 1}, "tag": "comedy"}]}], None, None,
     r"field 'description'"),
    ([{"id": "q0", "input": NAN}], None, None, r"field 'input' is nan"),
    (None, None, b"\xff\xfe[]", r"not UTF-8"),
    (None, None, b"[" * 100_000 + b"]" * 100_000, r"nests JSON too deeply"),
]


@pytest.mark.parametrize("call, error, match", TARGETS + PROMPT)
def test_bad_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("call, error, match", COMPILED)
def test_bad_argument_to_a_compiled_model(cm, call, error, match):
    with pytest.raises(error, match=match):
        call(cm)


@pytest.mark.parametrize("options, error, match", COMPILE)
def test_bad_compile_option(options, error, match):
    options = {"example_inputs": (torch.randn(2, 8),), **options}
    with pytest.raises(error, match=match):
        nvcc_pt.compile(nn.Linear(8, 4), **options)


@pytest.mark.parametrize("questions, outputs, raw, match", LAMP)
def test_bad_lamp_record(tmp_path, questions, outputs, raw, match):
    q, o = _lamp_files(tmp_path, questions, outputs, raw)
    with pytest.raises(DataError, match=match):
        load_lamp(q, o if outputs is not None else None, task=2)


@pytest.mark.parametrize("argv, match", [
    (["compile", "--seed", "x"], r"--seed: invalid"),
    (["compile", "--seed", "-1"], r"seed=-1 is out of range"),
    (["compile", "--prompt-tokens", "-2"], r"value=-2"),
    (["compile", "--target", "reram-256x256 "], r"whitespace"),
    (["compile", "--fidelity", "perfect"], r"unknown fidelity 'perfect'"),
    (["compile", "--model", "builtin:nope"], r"unknown built-in model"),
    (["report", "/nonexistent/plan"], r"does not exist"),
    (["inspect", "/nonexistent.onnx"], r"does not exist"),
    (["nvcimpt", "eval", "--model", "m", "--questions", "q", "--outputs", "o", "--sigmas", "0.1,x"], r"--sigmas"),
    (["nvcimpt", "eval", "--model", "m", "--questions", "q", "--outputs", "o", "--lr", "nan"], r"lr|value=nan"),
    (["nvcimpt", "eval", "--model", "m", "--questions", "q", "--outputs", "o", "--limit", "-1"], r"--limit"),
    (["nvcimpt", "synth", "--out", "x", "--users", "many"], r"--users"),
    (["nvcimpt", "study", "--sigmas", "0,x"], r"--sigmas"),
    (["nvcimpt", "study", "--chips", "0"], r"--chips"),
    (["nvcimpt", "study", "--task", "lyrics"], r"--task"),
    (["nvcimpt", "study", "--methods", "nvcimpt,magic", "--out", "/nonexistent/x"], r"unknown method"),
    (["nvcimpt", "study", "--devices", "rram9", "--out", "/nonexistent/x"], r"rram9"),
    (["nvcimpt", "study", "--seeds", "0,-1"], r"--seeds|seed"),
])
def test_cli_bad_argument_prints_the_error_and_exits_2(argv, match, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage error
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "error" in err
    assert __import__("re").search(match, err), err
