"""Whatever a user passes for a target name, a spec field or a LaMP file, the answer is a valid object or an
`NvccPtError`, never another exception."""

import dataclasses
import json
import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nvcc_pt.targets.spec import MAX_ADC_BITS, MAX_ARRAY, MAX_CELL_BITS, MAX_INPUT_BITS, MAX_WEIGHT_BITS

import nvcc_pt
from nvcc_pt import DeviceModel, NvccPtError, TargetSpec, get_target
from nvcc_pt.prompt.lamp import LampDataset, load_lamp

BASE = get_target("reram-128x128")
PRESETS = nvcc_pt.list_targets()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3), st.text(max_size=12),
    st.lists(st.integers(-2, 5), max_size=5), st.tuples(st.floats(0, 2), st.floats(0, 2)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3), st.sampled_from(["differential", "offset",
                                                                                      "calibrated", "full-scale"]),
)
SPEC_FIELDS = [f.name for f in dataclasses.fields(TargetSpec) if f.name != "device"]
DEVICE_FIELDS = [f.name for f in dataclasses.fields(DeviceModel) if f.name != "name"]


def _holds_bounds(spec: TargetSpec) -> None:
    """A spec that was accepted honours the documented bounds."""
    assert 1 <= spec.rows <= MAX_ARRAY and 1 <= spec.cols <= MAX_ARRAY
    assert 2 <= spec.weight_bits <= MAX_WEIGHT_BITS and 1 <= spec.cell_bits <= min(MAX_CELL_BITS, spec.weight_bits)
    assert 2 <= spec.input_bits <= MAX_INPUT_BITS and 1 <= spec.dac_bits <= spec.input_bits
    assert 1 <= spec.adc_bits <= MAX_ADC_BITS
    d = spec.device
    for value in (d.sigma, d.read_sigma, d.drift_nu, d.drift_t0_s, d.g_min_us, d.g_max_us, spec.clock_mhz):
        assert isinstance(value, float) and math.isfinite(value)
    hash(spec)  # stays usable as a key


# -- target names -------------------------------------------------------------------------------------------------

def _near_miss(draw_name: str, edit: int, char: str) -> str:
    i = edit % (len(draw_name) + 1)
    return draw_name[:i] + char + draw_name[i:]


names = st.one_of(
    st.text(max_size=30),
    st.builds(_near_miss, st.sampled_from(PRESETS), st.integers(0, 40), st.characters()),
    st.builds(lambda n, i: n[:i] + n[i + 1:], st.sampled_from(PRESETS), st.integers(0, 20)),
    st.builds(lambda d, r, c: f"{d}-{r}x{c}", st.sampled_from(["reram", "pcm", "rram4", "fefet", "x", "Reram"]),
              st.one_of(st.integers(-5, 10**12), st.text("0123456789", max_size=25)),
              st.one_of(st.integers(-5, 10**5), st.just("٣"))),
    st.builds(lambda n, pre, post: pre + n + post, st.sampled_from(PRESETS),
              st.sampled_from(["", " ", "\n", "\t"]), st.sampled_from(["", " ", "\n", "\r\n"])),
)


@SETTINGS
@given(names)
def test_any_target_name_gives_a_spec_or_a_target_error(name):
    try:
        spec = get_target(name)
    except NvccPtError as e:
        assert isinstance(e, nvcc_pt.TargetError)
        return
    assert name == name.strip() and (name in PRESETS or spec.name == name)
    _holds_bounds(spec)


@SETTINGS
@given(st.sampled_from(PRESETS), st.sampled_from([" ", "\n", "\t", "\r\n"]), st.booleans())
def test_names_with_surrounding_whitespace_are_refused_with_the_stripped_name(name, space, before):
    padded = space + name if before else name + space
    try:
        get_target(padded)
    except nvcc_pt.TargetError as e:
        assert "whitespace" in str(e) and repr(name) in str(e)
    else:
        raise AssertionError(f"{padded!r} was accepted")


# -- spec fields --------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.dictionaries(st.sampled_from(SPEC_FIELDS + DEVICE_FIELDS), anything, min_size=1, max_size=3))
def test_any_spec_field_values_give_a_valid_spec_or_a_target_error(changes):
    for build in (lambda: BASE.replace(**changes), lambda: _construct(changes), lambda: _from_dict(changes)):
        try:
            spec = build()
        except NvccPtError:
            continue
        _holds_bounds(spec)
        assert TargetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def _construct(changes):
    device_changes = {k: v for k, v in changes.items() if k in DEVICE_FIELDS}
    fields = {f.name: getattr(BASE, f.name) for f in dataclasses.fields(TargetSpec)}
    fields.update({k: v for k, v in changes.items() if k in SPEC_FIELDS})
    fields["device"] = DeviceModel(**{**dataclasses.asdict(BASE.device), **device_changes})
    return TargetSpec(**fields)


def _from_dict(changes):
    d = BASE.to_dict()
    for k, v in changes.items():
        (d["device"] if k in DEVICE_FIELDS else d)[k] = v
    return TargetSpec.from_dict(d)


@SETTINGS
@given(st.one_of(anything, st.dictionaries(st.sampled_from(SPEC_FIELDS + ["device", "zzz"]), anything, max_size=4)))
def test_any_record_gives_a_spec_or_a_target_error(record):
    try:
        TargetSpec.from_dict(record)
    except NvccPtError:
        pass


# -- LaMP files ---------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**30), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.text(max_size=10))
profile_item = st.dictionaries(st.sampled_from(["id", "description", "tag", "text", "score", "title", "abstract"]),
                               field_values, max_size=5)
question = st.dictionaries(st.sampled_from(["id", "input", "profile"]),
                           st.one_of(field_values, st.lists(profile_item, max_size=3)), max_size=3)
questions_doc = st.one_of(json_values, st.lists(question, max_size=4))
outputs_doc = st.one_of(
    json_values,
    st.fixed_dictionaries({"task": st.one_of(st.sampled_from(["LaMP_2", "LaMP_3", "LaMP_9", "2"]), json_values),
                           "golds": st.lists(st.dictionaries(st.sampled_from(["id", "output"]), field_values,
                                                             max_size=2), max_size=4)}),
)


def _load(tmp_path_factory, q_bytes: bytes, o_bytes: bytes | None, task):
    d = tmp_path_factory.mktemp("lamp")
    (d / "q.json").write_bytes(q_bytes)
    if o_bytes is not None:
        (d / "o.json").write_bytes(o_bytes)
    try:
        ds = load_lamp(d / "q.json", d / "o.json" if o_bytes is not None else None, task=task)
    except NvccPtError:
        return None
    assert isinstance(ds, LampDataset)
    for q in ds.queries:  # nothing null or structured sneaks in as text
        assert isinstance(q.input, str) and (q.output is None or isinstance(q.output, str))
        assert "None" not in (q.input, q.output)
    return ds


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(questions_doc, st.one_of(st.none(), outputs_doc), st.one_of(st.none(), st.sampled_from([2, 3, "LaMP_4", 7.5])))
def test_any_json_document_loads_or_gives_a_data_error(tmp_path_factory, qdoc, odoc, task):
    dump = lambda doc: json.dumps(doc).encode()  # noqa: E731
    _load(tmp_path_factory, dump(qdoc), None if odoc is None else dump(odoc), task)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.sampled_from([b"", b"[", b"\xff\xfe", b"[" * 5000]))
def test_any_bytes_load_or_give_a_data_error(tmp_path_factory, raw, prefix):
    assume(raw or prefix)
    _load(tmp_path_factory, prefix + raw, prefix + raw, 2)
