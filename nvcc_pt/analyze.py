"""Per-layer error analysis of a compiled model on real inputs: which mapped op hurts, why, and what to change.

`cm.analyze(batches)` runs the plan several times on the same inputs, choosing per mapped op whether it runs
at the model's fidelity or exactly (the float product on the source weight), without touching the plan:
a torch function mode intercepts the `nvcc_pt` ops on their way in.

  1. every op exact: the reference output;
  2. every op at the fidelity (the deployed chip): each op's own output is compared with the exact product
     *on the same input*, its relative error and SNR; at `adc`/`bit-serial` the ADC is observed
     (`simulator.observing_adc`): the share of reads that clip, and the span of codes the reads hit; and the
     op's error without its ADC (quantized input times the programmed weights) tells the ADC's part;
  3. once per op, that op alone at the fidelity and the rest exact: its share of the end-to-end error.

Shares are of error power (squared relative error of the model's outputs), normalised to sum to 1. Errors
from independent sources add in power, so the sum of the ops' powers alone, against the all-at-once power
(`power_sum_ratio`), near 1 says the shares explain the whole error; far above 1, errors cancel; far below,
they compound.

    >>> a = cm.analyze([ids1, ids2])
    >>> print(a.table()); a.to_json("layers.json"); a.plot().savefig("layers.svg")
    >>> a.worst[0]["module"], a.worst[0]["suggestion"]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from nvcc_pt.errors import FidelityError, InputError
from nvcc_pt.files import write_text
from nvcc_pt.ops import parse_config

ANALYSIS_SCHEMA = 1
CLIP_LIMIT = 0.001
"""Reads that clip above this share (0.1 %) make the ADC range the first thing to fix."""
OUTLIER_DB = 3.0
"""An op whose own SNR is this far below the median op's (twice the error power) is named, whatever its share."""
ADC_DOMINANT = 0.5
"""An op's ADC is the main source of its error when removing it would remove more than half the error power."""


class _Mix(TorchFunctionMode):
    """Runs the `nvcc_pt` ops named in `at_fidelity` as the plan says, every other one exactly; with `probe`,
    also compares each op's output with its exact and ADC-free products on the same input."""

    def __init__(self, states: dict[str, Any], at_fidelity: set[str] | None, probe: dict[str, dict] | None = None,
                 order: list[str] | None = None):
        super().__init__()
        self.states, self.at_fidelity, self.probe, self.order = states, at_fidelity, probe, order

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        linear = func is torch.ops.nvcc_pt.cim_linear.default
        if not linear and func is not torch.ops.nvcc_pt.cim_matmul.default:
            return func(*args, **kwargs)
        cfg = parse_config(args[-1])
        op = cfg["op"]
        if self.order is not None and op not in self.order:
            self.order.append(op)
        exact = (F.linear(args[0], self.states[op].source, args[2]) if linear
                 else torch.matmul(args[0], args[1]))
        if self.at_fidelity is not None and op not in self.at_fidelity:
            return exact
        out = func(*args, **kwargs)
        if self.probe is not None:
            acc = self.probe.setdefault(op, {"err": 0.0, "ref": 0.0, "no_adc": 0.0})
            acc["err"] += float((out.float() - exact.float()).square().sum())
            acc["ref"] += float(exact.float().square().sum())
            if linear and cfg["fidelity"] in ("adc", "bit-serial"):
                from nvcc_pt.targets.simulator import quantize_input

                state = self.states[op]
                x = quantize_input(args[0].float(), cfg["input_bits"])
                no_adc = F.linear(x, state.effective_weight().float(), None if args[2] is None else args[2].float())
                acc["no_adc"] += float((no_adc - exact.float()).square().sum())
        return out


class _AdcStats:
    """Per op: reads, reads that clip, and the lowest and highest code hit (`simulator.observing_adc`'s observer)."""

    def __init__(self):
        self.ops: dict[str, dict[str, float]] = {}

    def __call__(self, op: str, values: torch.Tensor, lo, hi) -> None:
        codes = torch.round(values)
        span = hi - lo + 1  # per column where the ADC is calibrated per column: its widest
        s = self.ops.setdefault(op, {"reads": 0, "clipped": 0, "low": math.inf, "high": -math.inf,
                                     "codes": float(span.max()) if isinstance(span, torch.Tensor) else span})
        s["reads"] += codes.numel()
        s["clipped"] += int(((codes < lo) | (codes > hi)).sum())
        low, high = torch.aminmax(codes.clamp(lo, hi))
        s["low"], s["high"] = min(s["low"], float(low)), max(s["high"], float(high))


def _outputs(out) -> torch.Tensor:
    """A run's floating-point outputs as one flat float tensor (logits, hidden states, ...)."""
    parts = [t.detach().float().reshape(-1) for t in (out if isinstance(out, (tuple, list)) else (out,))
             if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0)


def analyze(cm, batches: Iterable, *, progress: bool | None = None, top: int = 3) -> LayerAnalysis:
    """Per mapped op: error and SNR at the model's fidelity, ADC clipping and codes used, share of the end-to-end
    error; see the module docstring. `batches`: inputs per call, each a tensor, a tuple of tensors or a dict of
    keyword inputs (`{"input_ids": ids, "attention_mask": mask}`). `progress`: a progress bar (None: from 16
    ops on). `top`: at most this many ops named by their share."""
    from nvcc_pt import validate as check

    check.integer("top", top, lo=1, where="analyze")
    if progress is not None:
        check.boolean("progress", progress, where="analyze")
    if isinstance(batches, (torch.Tensor, str, bytes)) or not hasattr(batches, "__iter__"):
        raise InputError(f"analyze: batches must be an iterable of model inputs, such as [ids1, ids2], "
                         f"got {type(batches).__name__}")
    if cm.fidelity == "exact":
        raise FidelityError("analyze compares the model's fidelity with 'exact', and this model runs at 'exact': "
                            "there is no error to find; use cm.with_fidelity('adc') (or another fidelity) first")
    if any(s.weight.dim() == 3 for _, s in cm.plan.states()):
        raise InputError("analyze: the plan holds stacked Monte Carlo instances; analyze one programmed chip")
    flats = [cm.prepare_inputs(**b) if isinstance(b, dict) else
             cm.prepare_inputs(*(b if isinstance(b, (tuple, list)) else (b,))) for b in batches]
    if not flats:
        raise InputError("analyze got no batches; pass an iterable of model inputs")
    states = dict(cm.plan.states())
    ops = {o["name"]: o for o in cm.report.ops if o["mapped"]}

    def run(at_fidelity: set[str] | None, probe=None, order=None, observer=None) -> list[torch.Tensor]:
        from nvcc_pt.targets.simulator import deferred_checks, observing_adc

        outs = []
        for flat in flats:
            with torch.no_grad(), deferred_checks(), _Mix(states, at_fidelity, probe, order):
                if observer is None:
                    outs.append(_outputs(cm.graph_module(*flat)))
                else:
                    with observing_adc(observer):
                        outs.append(_outputs(cm.graph_module(*flat)))
        return outs

    def power(outs: list[torch.Tensor]) -> float:
        err = sum(float((o - r).square().sum()) for o, r in zip(outs, reference))
        return err / max(ref_power, 1e-300)

    order: list[str] = []
    from nvcc_pt.api import noise_kept

    with noise_kept(cm):
        reference = run(set(), order=order)
        ref_power = sum(float(r.square().sum()) for r in reference)
        probe: dict[str, dict] = {}
        adc = _AdcStats()
        all_power = power(run(None, probe=probe, observer=adc))
        names = [n for n in order if n in ops] + [n for n in ops if n not in order]
        alone = {}
        bar = tqdm(names, desc="analyzing ops", unit="op",
                   disable=not (len(names) >= 16 if progress is None else progress))
        for name in bar:
            alone[name] = power(run({name}))
    total = sum(alone.values())
    rows = [_row(name, ops[name], probe.get(name), adc.ops.get(name), alone[name], total, states.get(name))
            for name in names]
    data = {"schema": ANALYSIS_SCHEMA, "model": cm.plan.capture.model_class, "target": cm.target.name,
            "fidelity": cm.fidelity, "seed": cm.seed, "batches": len(flats), "ops": rows,
            "end_to_end": {"rel_error": math.sqrt(all_power), "snr_db": _db(all_power),
                           "alone_rel_error": math.sqrt(total),
                           "power_sum_ratio": total / all_power if all_power > 0 else None}}
    data["worst"] = _worst(rows, top)
    return LayerAnalysis(data)


def _db(power: float) -> float | None:
    """SNR in dB of a relative error power (None: no error at all)."""
    return None if power <= 0 else -10 * math.log10(power)


def _row(name: str, op: dict[str, Any], probe: dict | None, adc: dict | None, alone: float, total: float,
         state) -> dict[str, Any]:
    probe = probe or {"err": 0.0, "ref": 0.0, "no_adc": 0.0}
    rel = probe["err"] / probe["ref"] if probe["ref"] > 0 else 0.0
    row: dict[str, Any] = {
        "name": name, "module": op["module"] or "", "kind": op["kind"], "adc_bits": op["adc_bits"],
        "rel_error": math.sqrt(rel), "snr_db": _db(rel),
        "share": alone / total if total > 0 else 0.0, "alone_rel_error": math.sqrt(alone),
        "adc_error_share": None, "clip_rate": None, "codes_used": None, "effective_bits": None,
        "calibrated": bool(state is not None and state.adc_range.numel() == 2),
    }
    if adc is not None and adc["reads"]:
        span = adc["high"] - adc["low"] + 1
        no_adc = probe["no_adc"] / probe["ref"] if probe["ref"] > 0 else 0.0
        row.update(clip_rate=adc["clipped"] / adc["reads"], codes_used=span / adc["codes"],
                   effective_bits=math.log2(span),
                   adc_error_share=max(0.0, 1 - no_adc / rel) if rel > 0 and op["kind"] == "static" else None)
    row["suggestion"] = _suggest(row)
    return row


def _suggest(r: dict[str, Any]) -> str:
    """What to change about one op, from what was measured on it."""
    if r["clip_rate"] is not None and r["clip_rate"] > CLIP_LIMIT:
        if r["calibrated"]:
            return (f"{r['clip_rate']:.1%} of ADC reads clip the calibrated range: calibrate on more representative "
                    f"inputs, or give it more ADC bits than {r['adc_bits']}")
        return f"calibrate the ADC range (cm.calibrate): {r['clip_rate']:.1%} of its ADC reads clip the full scale"
    adc_bound = r["adc_error_share"] is not None and r["adc_error_share"] > ADC_DOMINANT
    if adc_bound and not r["calibrated"] and r["effective_bits"] is not None \
            and r["effective_bits"] < r["adc_bits"] - 1:
        return (f"calibrate the ADC range (cm.calibrate): its partial sums hit {r['codes_used']:.1%} of the codes, "
                f"{r['effective_bits']:.1f} of {r['adc_bits']} bits")
    if adc_bound:
        return (f"more ADC bits than {r['adc_bits']}: the ADC's rounding makes {r['adc_error_share']:.0%} of this "
                "op's error")
    return ("keep it digital (policy exclude=[...]) or give it more weight bits: its error comes from weight "
            "quantization and device variation, not the ADC")


def _worst(rows: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The ops that clearly hurt: by share of the end-to-end error (above 1.5x the mean share, until half the
    error is named, at most `top`), then any op whose own SNR is `OUTLIER_DB` or more below the median op's
    (a layer that is broken, even where the rest of the model hides it)."""
    if not rows:
        return []
    mean = 1.0 / len(rows)
    out, covered = [], 0.0
    for r in sorted(rows, key=lambda r: -r["share"]):
        if len(out) >= top or covered >= 0.5 or r["share"] <= 1.5 * mean:
            break
        out.append(_named(r, f"{_pct(r['share'])} of the end-to-end error"))
        covered += r["share"]
    snrs = sorted(r["snr_db"] for r in rows if r["snr_db"] is not None)
    if snrs:
        median = snrs[len(snrs) // 2]
        named = {w["name"] for w in out}
        for r in sorted(rows, key=lambda r: math.inf if r["snr_db"] is None else r["snr_db"]):
            if r["snr_db"] is None or r["snr_db"] > median - OUTLIER_DB:
                break
            if r["name"] not in named:
                out.append(_named(r, f"its own SNR {_fmt_db(r['snr_db'])} is {median - r['snr_db']:.1f} dB below the "
                                     "median op's"))
    return out


def _named(r: dict[str, Any], why: str) -> dict[str, Any]:
    return {"name": r["name"], "module": r["module"], "share": r["share"], "snr_db": r["snr_db"], "why": why,
            "suggestion": r["suggestion"]}


def _pct(x: float | None) -> str:
    from nvcc_pt.plotstyle import percent

    return percent(x, 2)


class LayerAnalysis:
    """What `cm.analyze` measured: `.ops` (one dict per mapped op), `.end_to_end`, `.worst` (the ops that hurt
    most, each with a suggestion), and `.table()`, `.to_json(path)`, `.plot()`.

    Example:
        >>> a = cm.analyze([ids]); print(a); a.plot().savefig("layers.svg")
    """

    def __init__(self, data: dict[str, Any]):
        self._data = data

    @property
    def ops(self) -> list[dict[str, Any]]:
        return self._data["ops"]

    @property
    def end_to_end(self) -> dict[str, Any]:
        return self._data["end_to_end"]

    @property
    def worst(self) -> list[dict[str, Any]]:
        return self._data["worst"]

    def op(self, name_or_module: str) -> dict[str, Any]:
        for row in self.ops:
            if name_or_module in (row["name"], row["module"]):
                return row
        raise KeyError(f"no op or module named {name_or_module!r} in the analysis; names: "
                       f"{[r['module'] or r['name'] for r in self.ops][:8]}...")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self._data, indent=indent)
        if path is not None:
            write_text(path, text, "analysis")
        return text

    def table(self) -> str:
        """The analysis as text: one line per op, the end-to-end error, and the ops that hurt most."""
        d, e = self._data, self.end_to_end
        percent = _pct
        head = ["op", "module", "rel. error", "SNR", "share", "ADC clips", "codes used", "ADC part"]
        rows = [[r["name"], r["module"] or "-", f"{r['rel_error']:.3g}", _fmt_db(r["snr_db"]), percent(r["share"]),
                 percent(r["clip_rate"]), "-" if r["codes_used"] is None else
                 f"{percent(r['codes_used'])} ({r['effective_bits']:.1f} b)", percent(r["adc_error_share"])]
                for r in self.ops]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        ratio = e["power_sum_ratio"]
        out = [f"nvcc_pt layer analysis: {d['model']} on {d['target']} at fidelity {d['fidelity']}, seed {d['seed']}, "
               f"{d['batches']} batch(es); shares of the end-to-end error power, each op alone at the fidelity",
               line(head), line(["-" * w for w in widths]), *(line(r) for r in rows), "",
               f"end to end: relative error {e['rel_error']:.3g} (SNR {_fmt_db(e['snr_db'])}); the ops alone add up to "
               f"{e['alone_rel_error']:.3g}" + ("" if ratio is None else f" (power sum / all at once = {ratio:.2f})")]
        if self.worst:
            out.append("hurts most:")
            out += [f"  {w['module'] or w['name']} ({w['why']}): {w['suggestion']}" for w in self.worst]
        else:
            out.append("no op stands out: the error is spread evenly over the ops")
        return "\n".join(out)

    __str__ = __repr__ = table

    def plot(self, sort: bool = False):
        """A matplotlib figure: per op, its share of the end-to-end error, its own SNR, and (with an ADC) the
        share of ADC reads that clip and of codes used; the ops that hurt most in the highlight colour.
        `sort`: by share, largest first (default: program order)."""
        from nvcc_pt.plots import analysis_figure

        return analysis_figure(self._data, sort=sort)


def _fmt_db(x: float | None) -> str:
    return "inf dB" if x is None else f"{round(x, 1) + 0.0:.1f} dB"  # + 0.0: no "-0.0"
