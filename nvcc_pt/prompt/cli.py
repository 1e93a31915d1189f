"""`nvcc-pt nvcimpt ...`: the NVCiM-PT evaluation harness and the synthetic data generator from the shell.

    nvcc-pt nvcimpt synth --out data/ --task 2
    nvcc-pt nvcimpt realdata --out data/wordnet --task wordnet
    nvcc-pt nvcimpt study --model builtin:smollm2-135m --task wordnet --out results/nvcimpt --device cuda
    nvcc-pt nvcimpt eval --model path/to/hf-checkpoint --questions data/questions.json \
        --outputs data/outputs.json --devices rram1,rram4,fefet2,fefet6 --out results/
"""

from __future__ import annotations

from pathlib import Path

from nvcc_pt import validate as check


def _eval(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nvcc_pt.errors import InputError
    from nvcc_pt.prompt.harness import EvalConfig, evaluate
    from nvcc_pt.prompt.lamp import load_lamp, query_domains

    if args.model == "builtin:smollm2-135m":
        from nvcc_pt.models import load_smollm2

        model, tokenizer = load_smollm2()
    elif not Path(args.model).is_dir():
        raise InputError(f"--model {args.model!r} is neither builtin:smollm2-135m nor a directory; give a local "
                         "Hugging Face checkpoint directory")
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).eval()
    dataset = load_lamp(args.questions, args.outputs, task=args.task)
    if args.limit:
        dataset.queries = dataset.queries[: args.limit]
    cfg = EvalConfig(devices=tuple(args.devices.split(",")), sigmas=args.sigmas, instances=args.instances,
                     crossbar=args.crossbar, n_virtual=args.n_virtual, buffer_size=args.buffer_size,
                     max_buffers=args.max_buffers, n_clusters=args.clusters, per_cluster=args.per_cluster,
                     steps=args.steps, lr=args.lr, train_sigma=args.train_sigma, censor=args.censor, seed=args.seed)
    domains = query_domains(dataset)  # retrieval accuracy needs each query's true domain
    res = evaluate(model, tokenizer, dataset, cfg, query_domains=domains)
    print(res.to_text())
    if domains is None:
        print("\nretrieval accuracy not measured: the questions carry no 'domain' field (LaMP's do not)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.to_json(out / "eval.json")
    res.plot(out / "eval.png")
    print(f"\nwrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0


def _synth(args) -> int:
    from nvcc_pt.prompt.synthetic import SyntheticWorld

    world = SyntheticWorld(task=args.task, n_users=args.users, seed=args.seed)
    q, o = world.write(args.out)
    world.tokenizer().save_pretrained(str(Path(args.out) / "tokenizer"))
    print(f"wrote {q}, {o} and a word-level tokenizer in {Path(args.out) / 'tokenizer'}")
    return 0


def _realdata(args) -> int:
    from nvcc_pt.prompt.realtext import write_realtext

    q, o = write_realtext(args.out, args.task, users=args.users, buffers=args.buffers, buffer_size=args.buffer_size,
                          queries_per_user=args.queries_per_user, seed=args.seed)
    print(f"wrote {q}, {o} and {Path(args.out) / 'labels.json'}")
    return 0


def add_parsers(subparsers) -> None:
    """Add `nvcimpt` with its `eval` and `synth` subcommands to the `nvcc-pt` parser."""
    p = subparsers.add_parser("nvcimpt", help="NVCiM-PT: evaluate noise-aware soft prompts stored in NVCiM")
    sub = p.add_subparsers(dest="nvcimpt_command", required=True)

    e = sub.add_parser("eval", help="task metric vs device sigma for NVCiM-PT, its baselines and ablations")
    e.add_argument("--model", required=True, help="builtin:smollm2-135m or a local Hugging Face causal-LM checkpoint "
                   "directory (with tokenizer)")
    e.add_argument("--questions", required=True, help="LaMP questions JSON file")
    e.add_argument("--outputs", required=True, help="LaMP outputs (golds) JSON file")
    e.add_argument("--task", default=None, help="LaMP task id (default: from the outputs file)")
    e.add_argument("--devices", default="rram1,rram4,fefet2,fefet6")
    e.add_argument("--sigmas", type=check.arg_reals, default=(0.025, 0.05, 0.075, 0.1, 0.125))
    e.add_argument("--instances", type=check.arg_positive, default=3, help="programmed chip instances per point")
    e.add_argument("--crossbar", default="128x128")
    e.add_argument("--n-virtual", type=check.arg_positive, default=8)
    e.add_argument("--buffer-size", type=check.arg_positive, default=25)
    e.add_argument("--max-buffers", type=check.arg_positive, default=2)
    e.add_argument("--clusters", type=check.arg_positive, default=2)
    e.add_argument("--per-cluster", type=check.arg_positive, default=5)
    e.add_argument("--steps", type=check.arg_count, default=120, help="prompt-tuning steps per OVT")
    e.add_argument("--lr", type=check.arg_positive_real, default=0.05)
    e.add_argument("--train-sigma", type=check.arg_real, default=0.1)
    e.add_argument("--censor", type=check.arg_positive_real, default=None, help="right-censor training noise at this many sigmas")
    e.add_argument("--limit", type=check.arg_count, default=0, help="evaluate only the first N queries")
    e.add_argument("--seed", type=check.arg_seed, default=0)
    e.add_argument("--out", default="nvcimpt_eval")
    e.set_defaults(func=_eval)

    s = sub.add_parser("synth", help="write synthetic LaMP-format data (users whose domains shift over time)")
    s.add_argument("--out", required=True)
    s.add_argument("--task", type=int, default=2, choices=(2, 3))
    s.add_argument("--users", type=check.arg_count, default=3)
    s.add_argument("--seed", type=check.arg_seed, default=0)
    s.set_defaults(func=_synth)

    r = sub.add_parser("realdata", help="write LaMP-2-format users from real text (WordNet glosses or fortune quotes)")
    r.add_argument("--out", required=True)
    r.add_argument("--task", choices=("wordnet", "fortunes"), default="wordnet")
    r.add_argument("--users", type=check.arg_positive, default=6)
    r.add_argument("--buffers", type=check.arg_positive, default=2)
    r.add_argument("--buffer-size", type=check.arg_positive, default=25)
    r.add_argument("--queries-per-user", type=check.arg_positive, default=16)
    r.add_argument("--seed", type=check.arg_seed, default=0)
    r.set_defaults(func=_realdata)

    from nvcc_pt.prompt.studycli import add_study_parser

    add_study_parser(sub)
