"""The search query of NVCiM-PT's OVT bank: an input's embedding in the LM's input-embedding space.

The bank scores each stored OVT by an inner product with the user input's embedding (Qin et al., DATE 2025,
Sec. III-D). Three queries are offered (`QUERIES`):

- `tokens`: the input's token embeddings, pooled to the OVT's positions (position i of the query meets
  position i of the OVT, so glosses align by length, not by meaning);
- `mean`: the input's mean token embedding, at every OVT position;
- `sif`: the smooth-inverse-frequency sentence embedding (Arora, Liang and Ma, "A simple but tough-to-beat
  baseline for sentence embeddings", ICLR 2017): the token embeddings averaged with weights `a / (a + p(t))`
  (`p` the token's frequency in the users' histories, `a = 1e-3`), centred on the histories' mean, without
  the top `COMPONENTS` principal directions of the LM's embedding table ("all-but-the-top", Mu and
  Viswanath, ICLR 2018). Frequent tokens ("a", "of", "the") and the few directions that all token
  embeddings share dominate a plain mean, and they carry no domain. (SIF removes the first principal
  component of the corpus itself; with few texts or few domains that component can be the domain axis, so
  the directions come from the embedding table, which knows nothing of the users' domains.)

`sif` and `mean` are one row `[1, H]` that the search pools to every OVT position. For `sif` the same affine
map is applied to the stored side, so a score is `<P(query), P(ovt)>` with `P(x) = (x - mu) - U^T U (x - mu)`:
the bank stores the keys of `P(ovt)` in its search array and the OVT itself in its store
(`OVTBank.compile(key_map=...)`).

Example:
    >>> sif = SifQuery.fit(bb, history_texts)
    >>> q = sif.query("a large feline of forests")      # [1, H]
    >>> cb = bank.compile("rram1-128x128", key_map=sif.project)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from nvcc_pt.errors import InputError

QUERIES = ("sif", "mean", "tokens")
SIF_A = 1e-3
"""SIF's smoothing constant `a` (Arora et al., ICLR 2017, recommend 1e-3 to 1e-4)."""
COMPONENTS = 2
"""Principal directions of the embedding table removed (Mu and Viswanath suggest about hidden/100; on SmolLM2's
WordNet glosses 1, 2, 3, 5 and 10 retrieve within 0.07 of each other, 2 best)."""


class SifQuery:
    """SIF sentence embeddings in the LM's input-embedding space, fitted on a corpus (the users' histories)."""

    def __init__(self, backbone, weights: dict[int, float], mu: torch.Tensor, u: torch.Tensor):
        self.bb, self.weights, self.mu, self.u = backbone, weights, mu, u

    @classmethod
    def fit(cls, backbone, texts: Sequence[str], a: float = SIF_A, components: int = COMPONENTS) -> SifQuery:
        """Token weights `a / (a + p(t))` and the mean from `texts`; the table's top `components` directions `u`."""
        if isinstance(texts, str) or len(texts) < 2:
            raise InputError(f"SIF needs at least two texts to fit its token weights and mean, got {len(texts)}")
        counts = Counter(t for text in texts for t in backbone.ids(text))
        total = sum(counts.values())
        weights = {t: a / (a + c / total) for t, c in counts.items()}
        table = backbone.table.detach().float().cpu()
        centred = table - table.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues: the top ones come last
        u = vectors[:, vectors.shape[1] - components:].flip(1).T.contiguous()
        fit = cls(backbone, weights, torch.zeros(backbone.hidden), u)
        return cls(backbone, weights, torch.stack([fit.embed(t) for t in texts]).mean(0), u)

    def embed(self, text: str) -> torch.Tensor:
        """The weighted mean token embedding `[H]` (tokens unseen in the corpus weigh 1)."""
        ids = self.bb.ids(text)
        if not ids:
            raise InputError(f"input {text[:40]!r} has no tokens; cannot form a search query")
        w = torch.tensor([self.weights.get(i, 1.0) for i in ids])
        return (w[:, None] * self.bb.query_embeds(text)).sum(0) / w.sum()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """`P(x) = (x - mu) - U^T U (x - mu)` on the last axis (any leading shape)."""
        c = x.float() - self.mu
        return c - (c @ self.u.T) @ self.u

    def query(self, text: str) -> torch.Tensor:
        """The search query `[1, H]` of `text`."""
        return self.project(self.embed(text))[None]
