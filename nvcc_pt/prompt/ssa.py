"""Scaled search (SSA) of NVCiM-PT (Qin et al., DATE 2025, Sec. III-D) as one matrix product.

The query (the input's token embeddings) and each OVT are average-pooled over the token axis at
scales `s` (kernel = stride = s), and the score is `sum_s w_s * <pool_s(query), pool_s(ovt)>`. Both
sides are flattened per scale and concatenated, with the weights applied on the stored side only:

    key(ovt)   = concat_s( w_s * flatten(pool_s(ovt)) )      # a row of the bank's stored matrix
    query_vec  = concat_s( flatten(pool_s(query)) )
    score      = query_vec . key(ovt)

so every OVT's score comes out of one weight-stationary product `query_vec @ K^T`. Plain
max-inner-product search (MIPS) is the special case `scales=(1,), weights=(1,)`.

A query has as many positions as the input has tokens, an OVT `n_virtual`; the query is first
brought to `n_virtual` positions by adaptive average pooling (each output position averages a
contiguous, near-equal share of the tokens), so both sides pool from the same grid. A scale that
does not divide `n_virtual` pools adaptively to `ceil(n_virtual / s)` positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError

SSA_SCALES = (1, 2, 4)
"""Pooling scales of the paper's SSA."""
SSA_WEIGHTS = (1.0, 0.8, 0.6)
"""Weights of the scales' dot products in the paper's SSA."""


def check_scales(scales: Sequence[int], weights: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`scales` (integers >= 1) and `weights` (finite numbers) as tuples of equal, non-zero length."""
    for name, value in (("scales", scales), ("weights", weights)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise InputError(f"SSA {name}={value!r:.80} must be a sequence, such as {SSA_SCALES if name == 'scales' else SSA_WEIGHTS}")
    scales = tuple(check.integer(f"scales[{i}]", s, lo=1, hi=2**16, where="SSA") for i, s in enumerate(scales))
    weights = tuple(check.real(f"weights[{i}]", w, where="SSA") for i, w in enumerate(weights))
    if not scales or len(scales) != len(weights):
        raise InputError(f"scales {scales} and weights {weights} must be non-empty and of the same length")
    return scales, weights


def pool_tokens(x: torch.Tensor, positions: int) -> torch.Tensor:
    """Adaptive average pooling of `[..., T, H]` over the token axis to `[..., positions, H]`."""
    if x.shape[-2] == 0:
        raise InputError("cannot pool an empty token sequence; the query has no tokens")
    lead = x.shape[:-2]
    y = F.adaptive_avg_pool1d(x.reshape(-1, *x.shape[-2:]).transpose(1, 2).float(), positions).transpose(1, 2)
    return y.reshape(*lead, positions, x.shape[-1])


def multiscale(x: torch.Tensor, scales: Sequence[int], weights: Sequence[float] | None = None) -> torch.Tensor:
    """`[..., n_virtual, H]` -> `[..., D]`: pooled at each scale, flattened, times the scale weight, concatenated."""
    n = x.shape[-2]
    parts = []
    for i, s in enumerate(scales):
        pooled = pool_tokens(x, math.ceil(n / s)).flatten(-2)
        parts.append(pooled * (1.0 if weights is None else weights[i]))
    return torch.cat(parts, dim=-1)


def key_dim(n_virtual: int, hidden: int, scales: Sequence[int]) -> int:
    """Length `D` of a key or query vector."""
    return hidden * sum(math.ceil(n_virtual / s) for s in scales)


def ssa_keys(ovts: torch.Tensor, scales: Sequence[int] = SSA_SCALES, weights: Sequence[float] = SSA_WEIGHTS) -> torch.Tensor:
    """The stored matrix `[num_ovts, D]` for OVTs `[num_ovts, n_virtual, H]`."""
    scales, weights = check_scales(scales, weights)
    return multiscale(ovts.float(), scales, weights)


def ssa_query(token_embeds: torch.Tensor, n_virtual: int, scales: Sequence[int] = SSA_SCALES) -> torch.Tensor:
    """The query vector(s) `[..., D]` for token embeddings `[..., T, H]` of one input (or a batch of equal length)."""
    return multiscale(pool_tokens(token_embeds, n_virtual), scales)


def ssa_scores_direct(token_embeds: torch.Tensor, ovts: torch.Tensor, scales: Sequence[int] = SSA_SCALES,
                      weights: Sequence[float] = SSA_WEIGHTS) -> torch.Tensor:
    """SSA scores `[num_ovts]` computed scale by scale, as the paper writes them (the reference for tests)."""
    scales, weights = check_scales(scales, weights)
    n = ovts.shape[-2]
    q = pool_tokens(token_embeds.float(), n)
    total = torch.zeros(ovts.shape[0])
    for s, w in zip(scales, weights):
        m = math.ceil(n / s)
        total += w * torch.einsum("ph,oph->o", pool_tokens(q, m), pool_tokens(ovts.float(), m))
    return total
