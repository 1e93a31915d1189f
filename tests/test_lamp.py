"""LaMP loader, offline metrics and the synthetic generator."""

import json
import math

import pytest

from nvcc_pt.errors import DataError, InputError, NvccPtError
from nvcc_pt.prompt import metrics
from nvcc_pt.prompt.lamp import TASKS, get_task, load_lamp
from nvcc_pt.prompt.synthetic import SyntheticWorld


def test_metrics_known_values():
    assert metrics.accuracy(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    # label a: tp 1, fp 0, fn 1 -> 2/3; label b: tp 0 -> 0; macro over golds' labels {a} = 2/3
    assert metrics.f1_macro(["a", "b"], ["a", "a"]) == pytest.approx(2 / 3)
    assert metrics.f1_macro(["a", "b"], ["a", "b"]) == 1.0
    assert metrics.mae(["1", "5"], ["2", "2"]) == pytest.approx(2.0)
    assert metrics.rmse(["1", "5"], ["2", "2"]) == pytest.approx(math.sqrt(5))
    assert metrics.mae(["x"], ["3"]) == 4.0  # unparsable prediction counts as the worst error
    # pred 3 tokens, ref 4 tokens, overlap 2 -> P 2/3, R 1/2, F 4/7
    assert metrics.rouge1(["the cat sat"], ["the cat was here"]) == pytest.approx(4 / 7)
    # LCS of "a b c d" and "a c b d" is 3 -> F = 3/4
    assert metrics.rouge_l(["a b c d"], ["a c b d"]) == pytest.approx(0.75)
    assert metrics.rouge1(["a b c d"], ["a c b d"]) == 1.0
    with pytest.raises(InputError):
        metrics.accuracy(["a"], ["a", "b"])


def _write(tmp_path, task, profile, output):
    q = tmp_path / f"q{task}.json"
    o = tmp_path / f"o{task}.json"
    q.write_text(json.dumps([{"id": "1", "input": "some input", "profile": profile}]))
    o.write_text(json.dumps({"task": f"LaMP_{task}", "golds": [{"id": "1", "output": output}]}))
    return q, o


@pytest.mark.parametrize("task,profile,output", [
    (1, [{"id": "p", "title": "T", "abstract": "A"}], "[1]"),
    (2, [{"id": "p", "tag": "comedy", "description": "D"}], "comedy"),
    (3, [{"id": "p", "score": "4", "text": "good"}], "4"),
    (5, [{"id": "p", "title": "T", "abstract": "A"}], "a title"),
    (7, [{"id": "p", "text": "a tweet"}], "a tweet"),
])
def test_load_each_task(tmp_path, task, profile, output):
    ds = load_lamp(*_write(tmp_path, task, profile, output))
    assert ds.task.task_id == task and len(ds.queries) == 1
    q = ds.queries[0]
    assert q.output == output and len(q.profile) == 1 and q.profile[0].output == str(profile[0][TASKS[task].profile_output])


def test_bad_files_name_the_file_and_record(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("[{\"id\": 1,")
    with pytest.raises(DataError, match="broken.json.*line 1"):
        load_lamp(bad, task=2)
    q = tmp_path / "q.json"
    q.write_text(json.dumps([{"id": "1", "input": "x", "profile": []}, {"input": "no id"}]))
    with pytest.raises(DataError, match=r"q.json, record 1"):
        load_lamp(q, task=2)
    q.write_text(json.dumps([{"id": "1", "input": "x", "profile": [{"id": "p", "description": "d"}]}]))
    with pytest.raises(DataError, match=r"record 0.*lacks field\(s\) \['tag'\]"):
        load_lamp(q, task=2)
    with pytest.raises(DataError, match="unknown LaMP task 9"):
        get_task(9)
    with pytest.raises(DataError, match="cannot read"):
        load_lamp(tmp_path / "missing.json", task=2)
    o = tmp_path / "o.json"
    q.write_text(json.dumps([{"id": "1", "input": "x", "profile": []}]))
    o.write_text(json.dumps({"task": "LaMP_2", "golds": [{"id": "other", "output": "comedy"}]}))
    with pytest.raises(DataError, match="no gold output"):
        load_lamp(q, o)
    assert issubclass(DataError, NvccPtError)


def test_synthetic_round_trip_and_domain_shift(tmp_path):
    world = SyntheticWorld(task=3, n_users=2, domains_per_user=2, history_len=20, queries_per_user=5, seed=1)
    q, o = world.write(tmp_path)
    ds = load_lamp(q, o)
    assert ds.task.task_id == 3 and len(ds.queries) == 10
    assert {e.output for q in ds.queries for e in q.profile} <= set(ds.task.labels)
    # Each user's history visits its domains one after another: the domain changes over time.
    for user in world.users:
        doms = [d for d, _ in user["history"]]
        assert doms[0] != doms[-1] and doms == sorted(doms, key=doms.index)
    tok = world.tokenizer()
    assert tok.unk_token_id not in tok.encode(ds.queries[0].input, add_special_tokens=False)
    with pytest.raises(InputError):
        SyntheticWorld(task=5)
