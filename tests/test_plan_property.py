"""Property: any plan.json, however mangled, loads as a working model or raises `PlanFormatError`.

Mutations of a real plan.json drop keys, change types, put random JSON or extreme numbers anywhere, and nest
values deeply; most are resealed (digests made consistent again) so they reach the checks behind the digests.
"""

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_forge import reseal

import nvcc_pt
from nvcc_pt import PlanFormatError


def _logits(out):
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def plan(tmp_path_factory, tiny_models):
    path = tmp_path_factory.mktemp("prop") / "plan"
    nvcc_pt.compile(tiny_models("tiny-llama"), "reram-128x128", fidelity="adc", seed=0).save(path)
    doc = json.loads((path / "plan.json").read_text())
    return path, doc, _paths(doc)


def _paths(doc):
    out, stack = [], [((), doc)]
    while stack:
        where, value = stack.pop()
        out.append(where)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend(((*where, k), v) for k, v in items)
    # The saved report is not read back (the loader recounts it): its inner keys would only dilute the search.
    return sorted((p for p in out if p[:1] != ("report",) or len(p) < 3), key=str)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
EXTREMES = st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 30, 1e308, -1e-308, 0.5, True, "", "x" * 300])


@st.composite
def mutations(draw, paths):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["drop", "json", "extreme", "retype", "nest"]))
        value = draw(JSON) if kind == "json" else draw(EXTREMES) if kind == "extreme" else None
        depth = draw(st.integers(2, 200)) if kind == "nest" else 0
        out.append((where, kind, value, depth))
    return out


def _apply(doc, where, kind, value, depth):
    if not where:
        return doc if kind == "drop" else value
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    key, old = where[-1], parent[where[-1]]
    if kind == "drop":
        del parent[key]
    elif kind == "retype":
        parent[key] = str(old) if not isinstance(old, str) else [old]
    elif kind == "nest":
        for _ in range(depth):
            old = [old]
        parent[key] = old
    else:
        parent[key] = value
    return doc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_plan_json_loads_or_raises_plan_format_error(plan, ids, data):
    path, base, paths = plan
    doc = copy.deepcopy(base)
    for m in data.draw(mutations(paths)):
        try:
            doc = _apply(doc, *m)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the spot
            continue
    if data.draw(st.integers(0, 9), label="reseal") and isinstance(doc, dict):
        reseal(path, doc)
    else:
        (path / "plan.json").write_text(json.dumps(doc))
    try:
        cm = nvcc_pt.load(path)
    except PlanFormatError:
        return
    with torch.no_grad():
        assert _logits(cm(ids)).shape == (*ids.shape, 101)
    str(cm.report)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_program_json_loads_or_raises_plan_format_error(plan, data):
    """The same for the graph: resealed, so every mutation reaches the program parser and the cross-checks."""
    path, base, _ = plan
    reseal(path, copy.deepcopy(base))  # undo what the other property left in plan.json
    program = json.loads((path / "program.json").read_text())
    original = (path / "program.json").read_text()
    try:
        for m in data.draw(mutations(_paths(program))):
            try:
                program = _apply(program, *m)
            except (KeyError, IndexError, TypeError):
                continue
        (path / "program.json").write_text(json.dumps(program))
        reseal(path, copy.deepcopy(base))
        try:
            nvcc_pt.load(path)
        except PlanFormatError:
            pass
    finally:
        (path / "program.json").write_text(original)
