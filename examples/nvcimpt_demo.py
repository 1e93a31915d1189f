"""NVCiM-PT end to end on CPU in a few minutes.

1. Write synthetic LaMP-2-style data (users whose domains shift over time) in LaMP's JSON format.
2. Train a tiny GPT-2-style causal LM from scratch on the synthetic world, so it has something to
   adapt: it learns to read a domain from a prefix, which soft prompts then replace.
3. Save it as a Hugging Face checkpoint directory and run the NVCiM-PT harness on it (the same call
   runs on a real checkpoint with real LaMP files: `nvcc-pt nvcimpt eval --model DIR ...`).

    python examples/nvcimpt_demo.py --out out/nvcimpt_demo/
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch


def train_lm(world, tokenizer, steps: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    seqs = [tokenizer.encode(t, add_special_tokens=False) for t in world.pretraining_texts(8000, seed=seed + 1)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        batch = rng.sample(seqs, 32)
        width = max(map(len, batch))
        ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in batch])
        labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
        out = model(input_ids=ids, labels=labels)
        # Extra weight on the answer token: the label is one token among many topic words.
        last = torch.tensor([len(s) - 2 for s in batch])
        answer = torch.nn.functional.cross_entropy(out.logits[torch.arange(len(batch)), last],
                                                   torch.tensor([s[-1] for s in batch]))
        loss = out.loss + answer
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  LM step {step:4d}  loss {out.loss.item():.3f}  answer loss {answer.item():.3f}", flush=True)
    return model.eval()


def main(argv=None) -> int:
    from nvcc_pt.prompt.harness import EvalConfig, evaluate
    from nvcc_pt.prompt.lamp import load_lamp
    from nvcc_pt.prompt.synthetic import SyntheticWorld

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/nvcimpt_demo")
    ap.add_argument("--lm-steps", type=int, default=500)
    ap.add_argument("--ovt-steps", type=int, default=80)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--sigmas", default="0.025,0.05,0.075,0.1,0.125")
    ap.add_argument("--devices", default="rram1,rram4,fefet2,fefet6")
    ap.add_argument("--embedder", choices=("minilm", "bow"), default="minilm",
                    help="minilm: all-MiniLM-L6-v2 (default); bow: bag of words, no model files needed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    world = SyntheticWorld(task=2, n_domains=5, words_per_domain=8, n_users=3, domains_per_user=3, history_len=50,
                           queries_per_user=30, n_cues=2, seed=args.seed)
    questions, outputs = world.write(out / "data")
    tokenizer = world.tokenizer()
    print(f"synthetic LaMP-2 data in {questions.parent} ({time.time() - t0:.0f}s); training the LM from scratch")
    model = train_lm(world, tokenizer, args.lm_steps, args.seed)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    print(f"LM saved to {out / 'model'} ({time.time() - t0:.0f}s)")

    embedder = None
    if args.embedder == "bow":
        vocab = {w: i for i, w in enumerate(tokenizer.get_vocab())}

        def embedder(texts):
            x = torch.zeros(len(texts), len(vocab))
            for i, t in enumerate(texts):
                for w in t.split():
                    x[i, vocab.get(w, 0)] += 1.0
            return x

    cfg = EvalConfig(devices=tuple(args.devices.split(",")), sigmas=tuple(float(s) for s in args.sigmas.split(",")),
                     instances=args.instances, steps=args.ovt_steps, seed=args.seed)
    dataset = load_lamp(questions, outputs)
    res = evaluate(model, tokenizer, dataset, cfg, embedder=embedder, query_domains=world.query_domains())
    print(res.to_text())
    res.to_json(out / "eval.json")
    res.plot(out / "eval.png")
    metric = res.metric
    print(f"\nAt sigma 0.1 ({metric}, mean over {cfg.instances} instances):")
    for device in cfg.devices:
        try:
            ours, base = res.row("nvcimpt", device, 0.1)["mean"], res.row("pt-mips", device, 0.1)["mean"]
        except StopIteration:
            continue
        rel = (ours - base) / base * 100 if base else float("inf")
        print(f"  {device:7s} NVCiM-PT {ours:.3f} vs no-mitigation baseline (pt-mips) {base:.3f}: "
              f"{ours - base:+.3f} ({rel:+.1f}%)")
    print(f"\nwrote {out / 'eval.json'} and {out / 'eval.png'} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
