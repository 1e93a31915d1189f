"""Pass infrastructure: a pass is `(gm, ctx) -> PassResult`; the manager checks what each
pass requires and provides, and re-raises failures as `PassError` with the pass, the
passes before it and the node it was looking at.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from nvcc_pt import meta
from nvcc_pt.errors import NvccPtError, PassError


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


@dataclass(frozen=True)
class MappingPolicy:
    """Which products go on crossbars.

    Example:
        >>> MappingPolicy(exclude=("lm_head",))            # keep the output head digital
        >>> MappingPolicy(include=("*.mlp.*",))            # only the MLPs
        >>> MappingPolicy(map_dynamic=True)                # attention's QK^T and AV too, written per input
    """

    include: tuple[str, ...] = ("*",)
    """Module-name globs an op must match to be mapped."""
    exclude: tuple[str, ...] = ()
    """Module-name globs that keep an op digital (checked after include)."""
    map_lm_head: bool = True
    """False keeps the output projection (`lm_head`, `embed_out`, `output`) digital."""
    map_dynamic: bool = False
    """Map attention's QK^T and AV too (`decompose_attention` makes them explicit): K^T and V are written into
    cells per input, with write noise from the device model, and the cost counts those writes."""

    def __post_init__(self) -> None:
        from nvcc_pt import validate as check

        for name in ("include", "exclude"):
            object.__setattr__(self, name, check.globs(name, getattr(self, name), where="MappingPolicy"))
        for name in ("map_lm_head", "map_dynamic"):
            check.boolean(name, getattr(self, name), where="MappingPolicy")

    @staticmethod
    def coerce(policy: MappingPolicy | dict | str | None) -> MappingPolicy:
        if policy is None:
            return MappingPolicy()
        if isinstance(policy, MappingPolicy):
            return policy
        if isinstance(policy, str):
            presets = {"all": MappingPolicy(), "no-lm-head": MappingPolicy(map_lm_head=False)}
            if policy not in presets:
                raise NvccPtError(f"unknown policy {policy!r}; use one of {sorted(presets)} or a MappingPolicy")
            return presets[policy]
        if isinstance(policy, dict):
            try:
                return MappingPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in policy.items()})
            except TypeError as e:  # unknown fields
                raise NvccPtError(f"bad policy {policy!r}: {e}; fields are include, exclude, map_lm_head, map_dynamic") from e
        raise NvccPtError(f"policy must be a MappingPolicy, dict, preset name or None, got {type(policy).__name__}")

    def matches(self, module: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(module, p) or fnmatch.fnmatchcase(module.split(".")[-1], p) for p in patterns)


@dataclass
class PassContext:
    """What the passes share: the target, the user's options, and results that are not per node."""

    target: Any  # TargetSpec
    policy: MappingPolicy = field(default_factory=MappingPolicy)
    precision: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per-layer overrides: module-name glob -> {"weight_bits": 4, ...}."""
    tokens: int = 1
    """Input vectors per inference the cost estimate is made for."""
    duplicate: bool | dict[str, int] = False
    """Weight duplication: False, True (balance the pipeline within capacity) or {op or module glob: copies}."""
    results: dict[str, Any] = field(default_factory=dict)
    """Graph-level results (`dataflow`, `chips_needed`, ...)."""
    provided: set[str] = field(default_factory=set)
    current_node: str | None = None

    def nodes(self, gm: fx.GraphModule, key: str | None = None, mapped_only: bool = False) -> Iterator[fx.Node]:
        """The graph's nodes (those carrying `key`, or mapped ones), noting each as the current node for errors."""
        for node in gm.graph.nodes:
            if key is not None and key not in node.meta:
                continue
            if mapped_only and not is_mapped(node):
                continue
            self.current_node = node.name
            yield node
        self.current_node = None


def is_mapped(node: fx.Node) -> bool:
    sel = node.meta.get(meta.SELECTION)
    return sel is not None and sel.mapped


@dataclass(frozen=True)
class PassInfo:
    name: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]
    fn: Callable[[fx.GraphModule, PassContext], PassResult]


def graph_pass(*, requires: tuple[str, ...] = (), provides: tuple[str, ...] = ()):
    """Declare a function `(gm, ctx) -> PassResult` as a pass with its pre- and postconditions."""

    def wrap(fn):
        fn.pass_info = PassInfo(fn.__name__, requires, provides, fn)
        return fn

    return wrap


# Which nodes must carry each key once its pass has run.
_SCOPE = {meta.SELECTION: meta.MATMUL, meta.PRECISION: "mapped", meta.TILES: "mapped", meta.PLACEMENT: "mapped",
          meta.NOISE: "mapped", meta.COST: "mapped"}


def run_passes(gm: fx.GraphModule, ctx: PassContext, passes: list[Callable]) -> fx.GraphModule:
    done: list[str] = []
    for fn in passes:
        info: PassInfo = fn.pass_info
        missing = [k for k in info.requires if k not in ctx.provided]
        if missing:
            raise PassError(info.name, tuple(done), None, f"requires {missing}, which no earlier pass provides")
        try:
            gm = info.fn(gm, ctx).graph_module
        except PassError:
            raise
        except NvccPtError:
            raise  # already a user-facing error (a target too small, ...)
        except Exception as e:
            raise PassError(info.name, tuple(done), ctx.current_node, f"{type(e).__name__}: {e}") from e
        for key in info.provides:
            scope = _SCOPE.get(key)
            if scope is None:
                continue
            for node in gm.graph.nodes:
                in_scope = is_mapped(node) if scope == "mapped" else scope in node.meta
                if in_scope and key not in node.meta:
                    raise PassError(info.name, tuple(done), node.name, f"did not write {key!r} on a node that needs it")
        ctx.provided.update(info.provides)
        done.append(info.name)
    return gm
