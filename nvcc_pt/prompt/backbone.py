"""A frozen causal LM as a label scorer: restricted-vocabulary classification and batched prompt tuning.

A classification input is scored by the LM's next-token logits after `"<input> Answer:"`, restricted
to the first token of each candidate label (`" animal"`, `" plant"`, ...): one forward pass per input,
whatever the number of labels, and deterministic. The labels' first tokens must differ.

Prompt tuning trains many OVTs at once: each step draws `batch_size` samples for every OVT, runs
them in one batch with their own OVT in front, and minimizes the restricted cross-entropy; OVTs do
not share gradients, so this equals training them one by one (in fewer, larger passes). Noise-aware
training gives the LM the OVTs as a compiled bank reads them back from a freshly programmed chip at
each step, with a straight-through gradient (`training._OvtStore`).

What does not change is cached: each text's token ids and input embeddings (the embedding table is
frozen), and the LM runs on `device` (`cuda` for a GPU).

Example:
    >>> bb = load_backbone("builtin:smollm2-135m", labels=("animal", "plant"), device="cpu")
    >>> bb.classify(["a domesticated carnivorous mammal"])        # label indices
    >>> ovts = bb.train_ovts([[("a tall perennial woody plant", 1)]], n_virtual=8, steps=20)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.errors import DeviceError, InputError
from nvcc_pt.prompt.ssa import pool_tokens
from nvcc_pt.prompt.synthetic import lm_prompt

Sample = tuple[str, int]
"""An input text and the index of its gold label."""

OVT_INITS = ("labels", "samples")
"""How `Backbone.train_ovts` starts an OVT: from its samples' label words or from their pooled input embeddings."""


class WordTokenizer:
    """Whitespace words to ids for the built-in tiny models (which ship no tokenizer): the labels take ids
    1..L, other words a stable hash into the rest of the vocabulary; id 0 pads."""

    def __init__(self, vocab_size: int, labels: Sequence[str]):
        if vocab_size <= len(labels) + 1:
            raise InputError(f"a vocabulary of {vocab_size} cannot hold {len(labels)} labels and other words")
        self.vocab_size, self.reserved = vocab_size, {w: i + 1 for i, w in enumerate(labels)}
        self.pad_token_id = self.eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        free = self.vocab_size - len(self.reserved) - 1
        return [self.reserved.get(w) or 1 + len(self.reserved) + zlib.crc32(w.encode()) % free for w in text.split()]


def load_backbone(spec: str, labels: Sequence[str], device: str = "cpu") -> Backbone:
    """`builtin:smollm2-135m`, `builtin:tiny-*` (with a `WordTokenizer`) or a local HF checkpoint with its tokenizer."""
    from pathlib import Path

    from nvcc_pt.models import SMOLLM2, build_model, load_checkpoint, load_smollm2

    check.text("model", spec, where="load_backbone")
    if spec == f"builtin:{SMOLLM2}":
        model, tokenizer = load_smollm2()
    elif spec.startswith("builtin:"):
        model = build_model(spec)
        tokenizer = WordTokenizer(model.config.vocab_size, labels)
    elif Path(spec).is_dir():
        from transformers import AutoTokenizer

        model = load_checkpoint(spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
        except (OSError, ValueError) as e:
            raise InputError(f"--model {spec}: no tokenizer in the checkpoint directory ({e}); save the tokenizer "
                             "beside the model (tokenizer.save_pretrained(dir))") from None
    else:
        raise InputError(f"model {spec!r} is neither 'builtin:NAME' nor a local Hugging Face checkpoint directory")
    return Backbone(model, tokenizer, labels, device)


class Backbone:
    """A frozen causal LM, its tokenizer and the candidate labels, on one torch device."""

    def __init__(self, model: nn.Module, tokenizer, labels: Sequence[str], device: str = "cpu"):
        where = "Backbone"
        check.instance("model", model, nn.Module, where=where)
        if isinstance(labels, str) or len(labels) < 2:
            raise InputError(f"{where}: labels={labels!r:.80} must be at least two label strings")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        try:
            self.device = torch.device(device)
        except RuntimeError as e:
            raise DeviceError(f"device {device!r} is not a torch device ({e}); use 'cpu' or 'cuda'") from None
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.labels = tokenizer, tuple(labels)
        first = [(self.tokenizer.encode(" " + label, add_special_tokens=False) or [None])[0] for label in self.labels]
        clash = [(a, b) for i, a in enumerate(self.labels) for j, b in enumerate(self.labels) if i < j and first[i] == first[j]]
        if None in first or clash:
            raise InputError(f"labels {clash or self.labels} share their first token (or have none); restricted-vocabulary "
                             "scoring needs labels whose first tokens differ")
        self.label_ids = torch.tensor(first, device=self.device)
        self.table = model.get_input_embeddings().weight.detach()
        head = model.get_output_embeddings()
        self.head_w = head.weight.detach()[self.label_ids].float()
        bias = getattr(head, "bias", None)
        self.head_b = None if bias is None else bias.detach()[self.label_ids].float()
        self.body = getattr(model, model.base_model_prefix)
        self.hidden = self.table.shape[1]
        self._embeds: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def embeds(self, text: str) -> torch.Tensor:
        """Input embeddings `[T, H]` of `"<text> Answer:"` on the device (cached)."""
        if text not in self._embeds:
            ids = self.ids(lm_prompt(text))
            self._embeds[text] = self.table[torch.tensor(ids, device=self.device)]
        return self._embeds[text]

    def query_embeds(self, text: str) -> torch.Tensor:
        """The search query of `text`: its token embeddings `[T, H]` (float, on the CPU, where the bank runs)."""
        ids = self.ids(text)
        if not ids:
            raise InputError(f"input {text[:40]!r} has no tokens; cannot form a search query")
        return self.table[torch.tensor(ids, device=self.device)].float().cpu()

    def logits(self, texts: Sequence[str], prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Restricted logits `[B, L]` of the labels' first tokens (`prompts`: `[B, n_virtual, H]` or None)."""
        rows = [self.embeds(t) for t in texts]
        n_virtual = 0 if prompts is None else prompts.shape[1]
        width = n_virtual + max(r.shape[0] for r in rows)
        x = torch.zeros(len(rows), width, self.hidden, dtype=self.table.dtype, device=self.device)
        for i, r in enumerate(rows):  # right padding: causal attention keeps it from the real tokens
            x[i, n_virtual:n_virtual + r.shape[0]] = r
        if prompts is not None:
            x = torch.cat([prompts.to(x), x[:, n_virtual:]], dim=1)
        h = self.body(inputs_embeds=x, use_cache=False).last_hidden_state
        last = torch.tensor([n_virtual + r.shape[0] - 1 for r in rows], device=self.device)
        h = h[torch.arange(len(rows), device=self.device), last].float()
        out = h @ self.head_w.T
        return out if self.head_b is None else out + self.head_b

    @torch.no_grad()
    def classify(self, texts: Sequence[str], prompts: torch.Tensor | None = None, batch_size: int = 64) -> list[int]:
        """The predicted label index of each text (each with its own prompt `[n_virtual, H]` when given)."""
        out: list[int] = []
        for s in range(0, len(texts), batch_size):
            p = None if prompts is None else prompts[s:s + batch_size]
            out += self.logits(texts[s:s + batch_size], p).argmax(1).tolist()
        return out

    def sample_init(self, samples: Sequence[Sample], n_virtual: int) -> torch.Tensor:
        """An OVT `[n_virtual, H]` from its samples: their input embeddings pooled to `n_virtual` positions, averaged."""
        pooled = [pool_tokens(self.table[torch.tensor(self.ids(t) or [0], device=self.device)].float(), n_virtual)
                  for t, _ in samples]
        return torch.stack(pooled).mean(0).cpu()

    def label_init(self, samples: Sequence[Sample], n_virtual: int) -> torch.Tensor:
        """An OVT `[n_virtual, H]` from its samples' labels: the token embeddings of `" <label>"` for each gold label
        of the samples (the most frequent first), repeated to fill `n_virtual` positions (class-label initialisation,
        Lester et al., EMNLP 2021)."""
        counts: dict[int, int] = {}
        for _, y in samples:
            counts[y] = counts.get(y, 0) + 1
        ids = [i for y in sorted(counts, key=lambda y: (-counts[y], y)) for i in self.ids(" " + self.labels[y])]
        rows = self.table[torch.tensor((ids * n_virtual)[:n_virtual], device=self.device)].float()
        return rows.cpu()

    def init_ovt(self, samples: Sequence[Sample], n_virtual: int, init: str = "labels") -> torch.Tensor:
        """An OVT's starting point `[n_virtual, H]`: `labels` (`label_init`) or `samples` (`sample_init`)."""
        check.choice("init", init, OVT_INITS, where="train_ovts")
        return self.label_init(samples, n_virtual) if init == "labels" else self.sample_init(samples, n_virtual)

    def train_ovts(self, groups: Sequence[Sequence[Sample]], *, n_virtual: int = 8, steps: int = 40, lr: float = 0.1,
                   batch_size: int = 4, init: str = "labels", target: str | None = None, sigma: float | None = None,
                   seed: int = 0, progress: tqdm | None = None) -> torch.Tensor:
        """One OVT per group of samples, `[groups, n_virtual, H]` (CPU), trained together; noise-aware on `target`.

        `init` (`OVT_INITS`) is where each OVT starts: `labels`, its samples' label words (`label_init`), or
        `samples`, their pooled input embeddings (`sample_init`)."""
        from nvcc_pt.prompt.training import _OvtStore

        if not groups or any(not g for g in groups):
            raise InputError("every OVT needs at least one training sample")
        check.integer("steps", steps, lo=0, hi=10**9, where="train_ovts")
        check.integer("batch_size", batch_size, lo=1, hi=2**20, where="train_ovts")
        start = torch.stack([self.init_ovt(g, n_virtual, init) for g in groups])
        n = len(groups)
        if target is None:
            param, store = nn.Parameter(start.to(self.device)), None
        else:
            store = _OvtStore(start, target, sigma, None, seed)
            param = store.param
        rms = self.table.float().pow(2).mean().sqrt().item()
        opt = torch.optim.Adam([param], lr=lr * rms)
        gen = torch.Generator().manual_seed(seed)
        for step in range(steps):
            texts, gold, rows = [], [], []
            for i, g in enumerate(groups):
                for j in torch.randint(0, len(g), (batch_size,), generator=gen).tolist():
                    texts.append(g[j][0])
                    gold.append(g[j][1])
                    rows.append(i)
            ovts = (param if store is None else store.read_back(step)).reshape(n, n_virtual, self.hidden)
            prompts = ovts.to(self.device)[torch.tensor(rows, device=self.device)]
            loss = F.cross_entropy(self.logits(texts, prompts), torch.tensor(gold, device=self.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress.update(1)
        return param.detach().reshape(n, n_virtual, self.hidden).float().cpu().clone()
