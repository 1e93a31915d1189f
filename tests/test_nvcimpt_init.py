"""Where NVCiM-PT's OVTs start (`init`), and what the study keys its saved selection and points on."""

import pytest
import torch

from nvcc_pt.errors import InputError
from nvcc_pt.models import build_model
from nvcc_pt.prompt.backbone import Backbone, WordTokenizer
from nvcc_pt.prompt.study import StudyConfig

LABELS = ("animal", "plant", "food")


@pytest.fixture(scope="module")
def bb():
    model = build_model("builtin:tiny-llama")
    return Backbone(model, WordTokenizer(model.config.vocab_size, LABELS), LABELS)


def test_label_init_holds_the_label_words_most_frequent_first(bb):
    samples = [("a small tree", 1), ("a wild cat", 0), ("a tall fern", 1)]
    ovt = bb.label_init(samples, 5)
    rows = [bb.table[bb.ids(" " + w)[0]] for w in ("plant", "animal")]  # plant twice, animal once
    for pos, want in enumerate([rows[0], rows[1], rows[0], rows[1], rows[0]]):
        assert torch.equal(ovt[pos], want.float()), pos
    assert torch.equal(bb.init_ovt(samples, 5, "labels"), ovt)
    assert torch.allclose(bb.init_ovt(samples, 5, "samples"), bb.sample_init(samples, 5))


def test_train_ovts_starts_from_the_chosen_init(bb):
    samples = [("a small tree", 1), ("a tall fern", 1)]
    for init in ("labels", "samples"):
        ovt = bb.train_ovts([samples], n_virtual=3, steps=0, init=init)[0]
        assert torch.equal(ovt, bb.init_ovt(samples, 3, init)), init  # no step: the starting point itself
    trained = bb.train_ovts([samples], n_virtual=3, steps=2, lr=0.1, init="labels")[0]
    assert not torch.equal(trained, bb.label_init(samples, 3))
    with pytest.raises(InputError, match="init.*'words'"):
        bb.train_ovts([samples], init="words")


def test_study_init_option_and_fingerprints():
    with pytest.raises(InputError, match="init"):
        StudyConfig(init="vocab")
    old = StudyConfig(init="samples", n_virtual=8, steps=40, lr=0.03, batch_size=4, per_cluster=5)
    assert old.fingerprint() == "7c4c40f77f7b5dea"  # results/nvcimpt-sampleinit, measured before `init` existed, still matches
    assert StudyConfig(init="labels").fingerprint() != StudyConfig(init="samples").fingerprint()
    # the representative selection depends on the data and the clustering, not on the training
    assert StudyConfig(steps=7, lr=0.5, init="samples").selection_key() == StudyConfig().selection_key()
    assert StudyConfig(per_cluster=3).selection_key() != StudyConfig().selection_key()


def test_study_cli_defaults_are_the_configuration_defaults():
    from nvcc_pt.cli import build_parser
    from nvcc_pt.prompt.studycli import config_from_args

    assert config_from_args(build_parser().parse_args(["nvcimpt", "study"])) == StudyConfig()
    cfg = config_from_args(build_parser().parse_args(["nvcimpt", "study", "--init", "samples"]))
    assert cfg.init == "samples"
