"""Hostile plan directories: each is refused with `PlanFormatError`, and none runs its payload.

Every payload, if it ran, would create `MARKER`; each test checks that it does not exist. Edits that keep
the digests consistent (`plan_forge.reseal`) reach the checks behind the digests.
"""

import json
import os
import pickle
import random
import zipfile

import pytest
import torch
from plan_forge import reseal

import nvcc_pt
from nvcc_pt import PlanFormatError, tensorfile
from nvcc_pt.plan import PROGRAM, TENSORS


def _logits(out):
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def plans(tmp_path_factory, tiny_models):
    """Two compiles of the same architecture (other weights), saved."""
    root = tmp_path_factory.mktemp("hostile")
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="noisy", seed=0)
    cm.save(root / "good")
    torch.manual_seed(1)
    from nvcc_pt.models import build_model

    other = nvcc_pt.compile(build_model("builtin:tiny-llama", seed=1), "reram-128x128", fidelity="noisy", seed=0)
    other.save(root / "other")
    nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="exact", seed=0).save(root / "exact")
    return root


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload in the plan ran"


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _copy(src, dest):
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _doc(path):
    return json.loads((path / "plan.json").read_text())


def _mapped(doc):
    """The records of the plan's first mapped op (unmapped products, such as a rotary embedding's, have fewer)."""
    return next(r for r in doc["records"].values() if r.get("nvcc_pt.selection", {}).get("mapped"))


def _refused(path, match=None):
    with pytest.raises(PlanFormatError, match=match):
        nvcc_pt.load(path)


def _fix_file_digest(path, name):
    """Record the file's new digest (but nothing else), so the reader gets as far as parsing it."""
    doc = _doc(path)
    doc["integrity"]["files"][name] = tensorfile.sha256((path / name).read_bytes())
    from nvcc_pt.plan import seal

    (path / "plan.json").write_text(json.dumps(seal(doc)))


# -- pickles and code in every slot ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["plan.json", PROGRAM, TENSORS])
def test_a_pickle_in_place_of_any_file_is_refused_unread(plans, tmp_path, marker, name):
    bad = _copy(plans / "good", tmp_path / "bad")
    (bad / name).write_bytes(pickle.dumps(_Payload(marker)))
    _refused(bad)
    if name != "plan.json":
        _fix_file_digest(bad, name)
        _refused(bad, "not (a )?valid")


def test_a_schema_1_plan_with_payloads_in_program_pt2_is_refused_unopened(plans, tmp_path, marker):
    old = _copy(plans / "good", tmp_path / "old")
    os.remove(old / PROGRAM)
    doc = _doc(old)
    doc["schema"] = 1
    (old / "plan.json").write_text(json.dumps(doc))
    payload = pickle.dumps(_Payload(marker))
    with zipfile.ZipFile(old / "program.pt2", "w") as z:  # the slots torch.export.load unpickles
        for slot in ("archive/data/sample_inputs/model.pt", "archive/data/weights/model.pt",
                     "archive/data/constants/model.pt"):
            z.writestr(slot, payload)
        z.writestr("archive/models/model.json", json.dumps({"sym": "__import__('os').system('touch x')"}))
    _refused(old, "schema version 1.*compile the model again|Compile the model again")


def test_a_pickled_blob_as_a_tensor_is_an_unexpected_tensor(plans, tmp_path, marker):
    bad = _copy(plans / "good", tmp_path / "bad")
    data = bytearray((bad / TENSORS).read_bytes())
    tensors = {k: t.clone() for k, (t, _) in tensorfile.decode(data, "t").items()}
    tensors["program/m.evil"] = torch.frombuffer(bytearray(pickle.dumps(_Payload(marker))), dtype=torch.uint8)
    (bad / TENSORS).write_bytes(tensorfile.encode(tensors)[0])
    reseal(bad)
    _refused(bad, "unexpected")


@pytest.mark.parametrize("edit", [
    lambda nodes, lin: lin.update(target="builtins.eval"),
    lambda nodes, lin: lin.update(target="__import__('os').system('touch PAYLOAD_RAN')"),
    lambda nodes, lin: lin.update(target="aten.__class__.default"),
    lambda nodes, lin: lin.update(target="torch._C._import_dotted_name"),
    lambda nodes, lin: lin.update(target="higher_order.wrap_with_set_grad_enabled"),
    lambda nodes, lin: lin.update(name="__import__('os').system('touch PAYLOAD_RAN')"),
    lambda nodes, lin: lin["args"].append("__import__('os').system('touch PAYLOAD_RAN')"),
    lambda nodes, lin: lin["kwargs"].update(code="__import__('os').system('touch PAYLOAD_RAN')"),
    lambda nodes, lin: lin.update(args=[{"node": "nope"}]),
    lambda nodes, lin: lin.update(args=[{"node": lin["name"]}]),
    lambda nodes, lin: nodes[0].update(op="call_module"),
    lambda nodes, lin: nodes[-1]["args"].append({"pickle": "gASV"}),
    lambda nodes, lin: nodes.insert(3, dict(nodes[3])),
    lambda nodes, lin: nodes.pop(),
])
def test_code_in_the_program_is_refused(plans, tmp_path, marker, edit):
    bad = _copy(plans / "good", tmp_path / "bad")
    program = json.loads((bad / PROGRAM).read_text())
    edit(program["nodes"], next(n for n in program["nodes"] if n.get("target") == "aten.linear.default"))
    (bad / PROGRAM).write_text(json.dumps(program))
    reseal(bad)
    _refused(bad)


@pytest.mark.parametrize("change", [
    {"name": "m.x", "kind": "opaque"},
    {"name": "m.x", "tensor": "pickle:gASV"},
    {"name": "m.__class__"},
    {"name": "forward"},
    {"name": "m.x", "pickle": 1},
    {"name": "m.x", "dtype": "object"},
])
def test_attributes_are_declared_tensors_by_name_only(plans, tmp_path, marker, change):
    bad = _copy(plans / "good", tmp_path / "bad")
    program = json.loads((bad / PROGRAM).read_text())
    program["attributes"].append({**program["attributes"][0], **change})
    (bad / PROGRAM).write_text(json.dumps(program))
    reseal(bad)
    _refused(bad)


@pytest.mark.parametrize("where", ["capture-shape", "input-dtype", "seed", "target-name"])
def test_expression_strings_in_plan_json_are_never_evaluated(plans, tmp_path, marker, where):
    bad = _copy(plans / "good", tmp_path / "bad")
    doc = _doc(bad)
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    if where == "capture-shape":
        doc["capture"]["inputs"][0]["shape"] = [code, None]
    elif where == "input-dtype":
        doc["capture"]["inputs"][0]["dtype"] = code
    elif where == "seed":
        doc["seed"] = code
    else:
        doc["target"]["rows"] = code
    reseal(bad, doc)
    _refused(bad)


# -- tampering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("files", [[TENSORS], [PROGRAM, TENSORS], ["plan.json"]])
def test_files_from_another_compile_of_the_same_architecture(plans, tmp_path, files):
    mixed = _copy(plans / "good", tmp_path / "mixed")
    for name in files:
        (mixed / name).write_bytes((plans / "other" / name).read_bytes())
    _refused(mixed, "digest|fingerprint|mixes")


def test_state_tensors_of_another_fidelity_are_refused_even_resealed(plans, tmp_path):
    mixed = _copy(plans / "good", tmp_path / "mixed")
    (mixed / TENSORS).write_bytes((plans / "exact" / TENSORS).read_bytes())
    reseal(mixed)
    _refused(mixed, "dtype .* shape|lacks")


def test_dropped_records(plans, tmp_path):
    bad = _copy(plans / "good", tmp_path / "bad")
    doc = _doc(bad)
    doc["records"].pop(next(k for k, r in doc["records"].items() if r is _mapped(doc)))
    (bad / "plan.json").write_text(json.dumps(doc, indent=1))
    _refused(bad, "digest")
    reseal(bad, doc)
    _refused(bad, "unexpected")


@pytest.mark.parametrize("rows", [0, 64, -1, "128", 1.5, None])
def test_tile_rows_must_be_the_targets(plans, tmp_path, rows):
    bad = _copy(plans / "good", tmp_path / "bad")
    doc = _doc(bad)
    _mapped(doc)["nvcc_pt.tiles"]["rows"] = rows
    reseal(bad, doc)
    _refused(bad, "tiles|rows")


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bits_in_tensors_are_caught(plans, tmp_path, seed):
    bad = _copy(plans / "good", tmp_path / "bad")
    data = bytearray((bad / TENSORS).read_bytes())
    rng = random.Random(seed)
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    (bad / TENSORS).write_bytes(data)
    _refused(bad, "tensors.safetensors")


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bits_in_plan_json_are_caught(plans, tmp_path, seed):
    bad = _copy(plans / "good", tmp_path / "bad")
    data = bytearray((bad / "plan.json").read_bytes())
    rng = random.Random(seed)
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    (bad / "plan.json").write_bytes(data)
    _refused(bad, "plan.json")


@pytest.mark.parametrize("name", ["plan.json", PROGRAM, TENSORS])
def test_truncated_and_missing_files(plans, tmp_path, name):
    bad = _copy(plans / "good", tmp_path / "bad")
    data = (bad / name).read_bytes()
    (bad / name).write_bytes(data[: len(data) // 2])
    _refused(bad, name)
    (bad / name).unlink()
    _refused(bad, "lacks")


def test_symbolic_links_and_special_files_inside_a_plan_are_refused(plans, tmp_path):
    bad = _copy(plans / "good", tmp_path / "bad")
    (bad / TENSORS).unlink()
    (bad / TENSORS).symlink_to(plans / "good" / TENSORS)  # the same bytes, but through a link
    _refused(bad, "symbolic link")
    (bad / TENSORS).unlink()
    os.mkfifo(bad / TENSORS)  # reading a FIFO would block forever
    _refused(bad, "not a regular file")


@pytest.mark.parametrize("key,change", [
    ("linear.weight", lambda t: t.double()),
    ("linear.weight", lambda t: t[:, :-1].contiguous()),
    ("linear.scale", lambda t: t[:-1].clone()),
    ("linear.levels", lambda t: torch.zeros(1, 2, 3)),
    ("linear.adc_range", lambda t: torch.zeros(3)),
    ("program/m.model.norm.weight", lambda t: t.half()),
])
def test_wrong_dtypes_and_shapes_even_resealed(plans, tmp_path, key, change):
    bad = _copy(plans / "good", tmp_path / "bad")
    tensors = {k: t.clone() for k, (t, _) in tensorfile.decode(bytearray((bad / TENSORS).read_bytes()), "t").items()}
    tensors[key] = change(tensors[key])
    (bad / TENSORS).write_bytes(tensorfile.encode(tensors)[0])
    _refused(bad, TENSORS)  # the digests catch it first
    reseal(bad)
    _refused(bad)


@pytest.mark.parametrize("edit", [
    lambda d: d.update(records=[1, 2]),
    lambda d: d.update(records={"linear": "x"}),
    lambda d: d.update(results={"draw_on": 3}),
    lambda d: d.update(results=[]),
    lambda d: d.update(report=[1]),
    lambda d: d.update(fidelity="warp"),
    lambda d: d["target"]["device"].update(sigma=-1.0),
    lambda d: d["capture"].update(kind=7),
    lambda d: _mapped(d)["nvcc_pt.noise"].update(level_sigmas=[]),
    lambda d: _mapped(d)["nvcc_pt.noise"].update(variation="group"),
    lambda d: _mapped(d)["nvcc_pt.noise"].update(band_factor=-2.0),
    lambda d: d["target"]["device"].update(variation="per-level"),
    lambda d: _mapped(d)["nvcc_pt.precision"].update(weight_bits=4096),
    lambda d: _mapped(d)["nvcc_pt.matmul"].update(k=0),
    lambda d: d.update(integrity=None),
])
def test_malformed_plan_json_even_resealed(plans, tmp_path, edit):
    bad = _copy(plans / "good", tmp_path / "bad")
    doc = _doc(bad)
    edit(doc)
    reseal(bad, doc) if isinstance(doc.get("integrity"), dict) else (bad / "plan.json").write_text(json.dumps(doc))
    _refused(bad)


def test_json_nested_100000_deep(plans, tmp_path):
    bad = _copy(plans / "good", tmp_path / "bad")
    (bad / "plan.json").write_text('{"schema": 2, "records": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused(bad, "not valid JSON|nest")
    program = "[" * 100_000 + "]" * 100_000
    (bad / PROGRAM).write_text(program)
    good = _copy(plans / "good", tmp_path / "good2")
    (good / PROGRAM).write_text(program)
    _fix_file_digest(good, PROGRAM)
    _refused(good, "not valid JSON|nest")


def test_the_untouched_plans_load_and_run(plans, ids):
    a, b = nvcc_pt.load(plans / "good"), nvcc_pt.load(plans / "other")
    with torch.no_grad():
        assert not torch.equal(_logits(a(ids)), _logits(b(ids)))
