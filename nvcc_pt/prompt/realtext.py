"""LaMP-style users built from real text: WordNet noun glosses and `fortune` quotes.

Two classification tasks in LaMP-2's format ("description -> tag", Salemi et al., ACL 2024):

- `wordnet`: a noun's gloss from WordNet 3.0 (Miller, CACM 1995; Debian `wordnet-base`) labelled with
  its lexicographer category (animal, artifact, feeling, ...). Categories are grouped into domains
  (`WORDNET_DOMAINS`).
- `fortunes`: a quote from the BSD `fortune` collection (Debian `fortunes`) labelled with the file it
  comes from (computers, love, politics, ...), grouped the same way (`FORTUNE_DOMAINS`).

Every user's history moves from domain to domain over time: buffer `b` of the history holds the
user's domain `b` in its first half and domain `b + 1` in its second, and the user's queries come
from the two domains of the newest buffer. History items carry their `domain` as an extra profile
field, so retrieval can be scored.

`write_realtext(out, task)` writes `questions.json` and `outputs.json` (read by `load_lamp` exactly as
LaMP-2 files) and `labels.json` (the task's labels and domains); `load_realtext(out)` reads them back.

Example:
    >>> write_realtext("data/wordnet", "wordnet", users=4)
    >>> data = load_realtext("data/wordnet")
    >>> data.dataset.task.labels, data.query_domains[data.dataset.queries[0].id]
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from nvcc_pt import validate as check
from nvcc_pt.errors import DataError, InputError
from nvcc_pt.files import write_text
from nvcc_pt.prompt.lamp import LampDataset, load_lamp

WORDNET_DOMAINS: dict[str, tuple[str, ...]] = {
    "living": ("animal", "plant", "person"),
    "things": ("artifact", "food", "substance"),
    "mind": ("cognition", "feeling", "communication"),
    "world": ("location", "time", "event"),
}
"""WordNet lexicographer noun categories (`nvcc_pt.text.NOUN_CATEGORIES`) grouped into domains."""

FORTUNE_DIR = Path("/usr/share/games/fortunes")
"""Where Debian's `fortunes` package installs the quote files."""

FORTUNE_DOMAINS: dict[str, tuple[str, ...]] = {
    "technical": ("computers", "science", "medicine"),
    "home": ("love", "food", "pets"),
    "public": ("politics", "law", "education"),
    "leisure": ("sports", "art", "literature"),
}
"""`fortune` files (each one a category) grouped into domains."""

TASKS = ("wordnet", "fortunes")
PACKAGES = {"wordnet": "wordnet-base", "fortunes": "fortunes"}


@dataclass
class RealText:
    """A generated task read back: the LaMP dataset (labels set to the task's), domains and each query's domain."""

    name: str
    dataset: LampDataset
    domains: dict[str, tuple[str, ...]]
    query_domains: dict[str, str]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.dataset.task.labels


def _clean(text: str, max_words: int) -> str:
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    return " ".join(words[:max_words])


def wordnet_pool(max_words: int = 16, path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Category -> glosses (the definition before any quoted example, at most `max_words` words)."""
    from nvcc_pt.text import wordnet_glosses

    try:
        glosses = wordnet_glosses(path=path)
    except DataError as e:
        raise DataError(f"the 'wordnet' task needs WordNet's noun glosses: {e}") from None
    wanted = {c for cats in WORDNET_DOMAINS.values() for c in cats}
    pool: dict[str, list[str]] = {c: [] for c in sorted(wanted)}
    for category, gloss in glosses:
        definition = gloss.split(';')[0].split('"')[0].strip()
        if category in wanted and len(definition.split()) >= 3:
            pool[category].append(_clean(definition, max_words))
    return pool


def _fortunes(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    quotes = []
    for entry in text.split("\n%\n"):
        body = [line for line in entry.strip("%\n").splitlines() if not line.strip().startswith("--")]
        quote = " ".join(line.strip() for line in body).strip()
        if len(quote.split()) >= 4:
            quotes.append(quote)
    return quotes


def fortune_pool(max_words: int = 16, folder: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Category (fortune file) -> quotes, each cut to `max_words` words."""
    folder = FORTUNE_DIR if folder is None else Path(folder)
    pool = {}
    for cats in FORTUNE_DOMAINS.values():
        for c in cats:
            f = folder / c
            if not f.is_file():
                raise DataError(f"fortune file {f} does not exist; the 'fortunes' task needs Debian's fortunes "
                                "package: apt-get install fortunes (or pass the folder that holds the files)")
            pool[c] = [_clean(q, max_words) for q in _fortunes(f)]
    return pool


def _pool(task: str, max_words: int, source: str | os.PathLike | None) -> tuple[dict, dict]:
    if task == "wordnet":
        return wordnet_pool(max_words, source), WORDNET_DOMAINS
    if task == "fortunes":
        return fortune_pool(max_words, source), FORTUNE_DOMAINS
    raise InputError(f"unknown real-text task {task!r}; choose one of {TASKS}")


def write_realtext(out: str | os.PathLike, task: str = "wordnet", *, users: int = 6, buffers: int = 2,
                   buffer_size: int = 25, queries_per_user: int = 16, max_words: int = 16, seed: int = 0,
                   source: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write a LaMP-2-format task of `users` users to `out`; returns the questions and outputs paths.

    Each user walks `buffers + 1` domains (no domain twice in a row); its history is `buffers` buffers of
    `buffer_size` items, and its `queries_per_user` queries alternate between the newest buffer's two domains.
    No text is used twice. `source` replaces the default data.noun file or fortune folder.
    """
    where = "write_realtext"
    for name, value, lo in (("users", users, 1), ("buffers", buffers, 1), ("buffer_size", buffer_size, 2),
                            ("queries_per_user", queries_per_user, 1), ("max_words", max_words, 3)):
        check.integer(name, value, lo=lo, hi=10**6, where=where)
    check.seed("seed", seed, where=where)
    pool, domains = _pool(task, max_words, source)
    rng = random.Random(seed)
    for texts in pool.values():
        rng.shuffle(texts)
    names = sorted(domains)

    def draw(domain: str) -> tuple[str, str]:
        category = rng.choice(domains[domain])
        if not pool[category]:
            raise DataError(f"the {task} source ran out of '{category}' texts; ask for fewer users or queries")
        return pool[category].pop(), category

    questions, golds = [], []
    for u in range(users):
        walk = [rng.choice(names)]
        while len(walk) < buffers + 1:
            walk.append(rng.choice([d for d in names if d != walk[-1]]))
        history = []
        for b in range(buffers):
            for i in range(buffer_size):
                domain = walk[b] if i < buffer_size // 2 else walk[b + 1]
                text, category = draw(domain)
                history.append({"id": f"u{u}-h{len(history)}", "description": text, "tag": category,
                                "domain": domain})
        for j in range(queries_per_user):
            text, category = draw(walk[-2 + j % 2])
            questions.append({"id": f"u{u}-q{j}", "input": text, "profile": history})
            golds.append({"id": f"u{u}-q{j}", "output": category})
    out = Path(out)
    q, o = out / "questions.json", out / "outputs.json"
    write_text(q, json.dumps(questions, indent=1), "LaMP questions file")
    write_text(o, json.dumps({"task": "LaMP_2", "golds": golds}, indent=1), "LaMP outputs file")
    labels = [c for d in names for c in domains[d]]
    write_text(out / "labels.json", json.dumps({"task": task, "labels": labels, "domains": domains}, indent=1),
               "labels file")
    return q, o


def load_realtext(folder: str | os.PathLike) -> RealText:
    """Read a task that `write_realtext` wrote: the LaMP files through `load_lamp`, labels and domains beside them."""
    folder = Path(folder)
    meta_file = folder / "labels.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        labels, domains, name = tuple(meta["labels"]), {d: tuple(c) for d, c in meta["domains"].items()}, meta["task"]
    except OSError as e:
        raise DataError(f"cannot read {meta_file} ({e.strerror or e}); write the task with write_realtext") from e
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{meta_file} is not a labels file of write_realtext ({type(e).__name__}: {e})") from e
    dataset = load_lamp(folder / "questions.json", folder / "outputs.json")
    dataset.task = replace(dataset.task, labels=labels, name=f"{name} categorization")
    of = {c: d for d, cats in domains.items() for c in cats}
    unknown = sorted({q.output for q in dataset.queries} - set(of))
    if unknown:
        raise DataError(f"{folder}: gold labels {unknown[:5]} are in no domain of {meta_file}")
    return RealText(name, dataset, domains, {q.id: of[q.output] for q in dataset.queries})
