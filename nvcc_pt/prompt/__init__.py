"""NVCiM-PT: soft prompts, representative selection, noise-aware training, OVT bank and scaled search."""

from nvcc_pt.prompt.soft_prompt import SoftPromptLM, run_with_prompt

__all__ = ["SoftPromptLM", "run_with_prompt"]
