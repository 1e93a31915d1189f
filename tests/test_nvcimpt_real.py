"""NVCiM-PT on real text: the generator, the method configurations, the resumable study and its report."""

import json
from dataclasses import asdict

import pytest
import torch

from nvcc_pt.cli import main as cli_main
from nvcc_pt.errors import DataError, DeviceError, InputError
from nvcc_pt.prompt.lamp import load_lamp
from nvcc_pt.prompt.methods import ISOLATES, METHODS, NVCIMPT, REFERENCE, Method, Mitigation, differences
from nvcc_pt.prompt.realtext import FORTUNE_DIR, load_realtext, write_realtext
from nvcc_pt.prompt.study import StudyConfig, read_points, run_study
from nvcc_pt.prompt.studyreport import bootstrap_ci, criteria, gap, summarize, write_report
from nvcc_pt.text import WORDNET_NOUNS

needs_wordnet = pytest.mark.skipif(not WORDNET_NOUNS.is_file(),
                                   reason=f"{WORDNET_NOUNS} missing: apt-get install wordnet-base")


@needs_wordnet
def test_wordnet_users_read_as_lamp_and_shift_between_domains(tmp_path):
    q, o = write_realtext(tmp_path, "wordnet", users=3, buffers=2, buffer_size=10, queries_per_user=4, seed=1)
    lamp = load_lamp(q, o)  # the plain LaMP loader: LaMP-2's format, task from the outputs file
    assert lamp.task.task_id == 2 and len(lamp.queries) == 12
    data = load_realtext(tmp_path)
    assert set(data.labels) == {c for cats in data.domains.values() for c in cats}
    of = {c: d for d, cats in data.domains.items() for c in cats}
    seen = set()
    for u in range(3):
        queries = [x for x in data.dataset.queries if x.id.startswith(f"u{u}-")]
        hist = queries[0].profile
        assert all(x.profile == hist for x in queries) and len(hist) == 20
        assert all(of[e.output] == e.meta["domain"] for e in hist)  # the domain field is the label's domain
        walk = [hist[0].meta["domain"], hist[5].meta["domain"], hist[15].meta["domain"]]
        assert [e.meta["domain"] for e in hist] == [walk[0]] * 5 + [walk[1]] * 10 + [walk[2]] * 5
        assert walk[0] != walk[1] != walk[2]  # the history moves to another domain at each half buffer
        assert {data.query_domains[x.id] for x in queries} == {walk[1], walk[2]}  # the newest buffer's domains
        texts = [e.input for e in hist] + [x.input for x in queries]
        assert not seen & set(texts)
        seen |= set(texts)
    assert len(seen) == 3 * 24  # no text used twice


@pytest.mark.skipif(not (FORTUNE_DIR / "computers").is_file(), reason="fortunes missing: apt-get install fortunes")
def test_fortune_users_read_as_lamp(tmp_path):
    write_realtext(tmp_path, "fortunes", users=2, buffers=1, buffer_size=6, queries_per_user=2)
    data = load_realtext(tmp_path)
    assert data.name == "fortunes" and "computers" in data.labels and len(data.dataset.queries) == 4


def test_missing_package_names_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        write_realtext(tmp_path / "w", "wordnet", source=tmp_path / "no-data.noun")
    with pytest.raises(DataError, match="apt-get install fortunes"):
        write_realtext(tmp_path / "f", "fortunes", source=tmp_path / "no-folder")
    assert not (tmp_path / "w").exists() and not (tmp_path / "f").exists()  # nothing half-written
    with pytest.raises(InputError, match="unknown real-text task"):
        write_realtext(tmp_path, "lyrics")
    with pytest.raises(DataError, match="labels.json"):
        load_realtext(tmp_path)


def test_each_baseline_differs_from_its_reference_in_exactly_one_part():
    assert METHODS["nvcimpt"] == NVCIMPT
    for name, method in METHODS.items():
        if name == "nvcimpt":
            continue
        part = ISOLATES[name]
        ref = METHODS[REFERENCE[name]]
        assert differences(method, ref) == [part.split(".")[0]], name
        if "." in part:  # an ablation: one field of NVCiM-PT's mitigation
            assert differences(method, ref, deep=True) == [part], name
    # the no-mitigation baseline drops both halves of the mitigation and nothing else
    assert differences(METHODS["rep-pt-mips"], NVCIMPT, deep=True) == ["mitigation.noise_aware", "mitigation.search"]
    assert METHODS["rep-pt-mips"].bank == METHODS["nvcimpt-no-nat"].bank == "representative/plain"
    with pytest.raises(InputError, match="selection"):
        Method(True, "everything", Mitigation(True, "ssa"))


def _bow(texts):
    x = torch.zeros(len(texts), 64)
    for i, t in enumerate(texts):
        for w in t.split():
            x[i, sum(map(ord, w)) % 64] += 1.0
    return x


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model gains nothing from two, and two threads stall each other on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(model="builtin:tiny-llama", devices=("rram1",), sigmas=(0.0, 0.1), seeds=(0,), chips=2, users=2,
            queries_per_user=3, buffers=2, buffer_size=6, per_cluster=2, steps=2, n_virtual=4, batch_size=2)


@needs_wordnet
def test_tiny_study_runs_reports_and_resumes(tmp_path, monkeypatch, one_thread):
    cfg = StudyConfig(**TINY)
    logged = []
    points = run_study(cfg, tmp_path, embedder=_bow, progress=False, log=logged.append)
    assert len(points) == 6 * 2  # every method at both sigmas
    estimate = next(line for line in logged if line.startswith("estimated time"))
    assert "searching the OVT banks" in estimate and "on cpu" in estimate  # the simulator's share is estimated too
    run = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert run["chip_draws"].startswith("on cpu")  # where the chips' variation was drawn
    assert {p["method"] for p in points} == set(METHODS)
    for p in points:
        assert len(p["values"]) == 2 and all(0.0 <= v <= 1.0 for v in p["values"])
        assert (p["retrieval"] is None) == (p["method"] == "no-prompt")
    sigma0 = [p for p in points if p["sigma"] == 0.0 and p["method"] != "no-prompt"]
    assert all(p["values"][0] == p["values"][1] for p in sigma0)  # no variation: every chip alike
    table = write_report(points, asdict(cfg), tmp_path, command="nvcc-pt nvcimpt study ...")
    for f in ("results.json", "table.md", "plot.png", "plot.svg", "command.txt"):
        assert (tmp_path / f).is_file(), f
    assert "Criteria stated in advance" in table and "36.7%" in table
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["rows"]) == 12 and doc["criteria"]

    jsonl = tmp_path / "points.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])  # lost the last points, the last one cut short

    def no_training(*a, **k):
        raise AssertionError("a resumed run must load its OVTs, not train them again")

    def no_embedder(texts):
        raise AssertionError("a resumed run must read its representative selection, not select again")

    monkeypatch.setattr("nvcc_pt.prompt.backbone.Backbone.train_ovts", no_training)
    assert len(list((tmp_path / "selection").glob("*.json"))) == 1
    again = run_study(cfg, tmp_path, embedder=no_embedder, progress=False, log=lambda *_: None)
    assert len(jsonl.read_text().splitlines()) == len(lines)  # only the lost points were measured again
    key = {(p["method"], p["sigma"]): p["values"] for p in points}
    assert {(p["method"], p["sigma"]): p["values"] for p in again} == key  # the same numbers

    def no_model(*a, **k):
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr("nvcc_pt.prompt.backbone.load_backbone", no_model)
    assert len(run_study(cfg, tmp_path, progress=False, log=lambda *_: None)) == 12
    with pytest.raises(DataError, match="another configuration"):
        read_points(jsonl, StudyConfig(**{**TINY, "steps": 3}).fingerprint())


@needs_wordnet
def test_study_cli_on_tiny_model(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    rc = cli_main(["nvcimpt", "study", "--model", "builtin:tiny-gpt2", "--devices", "fefet2", "--sigmas", "0,0.1",
                   "--seeds", "0", "--chips", "2", "--users", "2", "--queries-per-user", "2", "--buffers", "1",
                   "--buffer-size", "6", "--per-cluster", "2", "--steps", "1", "--n-virtual", "2",
                   "--methods", "no-prompt,rep-pt-mips,nvcimpt", "--embedder", "lm", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fefet2" in text and ("[met]" in text or "[NOT met]" in text)
    command = (out / "command.txt").read_text()
    assert "--model builtin:tiny-gpt2" in command and "--device cpu" in command
    assert cli_main(["nvcimpt", "study", "--model", "builtin:tiny-gpt2", "--device", "cuda:99", "--sigmas", "0",
                     "--devices", "rram1", "--seeds", "0", "--chips", "1", "--users", "1", "--queries-per-user", "1",
                     "--buffers", "1", "--buffer-size", "6", "--steps", "1", "--out", str(tmp_path / "gpu")]) == 2
    assert "cuda" in capsys.readouterr().err.lower()


def test_backbone_refuses_labels_that_share_a_first_token_and_absent_cuda():
    from nvcc_pt.models import build_model
    from nvcc_pt.prompt.backbone import Backbone, WordTokenizer

    model = build_model("builtin:tiny-llama")

    class Tok(WordTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [5 for _ in text.split()]

    with pytest.raises(InputError, match="first token"):
        Backbone(model, Tok(101, ["a", "b"]), ["cat", "dog"])
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            Backbone(model, WordTokenizer(101, ["cat", "dog"]), ["cat", "dog"], device="cuda")


def _points(gain_at: dict, base=0.5, seeds=(0, 1), chips=4):
    """Hand-made points: rep-pt-mips at `base`, nvcimpt `gain_at[sigma]` above it (plus a small chip spread)."""
    pts = []
    for s in seeds:
        for sigma, g in gain_at.items():
            for m, v in (("no-prompt", 0.2), ("rep-pt-mips", base), ("nvcimpt", base + g), ("nvcimpt-mips", base),
                         ("nvcimpt-no-nat", base)):
                vals = [v + 0.01 * (c % 2) for c in range(chips)]
                ret = None if m == "no-prompt" else [0.9 if m == "nvcimpt" else 0.8] * chips
                for device in ("rram1", "fefet2"):
                    pts.append({"method": m, "device": device, "sigma": sigma, "seed": s, "values": vals,
                                "retrieval": ret})
    return pts


def test_criteria_follow_the_numbers():
    good = _points({0.0: 0.0, 0.025: 0.02, 0.1: 0.1, 0.125: 0.15})
    for p in good:  # the plain OVT loses its gain under noise
        if p["method"] == "rep-pt-mips" and p["sigma"] > 0:
            p["values"] = [0.3] * len(p["values"])
    crit = {c["name"].split(" ")[0]: c for c in criteria(good, summarize(good))}
    assert all(c["met"] for c in crit.values()), [c["text"] for c in crit.values()]
    bad = _points({0.0: 0.05, 0.025: 0.02, 0.1: 0.01, 0.125: 0.0})
    crit = {c["name"].split(" ")[0]: c for c in criteria(bad, summarize(bad))}
    assert not crit["NVCiM-PT"]["met"] and not crit["at"]["met"]  # 1% at 0.1; 5 points apart at sigma 0
    g = gap(good, "nvcimpt", "rep-pt-mips", "rram1", 0.1)
    assert g["ci"][0] > 0 and g["rel"] == pytest.approx((0.605 - 0.3) / 0.3)  # mean 0.6 + half a 0.01 spread
    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4])
    assert lo <= 0.25 <= hi and 0.1 <= lo and hi <= 0.4


def test_study_config_refuses_bad_values():
    with pytest.raises(InputError, match="unknown method.*magic"):
        StudyConfig(methods=("nvcimpt", "magic"))
    with pytest.raises(InputError, match="task"):
        StudyConfig(task="lyrics")
    with pytest.raises(Exception, match="rram9"):
        StudyConfig(devices=("rram9",))
    assert StudyConfig().fingerprint() == StudyConfig(devices=("rram1",), seeds=(5,)).fingerprint()
    assert StudyConfig().fingerprint() != StudyConfig(steps=7).fingerprint()


def test_reduced_and_full_configurations_and_their_cost():
    from nvcc_pt.cli import build_parser
    from nvcc_pt.prompt.study import cost
    from nvcc_pt.prompt.studycli import config_from_args

    full = config_from_args(build_parser().parse_args(["nvcimpt", "study"]))
    assert full.devices == ("rram1", "fefet2", "rram4", "fefet6") and full.seeds == (0, 1, 2) and full.chips >= 10
    assert full.sigmas == (0.0, 0.025, 0.05, 0.075, 0.1, 0.125) and full.methods == tuple(METHODS)
    c = cost(full)
    assert c["points"] == 6 * 4 * 6 * 3
    # per seed: 6 users x 2 buffers (one OVT each), x 2 domains plain, x 2 domains x 4 devices noise-aware
    assert c["ovts"] == 3 * (12 + 24 + 24 * 4) and c["train_steps"] == 3 * 6 * full.steps
    reduced = config_from_args(build_parser().parse_args(["nvcimpt", "study", "--reduced", "--chips", "3"]))
    assert reduced.devices == ("rram1",) and reduced.seeds == (0,) and reduced.chips == 3  # an explicit option wins
    assert cost(reduced)["points"] == 6 * 6


@needs_wordnet
def test_prepare_only_writes_data_and_selection_without_the_model(tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("preparing needs no model")

    monkeypatch.setattr("nvcc_pt.prompt.backbone.load_backbone", no_model)
    cfg = StudyConfig(**TINY)
    assert run_study(cfg, tmp_path, embedder=_bow, prepare_only=True, log=lambda *_: None) == []
    assert (tmp_path / "data" / "questions.json").is_file() and (tmp_path / "data" / "labels.json").is_file()
    saved = json.loads(next((tmp_path / "selection").glob("*.json")).read_text())
    assert len(saved["representative"]) == 2 * 2 * 2  # users x buffers x clusters
    assert not (tmp_path / "points.jsonl").exists()
