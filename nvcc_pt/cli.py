"""The `nvcc-pt` command: targets, compile, report (and the subcommands other modules add).

Each subcommand module offers `add_parsers(subparsers)`; `SUBCOMMAND_MODULES` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from nvcc_pt import validate as check
from nvcc_pt.errors import NvccPtError

# Modules that add subcommands of their own, imported when the parser is built.
SUBCOMMAND_MODULES: list[str] = ["nvcc_pt.cli_onnx", "nvcc_pt.prompt.cli", "nvcc_pt.cli_sweep"]


def _targets(args) -> int:
    import nvcc_pt

    rows = []
    for name in nvcc_pt.list_targets():
        t = nvcc_pt.get_target(name)
        rows.append((name, f"{t.rows}x{t.cols}", f"{t.cell_bits}", f"{t.weight_bits}/{t.input_bits}",
                     f"{t.dac_bits}/{t.adc_bits}", t.sign, f"{t.device.name} s={t.device.sigma:g}", t.description))
    if args.json:
        print(json.dumps({name: nvcc_pt.get_target(name).to_dict() for name in nvcc_pt.list_targets()}, indent=1))
        return 0
    head = ("name", "array", "cell", "w/in bits", "dac/adc", "sign", "device", "what it models")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\nNames '<device>-<rows>x<cols>' also work, e.g. rram4-64x64.")
    return 0


def _compile(args) -> int:
    import torch

    import nvcc_pt
    from nvcc_pt.models import build_model
    from nvcc_pt.prompt import SoftPromptLM

    model = build_model(args.model, seed=args.seed)
    if args.prompt_tokens:
        model = SoftPromptLM(model, num_virtual_tokens=args.prompt_tokens, seed=args.seed)
    policy = nvcc_pt.MappingPolicy(exclude=tuple(args.exclude or ()), map_lm_head=not args.lm_head_digital,
                                   map_dynamic=args.map_dynamic)
    example = None if args.prompt_tokens or _generates(model) else _encoder_inputs(args.model, model, args.seed)
    cm = nvcc_pt.compile(model, target=args.target, fidelity=args.fidelity, seed=args.seed, policy=policy,
                         example_inputs=example)
    print(cm.report)
    ids = torch.randint(0, cm.plan.capture.vocab_size or 2, (1, 8), generator=torch.Generator().manual_seed(args.seed))
    if cm.plan.capture.kind in ("causal-lm", "soft-prompt-lm"):
        with torch.no_grad():
            out, ref = cm(ids).logits, _reference(model, ids)
        err = ((out - ref).norm() / ref.norm()).item()
        print(f"\nran the plan on 1x8 tokens at fidelity {cm.fidelity}: logits relative error vs the model {err:.3e}")
    if args.report:
        cm.report.to_json(args.report)
        print(f"report written to {args.report}")
    if args.save:
        cm.save(args.save)
        print(f"plan saved to {args.save}")
    return 0


def _generates(model) -> bool:
    can = getattr(model, "can_generate", None)
    return bool(can and can())


def _encoder_inputs(spec: str, model, seed: int) -> tuple:
    """(input_ids, attention_mask) for a model that is not a causal LM: two tokenized sentences, else random ids."""
    import torch

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
        enc = tok(["A crossbar stores the weights.", "Each column sums its currents."], padding=True,
                  return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    except (OSError, ValueError, TypeError):  # no tokenizer files in the directory
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
        ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(seed))
        return ids, torch.ones_like(ids)


def _reference(model, ids):
    out = model(ids) if not hasattr(model, "generation_config") else model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out


def _report(args) -> int:
    import nvcc_pt

    cm = nvcc_pt.load(args.plan)
    print(cm.report)
    if args.json:
        cm.report.to_json(args.json)
        print(f"JSON written to {args.json}")
    if args.html:
        cm.report.to_html(args.html)
        print(f"HTML written to {args.html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvcc-pt", description="Map LLMs onto compute-in-memory crossbars.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("targets", help="list the registered CiM targets")
    p.add_argument("--json", action="store_true", help="print full specs as JSON")
    p.set_defaults(func=_targets)

    p = sub.add_parser("compile", help="compile a model and print its mapping report")
    p.add_argument("--model", default="builtin:tiny-llama", help="builtin:NAME (tiny-llama, ..., smollm2-135m) or a local Hugging Face directory")
    p.add_argument("--target", default="reram-128x128")
    p.add_argument("--fidelity", default="noisy")
    p.add_argument("--seed", type=check.arg_seed, default=0)
    p.add_argument("--prompt-tokens", type=check.arg_count, default=0, help="prepend N trainable virtual tokens (soft prompt)")
    p.add_argument("--exclude", action="append", help="module-name glob to keep digital (repeatable)")
    p.add_argument("--lm-head-digital", action="store_true", help="keep the output head digital")
    p.add_argument("--map-dynamic", action="store_true",
                   help="map attention's QK^T and AV too (K and V written into cells per input)")
    p.add_argument("--report", help="write the mapping report JSON here")
    p.add_argument("--save", help="save the plan directory here")
    p.set_defaults(func=_compile)

    p = sub.add_parser("report", help="print (and write) the mapping report of a saved plan")
    p.add_argument("plan")
    p.add_argument("--json")
    p.add_argument("--html")
    p.set_defaults(func=_report)

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NvccPtError as e:
        print(f"nvcc-pt: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written
        print(f"nvcc-pt: error: {e.strerror or e}: {e.filename or ''}; check the path", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
