"""torchvision for the tests, on the CPU build of torch.

PyPI's torchvision wheel links its C extension against the CUDA build of torch, so beside the
CPU build the extension does not load and its ops are never defined. Its
`_meta_registrations.py` still registers fake (shape) functions for `torchvision::nms` and
`torchvision::qnms` without checking that the extension loaded, and registering a fake for an
op that does not exist fails the whole import. Installed in the environment, that broken import
would also break transformers, which imports torchvision whenever it finds it; so `make test`
installs the wheel into `<venv>/vision`, outside the environment's search path, and only the
tests that need it reach it. The models (`torchvision.models`) are pure Python and need no
extension. `import_torchvision()` imports the package from there; when the import fails for
exactly that reason it defines the two schemas (as torchvision declares them, no kernel:
calling them still fails) and imports again.

    >>> resnet18 = import_torchvision().models.resnet18
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

VISION_DIR = Path(sys.prefix) / "vision"
"""Where the Makefile installs torchvision (`pip install --no-deps --target`)."""
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_torchvision() -> ModuleType:
    """`torchvision`, importable on the CPU build of torch (see the module docstring); skips when absent."""
    if VISION_DIR.is_dir() and str(VISION_DIR) not in sys.path:
        sys.path.append(str(VISION_DIR))
    try:
        import torchvision
    except ModuleNotFoundError:
        pytest.skip(f"torchvision is not installed; `make test` puts it in {VISION_DIR}")
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the failed import left half-initialised modules behind
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        import torchvision
    return torchvision
