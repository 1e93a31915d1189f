"""Prompt tuning with the LLM frozen, optionally noise-aware, and prediction with per-input soft prompts.

Noise-aware training (NVCiM-PT, Qin et al., DATE 2025, Sec. III-C): at every step the OVT the LM
sees is the OVT as the bank's crossbars read it back: the OVT is stored in a compiled one-OVT
`OVTBank` (the same plan, op and device model the search and retrieval use), programmed with a
fresh device instance per step, and the LM is given the store's programmed weight with a
straight-through gradient to the clean OVT (`nvcc_pt.training.bound_weights`, docs/training.md).
Without a target the step uses the clean OVT (plain prompt tuning).

Text format: the LM is given `lm_prompt(input)` (`"<input> Answer:"`) and learns the output's
tokens after it. Classification and rating tasks predict the candidate label with the highest
log-likelihood; generation tasks decode greedily.

Example:
    >>> ovt = train_ovt(model, tok, examples, n_virtual=8, target="rram4-128x128", sigma=0.1, steps=200)
    >>> preds = predict(model, tok, get_task(2), [q.input for q in queries], prompts=[ovt] * len(queries))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.prompt.lamp import Example, LampTask
from nvcc_pt.prompt.soft_prompt import SoftPromptLM
from nvcc_pt.prompt.ssa import pool_tokens
from nvcc_pt.prompt.synthetic import lm_prompt
from nvcc_pt.targets import TargetSpec


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return list(ids)


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)


def _batch(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def prompted_logits(model: nn.Module, input_ids: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
    """Logits `[B, n_virtual + T, V]` with a soft prompt per row (`prompts`: `[B, n_virtual, H]`, `[n_virtual, H]` or None).

    Sequences are right-padded: causal attention keeps padding from reaching the real tokens.
    """
    if prompts is None:
        return model(input_ids=input_ids, use_cache=False).logits
    embeds = model.get_input_embeddings()(input_ids)
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(embeds.shape[0], -1, -1)
    if prompts.shape[-1] != embeds.shape[-1]:
        raise InputError(f"soft prompt width {prompts.shape[-1]} does not match the model's hidden size {embeds.shape[-1]}")
    return model(inputs_embeds=torch.cat([prompts.to(embeds.dtype), embeds], dim=1), use_cache=False).logits


def _pairs(tokenizer, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for e in examples:
        src, tgt = encode(tokenizer, lm_prompt(e.input)), encode(tokenizer, " " + e.output)
        if not tgt:
            raise InputError(f"example {e.id or e.input[:40]!r} has an empty output; prompt tuning needs a target")
        pairs.append((src, tgt))
    return pairs


def sequence_logprob(model: nn.Module, pairs: list[tuple[list[int], list[int]]], prompts: torch.Tensor | None,
                     pad: int) -> torch.Tensor:
    """Sum of the log-probabilities of each pair's target tokens after its source, `[B]`."""
    ids = _batch([s + t for s, t in pairs], pad)
    labels = torch.full_like(ids, -100)
    for i, (s, t) in enumerate(pairs):
        labels[i, len(s):len(s) + len(t)] = torch.tensor(t)
    logits = prompted_logits(model, ids, prompts)
    n_virtual = logits.shape[1] - ids.shape[1]
    logits = logits[:, n_virtual:-1].float()  # position j predicts token j + 1
    targets = labels[:, 1:]
    lp = -F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    return (lp * (targets >= 0)).sum(1)


def sample_init(model: nn.Module, tokenizer, examples: Sequence[Example], n_virtual: int) -> torch.Tensor:
    """An OVT initialized from its domain: the inputs' token embeddings pooled to `n_virtual` positions, averaged.

    Starting from the domain's own embeddings keeps the trained OVT close to the inputs it serves, which
    is what the bank's search compares it with (a choice of this implementation; the paper does not
    state its initialization).
    """
    table = model.get_input_embeddings().weight.detach()
    pooled = [pool_tokens(table[torch.tensor(encode(tokenizer, e.input) or [0])], n_virtual) for e in examples]
    return torch.stack(pooled).mean(0)


class _OvtStore:
    """OVTs in a compiled `OVTBank` (one `[n_virtual, hidden]` or a stack): each step programs them with fresh
    variation and reads them back."""

    def __init__(self, ovt: torch.Tensor, target, sigma: float | None, censor: float | None, seed: int):
        from nvcc_pt.prompt.bank import OVTBank
        from nvcc_pt.training import weight_leaves

        bank = OVTBank()
        for i, one in enumerate(ovt if ovt.dim() == 3 else [ovt]):  # a stack [N, n_virtual, hidden] trains N at once
            bank.add(f"training{i}", one)
        self.bank = bank.compile(target, sigma=sigma, seed=seed)
        store = self.bank._store_state
        self.leaf = next(leaf for leaf in weight_leaves(self.bank.cm) if leaf.state is store)
        self.censor, self.seed = censor, seed
        for p in self.bank.cm.graph_module.parameters():
            p.requires_grad_(p is self.leaf.param)

    @property
    def param(self) -> torch.Tensor:
        """The clean OVT `[n_virtual, hidden]` being trained (the store layer's weight)."""
        return self.leaf.param

    def read_back(self, step: int) -> torch.Tensor:
        """The OVT as step `step`'s chip holds it, with a straight-through gradient to `param`."""
        from nvcc_pt.training import reprogram

        reprogram(self.bank.cm, self.seed * 1_000_003 + step, self.censor)  # the OVT changed: write it again
        eff = self.leaf.state.effective_weight()  # straight through, as `training.bound_weights` binds it
        live = self.leaf.param.as_strided(*self.leaf.view)
        return eff.detach() + (live - live.detach()).to(eff.dtype)


def train_ovt(model: nn.Module, tokenizer, examples: Sequence[Example], *, n_virtual: int = 8,
              init: torch.Tensor | str = "samples", steps: int = 200, lr: float = 0.05, batch_size: int = 8,
              target: str | TargetSpec | None = None, sigma: float | None = None, censor: float | None = None,
              seed: int = 0, progress: bool = True, desc: str = "prompt tuning") -> torch.Tensor:
    """Train one OVT `[n_virtual, hidden]` on `examples` with `model` frozen; noise-aware when `target` is given.

    Args:
        init: a tensor, "samples" (`sample_init`) or "vocab" (random vocabulary rows, `SoftPromptLM`'s default).
        lr: Adam step size relative to the RMS of the model's embedding table.
        target, sigma, censor: the OVT is trained as the compiled bank on `target` (device sigma `sigma`) reads it
            back, a fresh chip per step (right-censored variation at `censor` standard deviations when given).
    """
    where = "train_ovt"
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise InputError(f"{where}: examples must be a list of Example, got {type(examples).__name__}")
    if not examples:
        raise InputError("no training examples; an OVT needs at least one (input, output) pair")
    for i, e in enumerate(examples):
        check.instance(f"examples[{i}]", e, Example, where=where)
    check.integer("n_virtual", n_virtual, lo=1, hi=4096, where=where)
    check.integer("steps", steps, lo=0, hi=10**9, where=where)
    check.real("lr", lr, lo=0.0, lo_open=True, where=where)
    check.integer("batch_size", batch_size, lo=1, hi=2**20, where=where)
    check.optional_real("sigma", sigma, lo=0.0, where=where)
    check.optional_real("censor", censor, lo=0.0, lo_open=True, where=where)
    check.seed("seed", seed, where=where)
    check.boolean("progress", progress, where=where)
    if isinstance(init, torch.Tensor):
        check.finite_tensor("init", init, where=where, dims=2)
    elif not isinstance(init, str):
        raise InputError(f"{where}: init={init!r:.80} must be 'samples', 'vocab' or a tensor [n_virtual, hidden]")
    torch.manual_seed(seed)
    if isinstance(init, str):
        if init not in ("samples", "vocab"):
            raise InputError(f"init={init!r}; use 'samples', 'vocab' or a tensor")
        init = sample_init(model, tokenizer, examples, n_virtual) if init == "samples" else None
    was_training = model.training
    model.eval()
    lm = SoftPromptLM(model, n_virtual, init=init, seed=seed)
    store = None if target is None else _OvtStore(lm.prompt.detach(), target, sigma, censor, seed)
    trained = lm.prompt if store is None else store.param
    rms = model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt().item()
    opt = torch.optim.Adam([trained], lr=lr * rms)
    pairs, pad = _pairs(tokenizer, examples), _pad_id(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(0, len(pairs), (min(batch_size, len(pairs)),), generator=gen).tolist()
        prompt = trained if store is None else store.read_back(step)
        loss = -sequence_logprob(model, [pairs[i] for i in idx], prompt, pad).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train(was_training)
    return trained.detach().clone()


@torch.no_grad()
def example_loss(model: nn.Module, tokenizer, examples: Sequence[Example], prompt: torch.Tensor | None) -> float:
    """Mean negative log-likelihood of the examples' outputs (per example) with `prompt`."""
    return -sequence_logprob(model, _pairs(tokenizer, examples), prompt, _pad_id(tokenizer)).mean().item()


@torch.no_grad()
def predict(model: nn.Module, tokenizer, task: LampTask, inputs: Sequence[str],
            prompts: Sequence[torch.Tensor | None] | torch.Tensor | None = None, *, max_new_tokens: int = 24,
            batch_size: int = 32) -> list[str]:
    """The model's output for each input, each with its own soft prompt (or none)."""
    check.instance("task", task, LampTask, where="predict")
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or not all(isinstance(t, str) for t in inputs):
        raise InputError(f"predict: inputs must be a list of strings, got {type(inputs).__name__}")
    check.integer("max_new_tokens", max_new_tokens, lo=0, hi=2**16, where="predict")
    check.integer("batch_size", batch_size, lo=1, hi=2**20, where="predict")
    model.eval()
    if prompts is not None and isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        prompts = [prompts] * len(inputs)
    preds: list[str] = []
    pad = _pad_id(tokenizer)
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start:start + batch_size])
        p = None if prompts is None else torch.stack(list(prompts[start:start + batch_size]))
        if task.labels:
            preds += _classify(model, tokenizer, task.labels, chunk, p, pad)
        else:
            preds += _generate(model, tokenizer, chunk, p, pad, max_new_tokens)
    return preds


def _classify(model, tokenizer, labels, inputs, prompts, pad) -> list[str]:
    label_ids = [encode(tokenizer, " " + label) for label in labels]
    pairs, rows = [], []
    for i, text in enumerate(inputs):
        src = encode(tokenizer, lm_prompt(text))
        pairs += [(src, t) for t in label_ids]
        rows += [i] * len(labels)
    p = None if prompts is None else prompts[torch.tensor(rows)]
    scores = sequence_logprob(model, pairs, p, pad).view(len(inputs), len(labels))
    return [labels[j] for j in scores.argmax(1).tolist()]


def _generate(model, tokenizer, inputs, prompts, pad, max_new_tokens) -> list[str]:
    eos = getattr(tokenizer, "eos_token_id", None)
    seqs = [encode(tokenizer, lm_prompt(t)) for t in inputs]
    out: list[list[int]] = [[] for _ in inputs]
    done = [False] * len(inputs)
    for _ in range(max_new_tokens):
        cur = [s + o for s, o in zip(seqs, out)]
        ids = _batch(cur, pad)
        logits = prompted_logits(model, ids, prompts)
        n_virtual = logits.shape[1] - ids.shape[1]
        for i, c in enumerate(cur):
            if done[i]:
                continue
            tok = int(logits[i, n_virtual + len(c) - 1].argmax())
            if tok == eos:
                done[i] = True
            else:
                out[i].append(tok)
        if all(done):
            break
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


def score(task: LampTask, preds: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """The task's metrics (`task.metrics`) of `preds` against `golds`."""
    from nvcc_pt.prompt.metrics import METRICS

    return {m: METRICS[m](preds, golds) for m in task.metrics}
