"""Text generation through a compiled plan, following `transformers`' `generate` conventions.

Greedy decoding picks the most likely token; sampling applies, in transformers' order, the
repetition penalty, temperature, top-k and top-p to the last position's logits and draws with
`torch.multinomial` from torch's global generator, so a fixed `torch.manual_seed` gives the tokens
`model.generate` gives. Rows that reach an end-of-sequence token are padded with `pad_token_id`
from then on; generation stops when every row has ended or `max_new_tokens` are made.

There is no KV cache: each step runs the plan on the whole prefix (the captured graph is a
prefill graph), so a step costs a forward over `n_virtual + prompt + generated` tokens. That is
what a crossbar simulator should do for the matrix products anyway (every token's products run
on the programmed chip), but it makes long generations quadratic in their length.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from nvcc_pt.errors import InputError

SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "eos_token_id",
                 "pad_token_id", "max_new_tokens", "max_length")
"""Generation settings read from the model's `generation_config` at compile time and accepted as arguments."""


def generation_defaults(model: Any) -> dict[str, Any]:
    """The settings of `model.generation_config` that `generate` follows, as plain values."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    out = {}
    for key in SAMPLING_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _processors(settings: dict[str, Any], prompt_length: int, eos: list[int]):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    penalty = settings.get("repetition_penalty")
    if penalty is not None and penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=float(penalty)))
    if settings.get("min_new_tokens") and eos:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, int(settings["min_new_tokens"]), eos))
    if settings.get("do_sample"):
        temperature, top_k, top_p = settings.get("temperature"), settings.get("top_k"), settings.get("top_p")
        if temperature is not None and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(float(temperature)))
        if top_k is not None and top_k != 0:
            procs.append(TopKLogitsWarper(top_k=int(top_k), min_tokens_to_keep=1))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=float(top_p), min_tokens_to_keep=1))
    return procs


def _settings(cm, kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(SAMPLING_KEYS) - {"progress", "min_new_tokens"})
    if unknown:
        raise InputError(f"generate() does not take {unknown}; it takes {sorted(SAMPLING_KEYS)}, min_new_tokens "
                         "and progress")
    settings = {**cm.plan.capture.generation, **{k: v for k, v in kwargs.items() if v is not None}}
    if settings.get("do_sample"):
        for key, low in (("temperature", 0.0), ("top_p", 0.0)):
            value = settings.get(key)
            if value is not None and not (isinstance(value, (int, float)) and value > low):
                raise InputError(f"generate(): {key}={value!r} must be a number above {low}")
    return settings


def generate(cm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """Continue `input_ids` `[batch, seq]` with tokens from the compiled causal LM `cm`; `[batch, seq + new]`.

    Keyword arguments follow transformers: `max_new_tokens` (or `max_length`), `min_new_tokens`, `do_sample`,
    `temperature`, `top_k`, `top_p`, `repetition_penalty`, `eos_token_id`, `pad_token_id`; unset ones come from the model's
    `generation_config` as it was at compile time. `progress` shows a bar (default: for 32 tokens or more).
    A soft-prompted plan generates with its current soft prompt (`cm.soft_prompt`).

    Example:
        >>> cm = nvcc_pt.compile(model, target="reram-128x128", fidelity="noisy")
        >>> out = cm.generate(ids, attention_mask=mask, max_new_tokens=20)
        >>> tokenizer.batch_decode(out[:, ids.shape[1]:])
    """
    info = cm.plan.capture
    if info.kind not in ("causal-lm", "soft-prompt-lm"):
        raise InputError(f"generate() needs a compiled causal LM; this plan holds a {info.model_class} ({info.kind})")
    settings = _settings(cm, kwargs)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise InputError(f"generate(): input_ids must be a tensor [batch, seq], got {input_ids!r:.80}")
    ids = input_ids.long()
    eos = settings.get("eos_token_id")
    eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    pad = settings.get("pad_token_id")
    pad = int(pad) if pad is not None else (eos[0] if eos else None)
    if attention_mask is None:
        # transformers infers the mask from padding when the pad token is not also the end token
        infer = pad is not None and pad not in eos and bool((ids == pad).any())
        attention_mask = (ids != pad).long() if infer else torch.ones_like(ids)
    mask = attention_mask.long()
    new = settings.get("max_new_tokens")
    if new is None:
        new = int(settings.get("max_length", ids.shape[1] + 20)) - ids.shape[1]
    if not isinstance(new, int) or isinstance(new, bool) or new < 1:
        raise InputError(f"generate(): max_new_tokens={new!r} must be a positive integer")
    if info.max_tokens and ids.shape[1] + new > info.max_tokens:
        raise InputError(f"generate(): {ids.shape[1]} + {new} tokens exceed the {info.max_tokens} the model takes; "
                         "ask for fewer new tokens or shorten the input")
    if eos and pad is None:
        raise InputError("generate(): an end-of-sequence token needs a pad_token_id for the rows that end early")
    procs = _processors(settings, ids.shape[1], eos)
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    progress = kwargs.get("progress")
    with torch.no_grad():
        for _ in tqdm(range(new), desc="generating", unit="token", disable=not (new >= 32 if progress is None else progress)):
            logits = cm(ids, attention_mask=mask).logits[:, -1, :].float()
            scores = procs(ids, logits)
            if settings.get("do_sample"):
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                token = scores.argmax(dim=-1)
            if pad is not None:
                token = torch.where(unfinished, token, torch.full_like(token, pad))
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            if eos:
                unfinished &= ~torch.isin(token, torch.tensor(eos, device=token.device))
                if not unfinished.any():
                    break
    return ids
