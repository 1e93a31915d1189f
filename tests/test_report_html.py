"""The report people look at: a golden JSON for a tiny model, and an HTML page that parses and holds every plot.

Regenerate the golden file on purpose only: `NVCC_PT_REGEN_GOLDEN=1 pytest tests/test_report_html.py`.
"""

from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import nvcc_pt
from nvcc_pt.report_html import PLOT_IDS

GOLDEN = Path(__file__).parent / "golden" / "tiny_llama_reram-128x128_report.json"


@pytest.fixture(scope="module")
def report():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=101, hidden_size=36, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1))
    small = nvcc_pt.get_target("reram-128x128").replace(macros_per_chip=12)  # several chips: several tile maps
    return nvcc_pt.compile(model, small, tokens=4, duplicate=True).report


def test_report_matches_the_golden_file(report):
    data = report.to_dict()
    if os.environ.get("NVCC_PT_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    assert GOLDEN.exists(), f"{GOLDEN} is missing; create it with NVCC_PT_REGEN_GOLDEN=1"
    expected = json.loads(GOLDEN.read_text())
    for key in ("ops", "totals", "costs", "target"):
        assert data[key] == expected[key], f"report field {key!r} differs from {GOLDEN.name}"
    assert data == expected


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: dict[str, str] = {}
        self.figures: list[str] = []
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append(a.get("id", ""))
        if tag == "img":
            self.images[a["alt"]] = a["src"]
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def test_html_parses_and_holds_every_plot(report, tmp_path):
    path = tmp_path / "map.html"
    page = report.to_html(path)
    assert path.read_text(encoding="utf-8") == page
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.figures == [f"plot-{p}" for p in PLOT_IDS]
    assert set(parser.images) == set(PLOT_IDS)
    for name, src in parser.images.items():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), name
        png = base64.b64decode(src[len(prefix):], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, name
    # self-contained: no external resource
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # every op and the bottleneck appear in the tables
    for op in report.ops:
        assert op["name"] in parser.cells
    assert report.totals["bottleneck"] in parser.cells
    assert report.totals["chips"] > 1


def test_html_of_a_loaded_plan_equals_the_original(tmp_path):
    torch.manual_seed(0)
    cm = nvcc_pt.compile(torch.nn.Linear(40, 24), "reram-128x128", example_inputs=(torch.randn(1, 40),))
    cm.save(tmp_path / "plan")
    loaded = nvcc_pt.load(tmp_path / "plan")
    assert loaded.report.to_dict() == cm.report.to_dict()
    assert loaded.report.to_html() == cm.report.to_html()
