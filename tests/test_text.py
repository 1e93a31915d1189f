"""The WordNet gloss reader, on lines in the data.noun format and on the real file where installed."""

import pytest

from nvcc_pt.errors import DataError
from nvcc_pt.text import WORDNET_NOUNS, wordnet_glosses

LINES = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 | that which is perceived or known  
02084071 05 n 02 dog 0 domestic_dog 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 | a member of the genus Canis; "the dog barked all night"  
07612996 13 n 01 pudding 0 001 @ 07612632 n 0000 | any of various soft thick unsweetened baked dishes  
"""


@pytest.fixture
def data_noun(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(LINES)
    return path


def test_glosses_with_their_categories_in_file_order(data_noun):
    assert wordnet_glosses(path=data_noun) == [
        ("Tops", "that which is perceived or known"),
        ("animal", 'a member of the genus Canis; "the dog barked all night"'),
        ("food", "any of various soft thick unsweetened baked dishes"),
    ]
    assert [c for c, _ in wordnet_glosses(limit=2, path=data_noun)] == ["Tops", "animal"]
    assert wordnet_glosses(limit=0, path=data_noun) == []


def test_a_missing_file_names_the_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        wordnet_glosses(path=tmp_path / "nothing")


@pytest.mark.parametrize("line,words", [
    ("00001740 03 n 01 entity 0 003 ~ 00001930 n 0000\n", "not a WordNet noun synset line"),
    ("00001740 03 v 01 run 0 000 | move fast\n", "not a WordNet noun synset line"),
    ("00001740 31 n 01 entity 0 000 | a thing\n", "lexicographer file 31"),
])
def test_bad_lines_name_file_line_and_format(tmp_path, line, words):
    path = tmp_path / "data.noun"
    path.write_text(LINES + line)
    with pytest.raises(DataError, match=words) as e:
        wordnet_glosses(path=path)
    assert "data.noun:6" in str(e.value)


def test_negative_limit_is_refused(data_noun):
    with pytest.raises(DataError, match="limit=-1"):
        wordnet_glosses(limit=-1, path=data_noun)


@pytest.mark.skipif(not WORDNET_NOUNS.is_file(), reason="apt-get install wordnet-base")
def test_the_real_wordnet_nouns():
    glosses = wordnet_glosses()
    assert len(glosses) == 82115  # WordNet 3.0 noun synsets
    cats = {c for c, _ in glosses}
    assert {"animal", "artifact", "food", "person", "plant", "Tops"} <= cats and len(cats) == 26
    assert glosses[0] == ("Tops", "that which is perceived or known or inferred to have its own distinct "
                                  "existence (living or nonliving)")
    assert all(g and "|" not in g for _, g in glosses)
