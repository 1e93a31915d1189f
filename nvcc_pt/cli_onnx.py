"""`nvcc-pt export PLAN OUT.onnx` and `nvcc-pt inspect MODEL.onnx`."""

from __future__ import annotations

INSPECT_COLUMNS = (("op", "cim.op"), ("module", "cim.module"), ("crossbar", "cim.crossbar"), ("tiles", "cim.tiles"),
                   ("bits", "cim.bits"), ("device", "cim.device"), ("sigma", "cim.sigma"),
                   ("placement", "cim.placement"))


def _export(args) -> int:
    import nvcc_pt

    cm = nvcc_pt.load(args.plan)
    path = cm.export_onnx(args.out)
    print(f"wrote {path}: {cm.report.totals['mapped_ops']} nvcc_pt.CimLinear calls at fidelity {cm.fidelity}, "
          f"target {cm.target.name}, seed {cm.seed}")
    return 0


def _inspect(args) -> int:
    import nvcc_pt

    ann = nvcc_pt.read_onnx_annotations(args.model)
    print(f"{args.model}: nvcc_pt plan schema {ann['plan_schema']}, target {ann['target']}, "
          f"fidelity {ann['fidelity']}, seed {ann['seed']}, {len(ann['ops'])} CiM op(s)")
    head = [c for c, _ in INSPECT_COLUMNS]
    rows = [[op.get(key, "") for _, key in INSPECT_COLUMNS] for op in ann["ops"].values()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    for r in (head, ["-" * w for w in widths], *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.report and ann["report"] is not None:
        totals = ann["report"]["totals"]
        print(f"\nreport: {totals['mapped_ops']} mapped ops, {totals['arrays']} arrays on {totals['chips']} chip(s)")
    return 0


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a saved plan to ONNX with CiM annotations")
    p.add_argument("plan", help="plan directory written by cm.save() or `nvcc-pt compile --save`")
    p.add_argument("out", help="ONNX file to write (its directory must exist)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("inspect", help="print the CiM annotations of an exported ONNX file")
    p.add_argument("model", help="ONNX file written by `nvcc-pt export` or cm.export_onnx()")
    p.add_argument("--report", action="store_true", help="also summarize the embedded mapping report")
    p.set_defaults(func=_inspect)
