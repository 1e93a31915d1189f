import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nvcc_pt
from nvcc_pt.meta import TileGrid


@given(k=st.integers(1, 300), n=st.integers(1, 60), rows=st.integers(1, 128), cols=st.integers(1, 128),
       bits=st.integers(2, 9), cell=st.integers(1, 4), differential=st.booleans())
@settings(max_examples=60, deadline=None)
def test_tiles_cover_every_weight_element_exactly_once(k, n, rows, cols, bits, cell, differential):
    cell = min(cell, bits)
    magnitude = bits - 1 if differential else bits
    grid = TileGrid(k=k, n=n, rows=rows, cols=cols, slices=math.ceil(magnitude / cell),
                    sign_columns=2 if differential else 1)
    seen = {}
    tiles = list(grid.tiles())
    assert len(tiles) == grid.arrays == math.ceil(k / rows) * math.ceil(n * grid.slices * grid.sign_columns / cols)
    for _, _, (k0, k1), (c0, c1) in tiles:
        assert 0 < k1 - k0 <= rows and 0 < c1 - c0 <= cols
        for col in range(c0, c1):
            key = grid.logical_of_column(col)
            seen[key] = seen.get(key, 0) + (k1 - k0)
    # Every (output, sign column, slice) appears, each with all K rows, once.
    assert seen == {(j, p, s): k for j in range(n) for p in range(grid.sign_columns) for s in range(grid.slices)}
    for j, p, s in list(seen)[:20]:
        assert grid.logical_of_column(grid.physical_column(j, p, s)) == (j, p, s)


@pytest.mark.parametrize("target", ["reram-128x128", "fefet-64x64", "reram-256x256", "rram4-32x16"])
@pytest.mark.parametrize("sign", ["differential", "offset"])
def test_report_arrays_follow_the_formula(tiny_models, target, sign):
    spec = nvcc_pt.get_target(target).replace(sign=sign)
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), spec, fidelity="exact")
    p = 2 if sign == "differential" else 1
    s = math.ceil((spec.weight_bits - 1 if sign == "differential" else spec.weight_bits) / spec.cell_bits)
    mapped = [o for o in cm.report.ops if o["mapped"]]
    assert mapped
    for o in mapped:
        assert o["slices"] == s
        assert o["arrays"] == math.ceil(o["k"] / spec.rows) * math.ceil(o["n"] * s * p / spec.cols)
        assert o["row_tiles"] * o["col_tiles"] == o["arrays"]
    assert cm.report.totals["arrays"] == sum(o["arrays"] for o in mapped)
