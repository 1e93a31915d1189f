import json

from nvcc_pt.cli import main


def test_targets_lists_presets(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "reram-128x128" in out and "rram4-128x128" in out


def test_compile_report_and_save_then_report_the_plan(tmp_path, capsys):
    report, plan = tmp_path / "map.json", tmp_path / "plan"
    assert main(["compile", "--model", "builtin:tiny-gpt2", "--target", "fefet-64x64", "--prompt-tokens", "2",
                 "--report", str(report), "--save", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "transformer.h.0.attn.c_attn" in out and "relative error" in out
    doc = json.loads(report.read_text())
    assert doc["target"]["name"] == "fefet-64x64"
    assert {"name", "module", "kind", "mapped", "reason", "k", "n", "arrays", "row_tiles", "col_tiles", "slices",
            "utilization", "weight_bits", "input_bits", "adc_bits", "device", "sigma", "placement"} <= set(doc["ops"][0])
    assert {"arrays", "chips", "mapped_params", "digital_params", "mapped_macs_fraction"} <= set(doc["totals"])
    assert main(["report", str(plan), "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["ops"] == doc["ops"]


def test_errors_exit_2_with_a_message(capsys):
    assert main(["compile", "--model", "builtin:tiny-nothing"]) == 2
    assert "tiny-llama" in capsys.readouterr().err
    assert main(["compile", "--target", "reram-0x0"]) == 2
