"""NVCiM-PT and the baselines that isolate each of its parts, as configurations.

A method is three parts (NVCiM-PT, Qin et al., DATE 2025, Sec. III):

- `prompt`: whether the LLM gets a soft prompt at all;
- `selection`: what one OVT is trained on: `representative` (k-means over a buffer, one OVT per domain
  on its most central samples) or `buffer` (one OVT on the whole buffer);
- `mitigation`: how device variation is countered: noise-aware training (`noise_aware`) and the
  search that picks the OVT (`ssa`, scaled search, or `mips`, plain maximum inner product).

Each baseline differs from the method it is measured against (`REFERENCE`) in exactly one part
(`ISOLATES`); the ablations differ from NVCiM-PT in one field of the mitigation:

  no-prompt        vs nvcimpt      prompt      the LLM alone
  rep-pt-mips      vs nvcimpt      mitigation  no mitigation: plain OVTs, MIPS (the no-mitigation baseline)
  pt-buffer-mips   vs rep-pt-mips  selection   one OVT per buffer (the representative-selection claim)
  nvcimpt-no-nat   vs nvcimpt      mitigation  (noise_aware) no noise-aware training
  nvcimpt-mips     vs nvcimpt      mitigation  (search) MIPS instead of SSA

Example:
    >>> differences(METHODS["rep-pt-mips"], METHODS["nvcimpt"])
    ['mitigation']
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from nvcc_pt.errors import InputError


@dataclass(frozen=True)
class Mitigation:
    """How an OVT is protected against device variation."""

    noise_aware: bool
    """Train the OVT on read-backs of freshly programmed chips (straight-through), at the run's train sigma."""
    search: str
    """`ssa` (scaled search) or `mips`."""


@dataclass(frozen=True)
class Method:
    """One method of the comparison; `differences` names the parts in which two methods differ."""

    prompt: bool
    selection: str
    """`representative` or `buffer`."""
    mitigation: Mitigation

    def __post_init__(self) -> None:
        if self.selection not in ("representative", "buffer"):
            raise InputError(f"Method: selection={self.selection!r}; use 'representative' or 'buffer'")
        if self.mitigation.search not in ("ssa", "mips"):
            raise InputError(f"Method: search={self.mitigation.search!r}; use 'ssa' or 'mips'")

    @property
    def bank(self) -> str:
        """The OVT set the method retrieves from: `<selection>/<plain|nat>` (noise-aware sets are per device)."""
        return f"{self.selection}/{'nat' if self.mitigation.noise_aware else 'plain'}"


NVCIMPT = Method(prompt=True, selection="representative", mitigation=Mitigation(noise_aware=True, search="ssa"))
NO_MITIGATION = Mitigation(noise_aware=False, search="mips")

METHODS: dict[str, Method] = {
    "no-prompt": replace(NVCIMPT, prompt=False),
    "pt-buffer-mips": Method(prompt=True, selection="buffer", mitigation=NO_MITIGATION),
    "rep-pt-mips": replace(NVCIMPT, mitigation=NO_MITIGATION),
    "nvcimpt-no-nat": replace(NVCIMPT, mitigation=replace(NVCIMPT.mitigation, noise_aware=False)),
    "nvcimpt-mips": replace(NVCIMPT, mitigation=replace(NVCIMPT.mitigation, search="mips")),
    "nvcimpt": NVCIMPT,
}
"""Every method by name, in the order tables list them."""

REFERENCE = {"no-prompt": "nvcimpt", "pt-buffer-mips": "rep-pt-mips", "rep-pt-mips": "nvcimpt",
             "nvcimpt-no-nat": "nvcimpt", "nvcimpt-mips": "nvcimpt"}
"""The method each baseline is measured against."""

ISOLATES = {"no-prompt": "prompt", "pt-buffer-mips": "selection", "rep-pt-mips": "mitigation",
            "nvcimpt-no-nat": "mitigation.noise_aware", "nvcimpt-mips": "mitigation.search"}
"""The part each baseline changes (a dotted name: one field of the mitigation)."""


def differences(a: Method, b: Method, *, deep: bool = False) -> list[str]:
    """Names of the parts in which `a` and `b` differ (with `deep`, the mitigation's fields, dotted)."""
    out = []
    for f in fields(Method):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if deep and isinstance(x, Mitigation):
            out += [f"{f.name}.{g.name}" for g in fields(Mitigation) if getattr(x, g.name) != getattr(y, g.name)]
        elif x != y:
            out.append(f.name)
    return out


def check_methods(names) -> tuple[str, ...]:
    """`names` as a tuple of known method names; `InputError` naming the unknown ones."""
    if isinstance(names, str) or not names:
        raise InputError(f"methods={names!r:.80} must be a non-empty list of names from {list(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return tuple(names)
