"""The OVT bank: optimal virtual tokens stored on NVCiM crossbars and searched there.

An `OVTBank` holds OVTs (`[n_virtual, hidden]` each) under string keys; it saves to a directory
(`bank.json` + `ovts.safetensors`) and loads back. `bank.compile(target)` maps it with
`nvcc_pt.compile` as one weight-stationary module with two products:

- `search`: `nn.Linear(D, num_ovts)` whose rows are the OVTs' SSA keys (`ssa.ssa_keys`); a query's
  scores against every OVT are one crossbar product (MIPS with `scales=(1,), weights=(1,)`);
- `store`: `nn.Linear(hidden, num_ovts * n_virtual)` whose rows are the OVTs' virtual tokens; the OVT
  handed to the LM is this layer's programmed weight, i.e. the OVT as read back from the cells.

Both run on the simulator at the compiled fidelity ("noisy" by default), so retrieval and the
retrieved OVT carry the device variation of the programmed instance; `program(seed)` draws another.

Example:
    >>> bank = OVTBank(); bank.add("user0/sci-fi", ovt)
    >>> cb = bank.compile("rram4-128x128", sigma=0.1, seed=0)
    >>> idx, scores = cb.search([token_embeds])      # index of the best OVT per query
    >>> prompts = cb.retrieve([token_embeds])        # the read-back OVTs to prepend
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError, PlanFormatError
from nvcc_pt.files import directory_writer, recover_directory
from nvcc_pt.prompt.ssa import SSA_SCALES, SSA_WEIGHTS, check_scales, key_dim, ssa_keys, ssa_query

BANK_SCHEMA = 1
BANK_FILES = ("bank.json", "ovts.safetensors")
QUERY_BATCH = 16
"""Queries per call of the compiled search (the compiled graph has a fixed batch; the last call is padded)."""


class OVTBank:
    """OVTs under string keys, all of one shape `[n_virtual, hidden]`."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._ovts: list[torch.Tensor] = []
        self.meta: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def shape(self) -> tuple[int, int] | None:
        return tuple(self._ovts[0].shape) if self._ovts else None

    def add(self, key: str, ovt: torch.Tensor, meta: dict | None = None) -> None:
        """Store `ovt` under `key` (replacing an OVT already stored under it)."""
        check.text("key", key, where="OVTBank.add")
        check.finite_tensor(f"OVT {key!r}", ovt, where="OVTBank.add")
        if meta is not None and not isinstance(meta, dict):
            raise InputError(f"OVTBank.add: meta for {key!r} must be a dict or None, got {type(meta).__name__}")
        ovt = ovt.detach().float().cpu()
        if ovt.dim() != 2 or 0 in ovt.shape:
            raise InputError(f"OVT {key!r} has shape {tuple(ovt.shape)}; an OVT is [n_virtual, hidden], both > 0")
        if self.shape is not None and tuple(ovt.shape) != self.shape:
            raise InputError(f"OVT {key!r} has shape {tuple(ovt.shape)} but the bank holds {self.shape} OVTs")
        if key in self._keys:
            self._ovts[self._keys.index(key)] = ovt.clone()
        else:
            self._keys.append(key)
            self._ovts.append(ovt.clone())
        self.meta[key] = dict(meta or {})

    def remove(self, key: str) -> None:
        if key not in self._keys:
            raise InputError(f"no OVT under key {key!r}; keys are {self._keys}")
        i = self._keys.index(key)
        del self._keys[i], self._ovts[i]
        self.meta.pop(key, None)

    def get(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise InputError(f"no OVT under key {key!r}; keys are {self._keys}")
        return self._ovts[self._keys.index(key)].clone()

    def stacked(self) -> torch.Tensor:
        """All OVTs, `[num_ovts, n_virtual, hidden]`."""
        if not self._ovts:
            raise InputError("the OVT bank is empty; add OVTs first")
        return torch.stack(self._ovts)

    def check_width(self, hidden: int) -> None:
        """Raise `InputError` unless the OVTs are `hidden` wide (the LM's embedding size)."""
        if self.shape is not None and self.shape[1] != hidden:
            raise InputError(f"the bank's OVTs are {self.shape[1]} wide but the model's hidden size is {hidden}; "
                             "train the OVTs with this model")

    def save(self, path: str | Path) -> Path:
        """Write the bank directory (`bank.json`, `ovts.safetensors`); the path keeps the previous bank until the
        new one is complete. A directory holding other files is not replaced (`FileWriteError`).

        Example:
            >>> bank.save("bank"); OVTBank.load("bank")
        """
        from safetensors.torch import save as encode

        check.path("path", path, where="OVTBank.save")
        doc = {"schema": BANK_SCHEMA, "keys": self._keys, "meta": self.meta}
        ovts = encode({f"ovt.{i}": t.contiguous() for i, t in enumerate(self._ovts)})
        only_bank = lambda d: all(p.name in BANK_FILES for p in d.iterdir())
        with directory_writer(path, "OVT bank directory", replaceable=only_bank) as tmp:
            (tmp / "ovts.safetensors").write_bytes(ovts)
            (tmp / "bank.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> OVTBank:
        from safetensors.torch import load_file

        d = Path(check.path("path", path, where="OVTBank.load"))
        recover_directory(d)
        try:
            doc = json.loads((d / "bank.json").read_text(encoding="utf-8"))
            tensors = load_file(str(d / "ovts.safetensors"))
            keys = doc["keys"]
            if doc.get("schema") != BANK_SCHEMA:
                raise PlanFormatError(f"{d / 'bank.json'} has schema {doc.get('schema')!r}; this version reads {BANK_SCHEMA}")
            bank = cls()
            for i, key in enumerate(keys):
                bank.add(key, tensors[f"ovt.{i}"], doc.get("meta", {}).get(key))
        except (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as e:
            raise PlanFormatError(f"{d} is not a readable OVT bank ({type(e).__name__}: {e}); save it again") from e
        return bank

    def compile(self, target, *, sigma: float | None = None, scales: Sequence[int] = SSA_SCALES,
                weights: Sequence[float] = SSA_WEIGHTS, fidelity: str = "noisy", seed: int = 0,
                device: str | torch.device | None = None, key_map=None) -> CompiledBank:
        """Map the bank onto `target` (with device sigma `sigma` when given) and program it with `seed`.

        `key_map` (a function of `[num_ovts, n_virtual, hidden]`, same shape back): the search array stores the
        keys of `key_map(ovts)` instead of the OVTs' own (a query space such as `query.SifQuery.project`); the
        store holds the OVTs as they are.

        `device` (a torch device): programming, search and read-back run there, and the device variation is
        drawn there; a seed is the same chip on every device. None keeps the CPU.
        """
        check.seed("seed", seed, where="OVTBank.compile")
        check.fidelity(fidelity, where="OVTBank.compile")
        return CompiledBank(self, target, sigma=sigma, scales=scales, weights=weights, fidelity=fidelity, seed=seed,
                            device=device, key_map=key_map)


class _BankModule(nn.Module):
    def __init__(self, keys: torch.Tensor, ovts: torch.Tensor):
        super().__init__()
        m, n, h = ovts.shape
        self.search = nn.Linear(keys.shape[1], m, bias=False)
        self.store = nn.Linear(h, m * n, bias=False)
        with torch.no_grad():
            self.search.weight.copy_(keys)
            self.store.weight.copy_(ovts.reshape(m * n, h))

    def forward(self, query: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.search(query), self.store(probe)


class CompiledBank:
    """An `OVTBank` mapped onto a target: search and read-back on the simulator."""

    def __init__(self, bank: OVTBank, target, *, sigma: float | None, scales: Sequence[int], weights: Sequence[float],
                 fidelity: str, seed: int, device: str | torch.device | None = None, key_map=None):
        import nvcc_pt
        from nvcc_pt.prompt.noise import noise_info

        self.keys = bank.keys
        self.scales, self.weights = check_scales(scales, weights)
        ovts = bank.stacked()
        self.num_ovts, self.n_virtual, self.hidden = ovts.shape
        self.spec, _ = noise_info(target, sigma)
        self.dim = key_dim(self.n_virtual, self.hidden, self.scales)
        keyed = ovts if key_map is None else key_map(ovts)
        if tuple(keyed.shape) != tuple(ovts.shape):
            raise InputError(f"key_map turned OVTs {tuple(ovts.shape)} into {tuple(keyed.shape)}; it must keep the shape")
        module = _BankModule(ssa_keys(keyed, self.scales, self.weights), ovts)
        example = (torch.zeros(QUERY_BATCH, self.dim), torch.zeros(1, self.hidden))
        self.cm = nvcc_pt.compile(module, self.spec, example_inputs=example, fidelity=fidelity, seed=seed)
        if device is not None:
            self.cm.to(device).program(seed, draw_on="device")
        self._store_state = self._state_of("store")

    def _state_of(self, module: str):
        from nvcc_pt import meta

        records = self.cm.plan.records
        return next(s for name, s in self.cm.plan.states() if records[name][meta.MATMUL].module.endswith(module))

    def program(self, seed: int) -> CompiledBank:
        """Program another instance of the chip (fresh device variation); returns self."""
        check.seed("seed", seed, where="CompiledBank.program")
        self.cm.program(seed)
        self._store_state = self._state_of("store")
        return self

    def read_back(self) -> torch.Tensor:
        """The stored OVTs as the programmed cells hold them, `[num_ovts, n_virtual, hidden]`."""
        return self._store_state.effective_weight().detach().float().reshape(self.num_ovts, self.n_virtual, self.hidden).clone()

    def query_vectors(self, token_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """`[Q, D]` query vectors from each input's token embeddings `[T_i, hidden]`."""
        if isinstance(token_embeds, torch.Tensor) or not isinstance(token_embeds, Sequence):
            raise InputError(f"search: token_embeds must be a list of [tokens, {self.hidden}] tensors, one per query, "
                             f"got {type(token_embeds).__name__}")
        if len(token_embeds) == 0:
            raise InputError("no queries to search with")
        for i, t in enumerate(token_embeds):
            check.finite_tensor(f"query {i}", t, where="search")
            if t.dim() != 2 or t.shape[1] != self.hidden or t.shape[0] == 0:
                raise InputError(f"query {i} has shape {tuple(t.shape)}; expected [tokens, {self.hidden}]")
        return torch.stack([ssa_query(t.detach().float(), self.n_virtual, self.scales) for t in token_embeds])

    @torch.no_grad()
    def scores(self, token_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Search scores `[Q, num_ovts]` computed on the simulator."""
        q = self.query_vectors(token_embeds)
        out = []
        on = self.cm.device
        probe = torch.zeros(1, self.hidden, device=on)
        q = q.to(on)
        for start in range(0, q.shape[0], QUERY_BATCH):
            chunk = q[start:start + QUERY_BATCH]
            padded = torch.cat([chunk, torch.zeros(QUERY_BATCH - chunk.shape[0], self.dim, device=on)])
            out.append(self.cm(padded, probe)[0][: chunk.shape[0]])
        return torch.cat(out)

    def search(self, token_embeds: Sequence[torch.Tensor]) -> tuple[list[int], torch.Tensor]:
        """The best OVT's index per query and all scores."""
        s = self.scores(token_embeds)
        return s.argmax(1).tolist(), s

    def retrieve(self, token_embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """For each query, the best OVT as read back from the cells."""
        idx, _ = self.search(token_embeds)
        stored = self.read_back()
        return [stored[i] for i in idx]


def query_embeddings(model: nn.Module, tokenizer, texts: Sequence[str]) -> list[torch.Tensor]:
    """Each text's token embeddings `[T, hidden]` from the LM's input embedding table (the search query)."""
    from nvcc_pt.prompt.training import encode

    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"query_embeddings: texts must be a list of strings, got {type(texts).__name__}")
    table = model.get_input_embeddings().weight.detach()
    out = []
    for t in texts:
        ids = encode(tokenizer, t)
        if not ids:
            raise InputError(f"input {t[:40]!r} has no tokens; cannot form a search query")
        out.append(table[torch.tensor(ids)].float())
    return out
