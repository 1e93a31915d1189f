import pytest

import nvcc_pt
from nvcc_pt import TargetError, get_target


def test_presets_are_registered_and_cite_a_source():
    names = nvcc_pt.list_targets()
    for name in ("reram-128x128", "reram-256x256", "fefet-64x64", "rram1-128x128", "rram4-128x128",
                 "fefet2-128x128", "fefet6-128x128", "pcm-256x256"):
        assert name in names
        assert get_target(name).source


def test_device_factor_models_scale_middle_levels_and_keep_mean_variance():
    for name, s in (("rram1", 1), ("rram4", 4), ("fefet2", 2), ("fefet6", 6)):
        sig = get_target(f"{name}-128x128").device.level_sigmas(4)
        assert sig[1] == pytest.approx(s * sig[0]) and sig[2] == sig[1] and sig[3] == sig[0]
        # Two outer and two middle levels, weighted 0.6/0.4, average back to sigma^2.
        assert 0.6 * sig[0] ** 2 + 0.4 * sig[1] ** 2 == pytest.approx(0.1**2)


def test_names_of_the_form_device_rows_x_cols_parse():
    t = get_target("rram4-64x32")
    assert (t.rows, t.cols, t.device.name) == (64, 32, "rram4")
    assert t.device == get_target("rram4-128x128").device


def test_unknown_name_lists_the_closest():
    with pytest.raises(TargetError, match="reram-128x128"):
        get_target("rerm-128x128")
    with pytest.raises(TargetError, match="Known targets"):
        get_target("quantum-dots")


def test_replace_derives_and_revalidates():
    base = get_target("reram-128x128")
    t = base.replace(adc_bits=6, sigma=0.05)
    assert t.adc_bits == 6 and t.device.sigma == 0.05 and base.adc_bits == 8
    assert t.slices == 4 and t.replace(sign="differential").slices == 4 and t.replace(cell_bits=1).slices == 8


@pytest.mark.parametrize("change, match", [
    ({"rows": 0}, "rows"), ({"adc_bits": 0}, "adc_bits"), ({"cell_bits": 9}, "cell_bits"),
    ({"sigma": -0.1}, "sigma"), ({"sign": "twos"}, "sign"), ({"chips": 0}, "chips"), ({"colour": 1}, "colour"),
])
def test_invalid_specs_are_refused(change, match):
    with pytest.raises(TargetError, match=match):
        get_target("reram-128x128").replace(**change)


def test_spec_round_trips_through_dict():
    t = get_target("rram4-128x128")
    assert nvcc_pt.TargetSpec.from_dict(t.to_dict()) == t


def test_register_refuses_duplicates():
    with pytest.raises(TargetError, match="already registered"):
        nvcc_pt.register_target(get_target("reram-128x128"))
