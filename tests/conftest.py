import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from nvcc_pt.models import BUILTIN, build_model  # noqa: E402

FAMILIES = sorted(BUILTIN)


@pytest.fixture(scope="session")
def tiny_models():
    """One seeded tiny model per family, built once."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_model(f"builtin:{name}", seed=0)
        return cache[name]

    return get


@pytest.fixture
def ids():
    return torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits
