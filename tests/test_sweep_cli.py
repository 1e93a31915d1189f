"""`nvcc-pt sweep sweep.toml`: a built-in model and metric from a TOML file, the report, and bad files."""

from __future__ import annotations

import html.parser

import pytest

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from nvcc_pt.cli import main  # noqa: E402

TOML = """
model = "builtin:tiny-llama"
chips = 2
out = "tl.parquet"
fidelity = "adc"
calibrate = true

[grid]
adc_bits = [4, 8]

[metric]
name = "relative_error"
tokens = 8
batch = 2

[report]
dir = "tl-report"
within = 0.5
"""


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_sweep_file_runs_and_reports(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(TOML)
    assert main(["sweep", str(tmp_path / "s.toml"), "--scheduler", "serial", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 points, 5 rows" in out and "5 computed now, 0 reused" in out  # reference + 2 points x 2 chips
    assert "Cheapest design within 0.5 of the float model" in out and "energy per token (" in out
    report = tmp_path / "tl-report"
    page = (report / "sweep.html").read_text()
    parser = _Parser()
    parser.feed(page)
    assert {"table", "svg", "h2"} <= set(parser.tags)
    svg = (report / "sweep.svg").read_text()
    assert "energy per token, every op (" in svg and "relative_error, KPP" in svg
    assert (report / "sweep.png").stat().st_size > 10_000
    md = (report / "sweep.md").read_text()
    assert "| adc_bits |" in md and "latency per token (µs)" in md
    # a second run reuses every row
    assert main(["sweep", str(tmp_path / "s.toml"), "--scheduler", "serial", "--no-progress"]) == 0
    assert "0 computed now, 5 reused" in capsys.readouterr().out
    import nvcc_pt

    res = nvcc_pt.read_sweep(tmp_path / "tl.parquet")
    t = res.table
    assert t.loc[t["reference"], "metric.relative_error"].item() < 1e-5  # exact is the float model
    s = res.summary()
    errs = s[~s["reference"]].set_index("adc_bits")["relative_error.mean"]
    assert errs[8] < errs[4]  # a calibrated 8-bit ADC loses less than a 4-bit one


@pytest.mark.parametrize("text, message", [
    ('model = "builtin:tiny-llama"\nchip = 2\n[grid]\nadc_bits = [4]\n[metric]\nname = "perplexity"\n',
     "unknown key 'chip'"),
    ('model = "builtin:tiny-llama"\n[grid]\nadc_bitz = [4]\n[metric]\nname = "perplexity"\n', "did you mean 'adc_bits'"),
    ('model = "builtin:tiny-llama"\n[grid]\nrows = [0]\n[metric]\nname = "perplexity"\n', "rows=0"),
    ('model = "builtin:tiny-llama"\n[grid]\nrows = [64]\n[metric]\nname = "accuracy"\n', "accuracy"),
    ('model = "builtin:tiny-llama"\n[grid]\nrows = [64]\n', "'metric' is required"),
    ('model = "builtin:tiny-llama"\ngrid = [', "not valid TOML"),
])
def test_bad_sweep_files_exit_with_a_message(tmp_path, capsys, text, message):
    (tmp_path / "s.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "s.toml"), "--scheduler", "serial"]) == 2
    assert message in capsys.readouterr().err
    assert not any(p.suffix == ".parquet" for p in tmp_path.iterdir())
