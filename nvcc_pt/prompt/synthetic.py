"""Synthetic LaMP-style data: several users whose domains shift over time, and a word-level tokenizer for them.

The world has `n_domains` domains. Each domain has its own topic words and its own rule mapping a
cue word in the input to the output label (the user's "preference" in that domain). An input is a few
topic words of its domain with one cue word among them (`n_cues` cue classes), as in LaMP-2 (`description: ...` -> tag) or
LaMP-3 (review text -> score). A user's history visits a few domains one after another, so the
domain shifts over time; the user's queries come from the domains in that history.

`pretraining_texts` gives text for training a small LM from scratch so it has something to adapt:
each sequence starts with `prefix_len` topic words of a domain, then an input whose topic words come
from random domains, then the label the *prefix's* domain rule gives. The LM thus learns to read the
domain from the prefix, and a soft prompt of `prefix_len` virtual tokens can take the prefix's place.

Example:
    >>> world = SyntheticWorld(task=2, seed=0)
    >>> world.write("data/")            # data/questions.json, data/outputs.json in LaMP's format
    >>> tok = world.tokenizer()
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from nvcc_pt import validate as check
from nvcc_pt.errors import InputError
from nvcc_pt.prompt.lamp import LAMP2_TAGS, Example, LampDataset, LampQuery, get_task

ANSWER = "Answer:"
"""The word that ends every LM prompt; the output follows it."""


MAX_COUNT = 100_000
"""Largest domain, user, history or word count: a synthetic world that size is already a typing error."""


def lm_prompt(text: str) -> str:
    """The text a causal LM is given for an input: the input, then `Answer:`."""
    return f"{text} {ANSWER}"


class SyntheticWorld:
    """Domains, rules and users of a synthetic LaMP task (2: tagging, 3: rating)."""

    def __init__(self, task: int = 2, *, n_domains: int = 6, words_per_domain: int = 10, n_users: int = 3,
                 domains_per_user: int = 3, history_len: int = 50, queries_per_user: int = 30, words_per_input: int = 6,
                 n_cues: int = 2, prefix_len: int = 8, seed: int = 0):
        counts = {"n_domains": (n_domains, 1), "words_per_domain": (words_per_domain, 1), "n_users": (n_users, 0),
                  "domains_per_user": (domains_per_user, 1), "history_len": (history_len, 0),
                  "queries_per_user": (queries_per_user, 0), "words_per_input": (words_per_input, 1),
                  "n_cues": (n_cues, 1), "prefix_len": (prefix_len, 0)}
        for name, (value, lo) in counts.items():
            check.integer(name, value, lo=lo, hi=MAX_COUNT, where="SyntheticWorld")
        check.seed("seed", seed, where="SyntheticWorld")
        if words_per_input - 1 > words_per_domain:
            raise InputError(f"SyntheticWorld: words_per_input={words_per_input} needs words_per_domain >= "
                             f"{words_per_input - 1} topic words to draw from, got {words_per_domain}")
        self.task = get_task(task)
        if self.task.task_id not in (2, 3):
            raise InputError(f"the synthetic generator writes LaMP-2 and LaMP-3 style data; got task {task}")
        if domains_per_user > n_domains or domains_per_user < 1:
            raise InputError(f"domains_per_user={domains_per_user} must be in 1..n_domains={n_domains}")
        rng = random.Random(seed)
        self.labels = ("sci-fi", "comedy", "action", "fantasy") if self.task.task_id == 2 else self.task.labels
        n = len(self.labels)
        if not 1 <= n_cues <= n:
            raise InputError(f"n_cues={n_cues} must be in 1..{n} (the number of labels)")
        self.topics = [[f"t{d}w{j}" for j in range(words_per_domain)] for d in range(n_domains)]
        self.cues = [[f"c{c}a", f"c{c}b"] for c in range(n_cues)]
        # Distinct rules (cue class -> label) per domain: a domain's preferences differ from the others'.
        perms: list[tuple[int, ...]] = []
        while len(perms) < min(n_domains, math.perm(n, n_cues)):
            p = tuple(rng.sample(range(n), n_cues))
            if p not in perms:
                perms.append(p)
        self.rules = [perms[d % len(perms)] for d in range(n_domains)]
        self.words_per_input, self.prefix_len, self.seed = words_per_input, prefix_len, seed
        self.n_domains = n_domains
        self.users = []
        for _ in range(n_users):
            doms = rng.sample(range(n_domains), domains_per_user)
            seg = [history_len // domains_per_user + (i < history_len % domains_per_user) for i in range(domains_per_user)]
            history = [(d, self._sample(rng, d)) for d, k in zip(doms, seg) for _ in range(k)]
            queries = [(d, self._sample(rng, d)) for d in (rng.choice(doms) for _ in range(queries_per_user))]
            self.users.append({"domains": doms, "history": history, "queries": queries})

    def _text(self, rng: random.Random, topic_domain: int, cue: int) -> str:
        words = rng.sample(self.topics[topic_domain], self.words_per_input - 1)
        words.insert(rng.randrange(len(words) + 1), rng.choice(self.cues[cue]))
        lead = "description:" if self.task.task_id == 2 else "review:"
        return " ".join([lead, *words])

    def _sample(self, rng: random.Random, domain: int) -> Example:
        cue = rng.randrange(len(self.cues))
        return Example(self._text(rng, domain, cue), self.labels[self.rules[domain][cue]], meta={"domain": domain})

    def dataset(self) -> LampDataset:
        """All users' queries, each carrying its user's history as the profile."""
        queries = []
        for u, user in enumerate(self.users):
            profile = tuple(Example(e.input, e.output, f"{u}-h{i}", {"domain": d}) for i, (d, e) in enumerate(user["history"]))
            queries += [LampQuery(f"{u}-q{i}", e.input, e.output, profile, {"domain": d})
                        for i, (d, e) in enumerate(user["queries"])]
        return LampDataset(self.task, queries)

    def query_domains(self) -> dict[str, int]:
        """The true domain of every query id (for measuring retrieval)."""
        return {f"{u}-q{i}": d for u, user in enumerate(self.users) for i, (d, _) in enumerate(user["queries"])}

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write `questions.json` and `outputs.json` in LaMP's format; returns their paths."""
        from nvcc_pt.prompt.lamp import write_lamp

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        q, o = d / "questions.json", d / "outputs.json"
        write_lamp(self.dataset(), q, o)
        return q, o

    def pretraining_texts(self, n: int, *, seed: int = 1, no_prefix: float = 0.1) -> list[str]:
        """`n` LM training sequences: a domain's prefix, an input with topic words of random domains, the label.

        A fraction `no_prefix` has no prefix and a random label, so the LM learns that without the
        prefix it cannot know the rule.
        """
        check.integer("n", n, lo=0, hi=10**7, where="pretraining_texts")
        check.seed("seed", seed, where="pretraining_texts")
        check.real("no_prefix", no_prefix, lo=0.0, hi=1.0, where="pretraining_texts")
        rng = random.Random(seed)
        texts = []
        for _ in range(n):
            d, cue = rng.randrange(self.n_domains), rng.randrange(len(self.cues))
            text = self._text(rng, rng.randrange(self.n_domains), cue)
            if rng.random() < no_prefix:
                texts.append(f"{lm_prompt(text)} {rng.choice(self.labels)}")
                continue
            prefix = " ".join(rng.choice(self.topics[d]) for _ in range(self.prefix_len))
            texts.append(f"{prefix} {lm_prompt(text)} {self.labels[self.rules[d][cue]]}")
        return texts

    def tokenizer(self):
        """A word-level Hugging Face fast tokenizer over this world's words (save it next to the model)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = ["<pad>", "<eos>", "<unk>", "description:", "review:", ANSWER, *(w for t in self.topics for w in t), *(w for c in self.cues for w in c),
                 *(w for label in (*LAMP2_TAGS, *self.task.labels, *self.labels) for w in label.split())]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
