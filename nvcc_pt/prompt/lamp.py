"""LaMP data (Salemi et al., "LaMP: When Large Language Models Meet Personalization", ACL 2024).

LaMP ships, per task and split, a questions file (a JSON list of `{"id", "input", "profile": [...]}`,
one entry per user query, the profile holding that user's history) and an outputs file
(`{"task": "LaMP_N", "golds": [{"id", "output"}]}`). The data is not redistributable; point
`load_lamp` at your copy. `nvcc_pt.prompt.synthetic` writes files in the same format.

Example:
    >>> ds = load_lamp("LaMP_2/dev_questions.json", "LaMP_2/dev_outputs.json", task=2)
    >>> ds.queries[0].input, ds.queries[0].output, ds.task.metrics
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nvcc_pt.errors import DataError, InputError
from nvcc_pt.files import write_text

LAMP2_TAGS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy", "classic",
              "psychology", "fantasy", "romance", "thought-provoking", "social commentary", "violence", "true story")
"""The 15 movie tags of LaMP-2 (personalized movie tagging)."""


@dataclass(frozen=True)
class LampTask:
    """What one LaMP task asks and how it is scored."""

    task_id: int
    """LaMP task number (1-7)."""
    name: str
    """What the task is."""
    kind: str
    """`classification`, `rating` or `generation`."""
    metrics: tuple[str, ...]
    """Metric names of `nvcc_pt.prompt.metrics.METRICS`, the first one the headline metric."""
    labels: tuple[str, ...] = ()
    """Candidate outputs of a classification or rating task (scored by likelihood); empty for generation."""
    profile_input: tuple[str, ...] = ()
    """Profile fields that make a history item's input, joined by a space."""
    profile_output: str = ""
    """Profile field that is a history item's output."""


TASKS: dict[int, LampTask] = {t.task_id: t for t in (
    LampTask(1, "personalized citation identification", "classification", ("accuracy", "f1"), ("[1]", "[2]"),
             ("abstract",), "title"),
    LampTask(2, "personalized movie tagging", "classification", ("accuracy", "f1"), LAMP2_TAGS,
             ("description",), "tag"),
    LampTask(3, "personalized product rating", "rating", ("mae", "rmse"), ("1", "2", "3", "4", "5"),
             ("text",), "score"),
    LampTask(4, "personalized news headline generation", "generation", ("rouge1", "rougeL"), (),
             ("text",), "title"),
    LampTask(5, "personalized scholarly title generation", "generation", ("rouge1", "rougeL"), (),
             ("abstract",), "title"),
    LampTask(7, "personalized tweet paraphrasing", "generation", ("rouge1", "rougeL"), (), (), "text"),
)}


def get_task(task_id: int | str) -> LampTask:
    """The task with number `task_id` (`2`, `"2"` or `"LaMP_2"`)."""
    try:
        if isinstance(task_id, bool) or not isinstance(task_id, (int, str)):
            raise TypeError
        return TASKS[int(str(task_id).removeprefix("LaMP_").removeprefix("lamp"))]
    except (TypeError, ValueError, KeyError):
        raise DataError(f"unknown LaMP task {task_id!r:.80}; supported tasks are {sorted(TASKS)}") from None


@dataclass(frozen=True)
class Example:
    """One (input, output) pair: a query with its gold output, or a history item from a user's profile."""

    input: str
    output: str
    id: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("input", "output", "id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InputError(f"Example: {name}={value!r:.80} must be a string (got {type(value).__name__})")
        if not isinstance(self.meta, dict):
            raise InputError(f"Example: meta={self.meta!r:.80} must be a dict")


@dataclass(frozen=True)
class LampQuery:
    """One LaMP question: the input, its gold output (when the outputs file is given) and the user's history."""

    id: str
    input: str
    output: str | None
    profile: tuple[Example, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    """The question record's other fields (LaMP has none; generated data adds `domain`)."""


@dataclass
class LampDataset:
    """The queries of one LaMP task and split."""

    task: LampTask
    queries: list[LampQuery]

    def examples(self) -> list[Example]:
        """The queries as examples (those with a gold output)."""
        return [Example(q.input, q.output, q.id) for q in self.queries if q.output is not None]


def _path(value, name: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value) or "\0" in str(os.fspath(value)):
        raise DataError(f"load_lamp: {name}={value!r:.80} must be the path of a LaMP JSON file (str or pathlib.Path)")
    return Path(value)


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read LaMP file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"LaMP file {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                        "LaMP files are UTF-8 JSON") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"LaMP file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except RecursionError:
        raise DataError(f"LaMP file {path} nests JSON too deeply to be a LaMP file (lists of flat records)") from None


def _text(value, field_name: str, where: str) -> str:
    """A record field as text: a string, or a finite number (LaMP writes some scores as numbers); else `DataError`."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise DataError(f"{where}: field {field_name!r} is {value!r:.80}; it must be a string (or a finite number)")


def _record_id(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: 'id' is {value!r:.80}; it must be a string or an integer")
    return str(value)


def profile_example(task: LampTask, item: dict, where: str) -> Example:
    """A profile (history) item as an (input, output) pair for prompt tuning."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: profile item is {type(item).__name__}, expected an object")
    missing = [k for k in (*task.profile_input, task.profile_output) if k not in item]
    if missing:
        raise DataError(f"{where}: profile item {item.get('id', '?')!r} lacks field(s) {missing} that LaMP-{task.task_id} "
                        f"profiles carry ({list(task.profile_input) + [task.profile_output]})")
    text = " ".join(_text(item[k], k, where) for k in task.profile_input)
    return Example(text, _text(item[task.profile_output], task.profile_output, where),
                   _record_id(item["id"], where) if "id" in item else "",
                   {k: v for k, v in item.items() if k not in (*task.profile_input, task.profile_output, "id")})


def load_lamp(questions: str | Path, outputs: str | Path | None = None, task: int | str | None = None) -> LampDataset:
    """Read a LaMP questions file and, optionally, its outputs file.

    The task comes from `task` or from the outputs file's `"task"` field. Any record that does not
    parse raises `DataError` naming the file and the record.
    """
    qpath = _path(questions, "questions")
    qdoc = _read_json(qpath)
    golds: dict[str, str] = {}
    if outputs is not None:
        opath = _path(outputs, "outputs")
        odoc = _read_json(opath)
        if not isinstance(odoc, dict) or not isinstance(odoc.get("golds"), list):
            raise DataError(f"LaMP outputs file {opath} must be an object with a 'golds' list")
        if task is None and "task" in odoc:
            task = odoc["task"]
        for i, g in enumerate(odoc["golds"]):
            if not isinstance(g, dict) or "id" not in g or "output" not in g:
                raise DataError(f"{opath}: gold record {i} must be an object with 'id' and 'output', got {g!r:.80}")
            where = f"{opath}, gold record {i}"
            golds[_record_id(g["id"], where)] = _text(g["output"], "output", where)
    if task is None:
        raise DataError(f"the LaMP task of {qpath} is unknown; pass task= (one of {sorted(TASKS)}) or an outputs file")
    spec = get_task(task)
    if not isinstance(qdoc, list):
        raise DataError(f"LaMP questions file {qpath} must hold a JSON list of questions, got {type(qdoc).__name__}")
    queries = []
    for i, q in enumerate(qdoc):
        where = f"{qpath}, record {i}"
        if not isinstance(q, dict) or "id" not in q or "input" not in q:
            raise DataError(f"{where}: a question needs 'id' and 'input', got {q!r:.80}")
        profile = q.get("profile", [])
        if not isinstance(profile, list):
            raise DataError(f"{where} (id {q['id']!r}): 'profile' must be a list")
        qid = _record_id(q["id"], where)
        if outputs is not None and qid not in golds:
            raise DataError(f"{where}: question id {qid!r} has no gold output in {outputs}")
        queries.append(LampQuery(qid, _text(q["input"], "input", where), golds.get(qid),
                                 tuple(profile_example(spec, it, f"{where} (id {qid!r})") for it in profile),
                                 {k: v for k, v in q.items() if k not in ("id", "input", "profile")}))
    return LampDataset(spec, queries)


def query_domains(dataset: LampDataset) -> dict[str, object] | None:
    """The true domain of each query whose record carries a `domain` field (generated data does; LaMP does not),
    for measuring retrieval; None when no query carries one.

    Example:
        >>> query_domains(load_lamp("questions.json", "outputs.json"))
        {'0-q0': 1, '0-q1': 0, ...}
    """
    found = {q.id: q.meta["domain"] for q in dataset.queries if "domain" in q.meta}
    return found or None


def write_lamp(dataset: LampDataset, questions: str | Path, outputs: str | Path, *, profile_items: list[list[dict]]
               | None = None) -> None:
    """Write `dataset` as a LaMP questions file and outputs file (profiles from `profile_items` when given)."""
    task = dataset.task
    qdoc = []
    for i, q in enumerate(dataset.queries):
        if profile_items is not None:
            profile = profile_items[i]
        else:
            profile = [{"id": e.id, **({task.profile_input[0]: e.input} if task.profile_input else {}),
                        task.profile_output: e.output, **e.meta} for e in q.profile]
        qdoc.append({**q.meta, "id": q.id, "input": q.input, "profile": profile})
    odoc = {"task": f"LaMP_{task.task_id}", "golds": [{"id": q.id, "output": q.output} for q in dataset.queries]}
    write_text(questions, json.dumps(qdoc, indent=1), "LaMP questions file")
    write_text(outputs, json.dumps(odoc, indent=1), "LaMP outputs file")
