"""The report people look at: a golden JSON for a tiny model, and an HTML page that parses and holds every plot.

Regenerate the golden file on purpose only: `NVCC_PT_REGEN_GOLDEN=1 pytest tests/test_report_html.py`.
"""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from matplotlib.colors import to_rgb

import nvcc_pt
from nvcc_pt.errors import InputError
from nvcc_pt.plots import PLOT_IDS, bottleneck, groups, report_figure
from nvcc_pt.plotstyle import HIGHLIGHT_COLOR, percent, ratio, si

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
        self.captions: list[str] = []
        self.cells: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append(a.get("id", ""))
        if tag == "img":
            self.images[a["alt"]] = a["src"]
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        self._in = tag if tag in ("td", "figcaption") else None

    def handle_data(self, data):
        if self._in == "td":
            self.cells.append(data)
            self.tables[-1][-1].append(data)
        elif self._in == "figcaption":
            self.captions.append(data)


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
        prefix = "data:image/svg+xml;base64,"
        assert src.startswith(prefix), name
        image = base64.b64decode(src[len(prefix):], validate=True).decode("utf-8")
        assert image.lstrip().startswith("<?xml") and "<svg" in image and len(image) > 5000, name
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


def test_summary_is_in_words_and_units(report):
    parser = _Page()
    parser.feed(report.to_html())
    summary = {row[0]: row[1] for row in parser.tables[0][1:]}
    for label, value in summary.items():
        assert "_" not in label and label not in report.totals and "pj" not in label.lower(), label  # no raw keys
        assert not re.search(r"\de[+-]?\d", value), value  # no 2.358e+05
    t = report.totals
    assert summary["Energy per token, every op"] == si(t["energy_pj"] + t["other_digital_energy_pj"], "pJ")
    assert summary["on crossbars"] == si(t["cim_energy_pj"], "pJ") and summary["on crossbars"].endswith(" nJ")
    assert summary["Pipeline bottleneck"].startswith(t["bottleneck"] + " (model.layers.")
    # Captions round what they quote.
    baseline = next(c for c in parser.captions if "speed-up" in c)
    assert f"speed-up {t['speedup']:.3g}x" in baseline and str(t["speedup"]) not in baseline


def test_report_plots_are_figures_with_units(report):
    from matplotlib.figure import Figure

    for name in (*PLOT_IDS, "energy"):
        fig = report.plot(name)
        assert isinstance(fig, Figure), name
        labels = [ax.get_xlabel() for ax in fig.axes if ax.get_visible()]
        if name != "tile-map":
            assert all(re.search(r"\((nJ|µJ|pJ|ns|µs|%|count)\)", lab) for lab in labels), (name, labels)
    energy = report.plot("energy")
    assert energy.axes[0].get_xlabel() == "energy per token (nJ)"
    assert energy.legends and not energy.axes[0].get_legend()  # the legend is the figure's, below the axes
    tiles = [t.get_text() for t in report.plot("tile-map").legends[0].get_texts()]
    assert tiles[0] == "free" and tiles[-1] == "output head (lm_head)"
    with pytest.raises(InputError, match="unknown plot 'energie'"):
        report.plot("energie")


def test_bottleneck_is_marked_only_when_it_dominates(report):
    data = report.to_dict()
    assert bottleneck(data) is None  # duplication balanced the pipeline: no op stands out
    name = data["totals"]["bottleneck"]
    op = next(o for o in data["ops"] if o["name"] == name)
    op["latency_ns"] = 10 * op["latency_ns"]
    assert bottleneck(data) == name
    bars = report_figure(data, "latency").axes[0].patches
    assert sum(b.get_facecolor()[:3] == to_rgb(HIGHLIGHT_COLOR) for b in bars) == 1


def test_hundreds_of_ops_are_grouped_by_block():
    ops = [{"name": f"linear_{i}", "module": f"model.layers.{i // 7}.mlp.proj_{i % 7}"} for i in range(196)]
    rows, grouped = groups([*ops, {"name": "linear_196", "module": "lm_head"}])
    assert grouped and len(rows) == 29 and rows[0][0] == "model.layers.0" and rows[-1][0] == "lm_head"
    assert all(len(members) == 7 for _, members in rows[:-1])
    rows, grouped = groups(ops[:10])
    assert not grouped and rows[0][0] == "model.layers.0.mlp.proj_0"
    attention = [{"name": "matmul", "module": "h.0.attn"}, {"name": "matmul_1", "module": "h.0.attn"}]
    assert [lab for lab, _ in groups(attention)[0]] == ["h.0.attn [matmul]", "h.0.attn [matmul_1]"]


def test_text_headline_counts_every_digital_op(report):
    t = report.totals
    headline = next(line for line in str(report).splitlines() if line.startswith("cost per token"))
    total = si(t["energy_pj"] + t["other_digital_energy_pj"], "pJ")
    assert headline.startswith(f"cost per token, every op: {total} = {si(t['cim_energy_pj'], 'pJ')} on crossbars + "
                               f"{si(t['digital_energy_pj'], 'pJ')} digital products + "
                               f"{si(t['other_digital_energy_pj'], 'pJ')} other digital ops")


def test_si_formatting():
    assert si(235_800, "pJ") == "235.8 nJ" and si(153952.0, "pJ") == "154 nJ" and si(7207.5, "ns") == "7.208 µs"
    assert si(0.648183, "mm2") == "0.6482 mm²" and si(0.0, "mm2") == "0 mm²" and si(None, "pJ") == "-"
    assert ratio(0.0525819) == "0.0526x" and percent(0.2109) == "21.1 %" and percent(2e-6) == "<0.01 %"
