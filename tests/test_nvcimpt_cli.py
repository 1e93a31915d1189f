"""`nvcc-pt nvcimpt eval` from the shell: generated data carries each query's domain, so retrieval is measured."""

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nvcc_pt.cli import main
from nvcc_pt.prompt.lamp import load_lamp, query_domains, write_lamp
from nvcc_pt.prompt.synthetic import SyntheticWorld


def _world(users=2):
    return SyntheticWorld(task=2, n_users=users, n_domains=3, domains_per_user=2, history_len=10 * users,
                          queries_per_user=4)


def test_query_domains_round_trip_and_plain_lamp_has_none(tmp_path):
    world = _world()
    ds = load_lamp(*world.write(tmp_path / "synth"))
    assert query_domains(ds) == world.query_domains()
    plain = load_lamp(*world.write(tmp_path / "again"))
    for q in plain.queries:
        q.meta.clear()  # a LaMP file: questions carry id, input and profile only
    write_lamp(plain, tmp_path / "q.json", tmp_path / "o.json")
    assert "domain" not in json.loads((tmp_path / "q.json").read_text())[0]
    assert query_domains(load_lamp(tmp_path / "q.json", tmp_path / "o.json")) is None


def test_eval_cli_reports_retrieval_on_generated_data(tmp_path, capsys):
    world = _world(users=1)
    q, o = world.write(tmp_path / "data")
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    out = tmp_path / "eval"
    args = ["nvcimpt", "eval", "--model", str(tmp_path / "lm"), "--questions", str(q), "--outputs", str(o),
            "--devices", "rram1", "--sigmas", "0.1", "--instances", "1", "--steps", "2", "--buffer-size", "10",
            "--out", str(out)]
    assert main(args) == 0
    rows = json.loads((out / "eval.json").read_text())["rows"]
    searched = [r for r in rows if r["method"] != "no-prompt"]
    assert searched and all(r["retrieval"] is not None and 0 <= r["retrieval"] <= 1 for r in searched)
    assert "not measured" not in capsys.readouterr().out
    # without the domain field (real LaMP) the run says so instead of leaving the column silently empty
    plain = load_lamp(q, o)
    for query in plain.queries:
        query.meta.clear()
    write_lamp(plain, tmp_path / "q.json", tmp_path / "o.json")
    args[args.index("--questions") + 1], args[args.index("--outputs") + 1] = str(tmp_path / "q.json"), str(tmp_path / "o.json")
    assert main(args) == 0
    assert "retrieval accuracy not measured" in capsys.readouterr().out
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert all(r["retrieval"] is None for r in rows)
