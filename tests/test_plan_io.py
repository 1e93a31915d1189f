import json

import pytest
import torch
from conftest import logits
from plan_forge import reseal

import nvcc_pt
from nvcc_pt import PlanFormatError
from nvcc_pt.prompt import SoftPromptLM


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models):
    lm = SoftPromptLM(tiny_models("tiny-gpt2"), num_virtual_tokens=3, seed=2)
    cm = nvcc_pt.compile(lm, "rram4-128x128", fidelity="noisy", seed=5)
    path = tmp_path_factory.mktemp("plans") / "plan"
    cm.save(path)
    return cm, path


def test_save_load_round_trips_to_identical_outputs(saved, ids):
    cm, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["plan.json", "program.json", "tensors.safetensors"]
    loaded = nvcc_pt.load(path)
    prompt = torch.randn(3, 36) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, cm(ids).logits)
        assert torch.equal(loaded(ids, soft_prompt=prompt).logits, cm(ids, soft_prompt=prompt).logits)
    assert (loaded.seed, loaded.fidelity, loaded.target) == (5, "noisy", cm.target)
    assert loaded.report.to_dict()["ops"] == cm.report.to_dict()["ops"]
    assert loaded.report.totals == cm.report.totals


def test_loaded_plan_reprograms_like_the_original(saved, ids):
    cm, path = saved
    loaded = nvcc_pt.load(path).program(seed=9)
    fresh = nvcc_pt.load(path)
    with torch.no_grad():
        assert not torch.equal(loaded(ids).logits, fresh(ids).logits)
        assert torch.equal(loaded(ids).logits, cm.with_fidelity("noisy").program(9)(ids).logits)


def test_missing_directory(tmp_path):
    with pytest.raises(PlanFormatError, match="does not exist"):
        nvcc_pt.load(tmp_path / "nope")


def test_missing_file(saved, tmp_path):
    _, path = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plan.json").write_text((path / "plan.json").read_text())
    with pytest.raises(PlanFormatError, match="lacks"):
        nvcc_pt.load(broken)


def _copy(path, dest):
    dest.mkdir()
    for f in path.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_corrupted_json_and_version_mismatch(saved, tmp_path):
    _, path = saved
    bad = _copy(path, tmp_path / "bad")
    (bad / "plan.json").write_text("{not json")
    with pytest.raises(PlanFormatError, match="not valid JSON"):
        nvcc_pt.load(bad)
    old = _copy(path, tmp_path / "old")
    doc = json.loads((old / "plan.json").read_text())
    doc["schema"] = 99
    (old / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(PlanFormatError, match="schema version 99"):
        nvcc_pt.load(old)
    doc["schema"] = 2  # the seed-to-chip mapping before the keyed generator
    (old / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(PlanFormatError, match="schema version 2.*keyed Philox.*Compile the model again"):
        nvcc_pt.load(old)


def test_corrupted_or_incomplete_tensors(saved, tmp_path):
    _, path = saved
    bad = _copy(path, tmp_path / "bad")
    (bad / "tensors.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(PlanFormatError, match="tensors.safetensors"):
        nvcc_pt.load(bad)
    from safetensors.torch import load_file, save_file

    partial = _copy(path, tmp_path / "partial")
    tensors = load_file(str(partial / "tensors.safetensors"))
    tensors.pop(next(k for k in tensors if k.endswith(".weight") and not k.startswith("program/")))
    save_file(tensors, str(partial / "tensors.safetensors"))
    with pytest.raises(PlanFormatError, match="does not match the SHA-256 digest"):
        nvcc_pt.load(partial)
    reseal(partial)  # consistent digests do not make up for a missing tensor
    with pytest.raises(PlanFormatError, match="programmed weights are missing"):
        nvcc_pt.load(partial)


def test_save_refuses_to_overwrite_a_foreign_directory_and_leaves_nothing_on_failure(saved, tmp_path):
    cm, _ = saved
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PlanFormatError, match="not a plan directory"):
        cm.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_exact_plan_round_trip_for_a_plain_lm(tiny_models, tmp_path, ids):
    model = tiny_models("tiny-opt")
    nvcc_pt.compile(model, "reram-256x256", fidelity="exact").save(tmp_path / "p")
    with torch.no_grad():
        out = nvcc_pt.load(tmp_path / "p")(ids).logits
    assert ((out - logits(model, ids)).norm() / logits(model, ids).norm()) < 1e-5


def _logits(out):
    return getattr(out, "logits", out)


def test_a_loaded_causal_lm_keeps_dynamic_batch_and_sequence(tiny_models, tmp_path):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="adc", seed=3)
    cm.save(tmp_path / "p")
    loaded = nvcc_pt.load(tmp_path / "p")
    with torch.no_grad():
        for batch, seq in ((1, 1), (5, 23), (3, 200)):
            x = torch.randint(0, 101, (batch, seq), generator=torch.Generator().manual_seed(seq))
            assert torch.equal(_logits(loaded(x)), _logits(cm(x)))
    # a loaded plan re-lowers, re-saves and reloads like a compiled one
    x = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(_logits(loaded.with_fidelity("quantized")(x)), _logits(cm.with_fidelity("quantized")(x)))
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "program.json").read_bytes() == (tmp_path / "p" / "program.json").read_bytes()
    with torch.no_grad():
        assert torch.equal(_logits(nvcc_pt.load(tmp_path / "again")(x)), _logits(cm(x)))
