"""NVCiM-PT: soft prompts, representative selection, noise-aware training, OVT bank and scaled search.

Modules: `soft_prompt` (SoftPromptLM, PEFT import/export), `selection` (buffer, k-means, representatives),
`noise` (device noise on OVTs through the simulator's programming path), `training` (noise-aware
prompt tuning, prediction), `ssa` (scaled search), `bank` (OVT bank on crossbars), `lamp` / `metrics` /
`synthetic` (data), `harness` (evaluation), `cost` (a retrieval's energy and latency against a CPU),
`cli` (`nvcc-pt nvcimpt`); on a real LLM and real text:
`realtext` (WordNet / fortune users in LaMP format), `methods` (NVCiM-PT and its baselines as configurations),
`backbone` (restricted-vocabulary scoring, batched prompt tuning), `study` / `studyreport` / `studycli`
(the resumable evaluation, its statistics, criteria, tables and plot; `nvcc-pt nvcimpt study`).
"""

from nvcc_pt.prompt.cost import retrieval_cost
from nvcc_pt.prompt.soft_prompt import SoftPromptLM, run_with_prompt

__all__ = ["SoftPromptLM", "retrieval_cost", "run_with_prompt"]
