"""Real English text for measurements: WordNet noun glosses.

WordNet 3.0 (Miller, Communications of the ACM, 1995; Fellbaum, MIT Press, 1998) ships in Debian
as `wordnet-base`; its `data.noun` holds one synset per line: offset, lexicographer file number,
`n`, the words, the pointers, then `| ` and the gloss (a definition, often followed by quoted
examples). The lexicographer file number names the noun's category (animal, artifact, food, ...).

Example:
    >>> wordnet_glosses(limit=2)
    [('Tops', 'that which is perceived or known or inferred to have its own distinct existence (living or nonliving)'),
     ('Tops', 'an entity that has physical existence')]
"""

from __future__ import annotations

import os
from pathlib import Path

from nvcc_pt.errors import DataError

WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
"""Where Debian's `wordnet-base` package installs the noun synsets."""

# WordNet's lexicographer files 03-28 (lexnames(5WN)); numbers 00-02 and 29-44 are adjectives and verbs
NOUN_CATEGORIES = (
    "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event", "feeling",
    "food", "group", "location", "motive", "object", "person", "phenomenon", "plant", "possession", "process",
    "quantity", "relation", "shape", "state", "substance", "time",
)
_FIRST_NOUN_FILE = 3


def wordnet_glosses(limit: int | None = None, path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """`(category, gloss)` of WordNet's noun synsets in file order, the first `limit` of them (all if None).

    `path` defaults to `/usr/share/wordnet/data.noun` (`apt-get install wordnet-base`).
    Raises `DataError` when the file is missing or a synset line does not parse.

    Example:
        >>> [c for c, _ in wordnet_glosses(limit=100)].count("Tops")
    """
    path = WORDNET_NOUNS if path is None else Path(path)
    if limit is not None and limit < 0:
        raise DataError(f"wordnet_glosses: limit={limit} must be >= 0 or None")
    if not path.is_file():
        raise DataError(f"WordNet noun file {path} does not exist; install it with "
                        "'apt-get install wordnet-base' or pass path= to a WordNet 3.0 data.noun")
    out: list[tuple[str, str]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if line.startswith(" ") or not line.strip():  # the licence header lines start with two spaces
                continue
            out.append(_parse(line, path, number))
    return out


def _parse(line: str, path: Path, number: int) -> tuple[str, str]:
    head, sep, gloss = line.partition(" | ")
    fields = head.split(" ", 3)
    if not sep or len(fields) < 3 or not fields[1].isdigit() or fields[2] != "n":
        raise DataError(f"{path}:{number} is not a WordNet noun synset line "
                        f"('OFFSET LEXFILE n ... | gloss'): {line[:80]!r}")
    lex = int(fields[1]) - _FIRST_NOUN_FILE
    if not 0 <= lex < len(NOUN_CATEGORIES):
        raise DataError(f"{path}:{number}: lexicographer file {fields[1]} is not a noun category "
                        f"({_FIRST_NOUN_FILE:02d}-{_FIRST_NOUN_FILE + len(NOUN_CATEGORIES) - 1})")
    return NOUN_CATEGORIES[lex], gloss.strip()
