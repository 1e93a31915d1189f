"""Soft prompts: virtual tokens prepended to a causal LM's input embeddings."""

from __future__ import annotations

import torch
from torch import nn

from nvcc_pt.capture import run_causal_lm, unwrap_peft
from nvcc_pt.errors import InputError


def run_with_prompt(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of `model` on `input_ids` with `prompt` (`[n_virtual, hidden]`) prepended to the embeddings.

    The logits cover the virtual positions too (`[batch, n_virtual + seq, vocab]`), as PEFT returns them.
    """
    return run_causal_lm(model, input_ids, attention_mask, prompt)


class SoftPromptLM(nn.Module):
    """A frozen causal LM with `num_virtual_tokens` trainable virtual tokens in front of every input.

    Example:
        >>> lm = SoftPromptLM(model, num_virtual_tokens=8)
        >>> logits = lm(input_ids)                    # [batch, 8 + seq, vocab]
        >>> cm = nvcc_pt.compile(lm, target="reram-128x128")
        >>> cm(input_ids, soft_prompt=other_user_prompt)   # swapped without recompiling
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int = 8, *, init: torch.Tensor | None = None,
                 seed: int = 0):
        super().__init__()
        from nvcc_pt import validate as check

        check.instance("model", model, nn.Module, where="SoftPromptLM")
        check.integer("num_virtual_tokens", num_virtual_tokens, lo=1, hi=4096, where="SoftPromptLM")
        check.seed("seed", seed, where="SoftPromptLM")
        if init is not None:
            check.finite_tensor("init", init, dims=2, where="SoftPromptLM")
        if not hasattr(model, "get_input_embeddings"):
            raise InputError(f"SoftPromptLM: {type(model).__name__} has no input embeddings (get_input_embeddings); "
                             "wrap a causal LM")
        embed = model.get_input_embeddings()
        hidden = embed.weight.shape[1]
        if init is None:
            # Start from real token embeddings: prompt tuning converges faster from vocabulary rows
            # than from random vectors (Lester et al., EMNLP 2021, Sec. 3).
            g = torch.Generator().manual_seed(seed)
            rows = torch.randint(0, embed.weight.shape[0], (num_virtual_tokens,), generator=g)
            init = embed.weight.detach()[rows.to(embed.weight.device)].clone()
        if tuple(init.shape) != (num_virtual_tokens, hidden):
            raise InputError(f"soft prompt init has shape {tuple(init.shape)}; expected ({num_virtual_tokens}, {hidden})")
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.prompt = nn.Parameter(init.detach().clone().float())
        self.constant_prompt = False

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    @property
    def config(self):
        return self.model.config

    def prompted_parts(self) -> tuple[nn.Module, torch.Tensor, bool]:
        """(frozen causal LM, soft prompt, constant): how `nvcc_pt.compile` sees this model (`PromptedModel`)."""
        return self.model, self.prompt.detach(), self.constant_prompt

    def forward(self, input_ids: torch.Tensor, soft_prompt: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        prompt = self.prompt if soft_prompt is None else soft_prompt
        if prompt.shape[-1] != self.prompt.shape[-1]:
            raise InputError(f"soft prompt width {prompt.shape[-1]} does not match the model's hidden size {self.prompt.shape[-1]}")
        return run_with_prompt(self.model, input_ids, prompt, attention_mask)

    # -- PEFT prompt-tuning format ----------------------------------------------------------
    def to_peft(self):
        """This model as a PEFT `PeftModelForCausalLM` with a prompt-tuning adapter holding this soft prompt.

        Example:
            >>> lm.to_peft().save_pretrained("adapter/")   # adapter_config.json + adapter_model.safetensors
        """
        from peft import PromptTuningConfig, TaskType, get_peft_model

        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.num_virtual_tokens,
                                    token_dim=self.prompt.shape[1], num_transformer_submodules=1)
        peft_model = get_peft_model(self.model, config)
        with torch.no_grad():
            peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight.copy_(self.prompt)
        return peft_model

    def save_peft(self, path) -> None:
        """Write this soft prompt as a PEFT prompt-tuning adapter directory (the base model is not written)."""
        self.to_peft().save_pretrained(str(path))

    @classmethod
    def from_peft(cls, peft_model: nn.Module) -> SoftPromptLM:
        """A `SoftPromptLM` from a PEFT prompt-tuning (or p-tuning) model: its base model and its virtual tokens."""
        unwrapped = unwrap_peft(peft_model)
        if unwrapped is None:
            raise InputError(f"{type(peft_model).__name__} is not a PEFT prompt-tuning model; load one with "
                             "peft.PeftModel.from_pretrained(base, adapter_dir)")
        base, prompt = unwrapped
        return cls(base, prompt.shape[0], init=prompt)

    @classmethod
    def load_peft(cls, model: nn.Module, path) -> SoftPromptLM:
        """A `SoftPromptLM` of `model` with the soft prompt of the PEFT adapter directory `path`."""
        from peft import PeftModel

        return cls.from_peft(PeftModel.from_pretrained(model, str(path)))
