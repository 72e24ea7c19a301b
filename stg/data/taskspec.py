"""The task-spec mini-language: turn a ``ClassData`` into a ``TaskSet`` of binary tasks.

Grammar (terms separated by ``;``, whitespace around terms ignored)::

    spec   := term (";" term)*
    term   := "ovr:all"                      one-vs-rest task per class, named after the class
            | "ovr:" CLASS ("," CLASS)*      one-vs-rest for the listed classes
            | "union:" NAME "=" CLASS ("," CLASS)*   positive iff the class is listed
            | "not:" NAME                    complement of an earlier task NAME, named not_NAME
            | "random"                       Bernoulli(0.5) label per image (by seed), named random
            | "flipped"                      per-image flag (by seed); flagged images are flipped
                                             upside down in every split; named upside_down
            | PRESET                         a named preset, e.g. paper10, paper15, composite

Presets: ``paper10`` (CIFAR-10's 10 one-vs-rest tasks), ``paper15`` (the STG-MTL paper's 15
CIFAR-10 tasks in the paper's order), ``composite`` (Fashion-MNIST: 10 one-vs-rest, footwear,
not_footwear, random), ``tag9`` (CelebA: the 9 attributes TAG uses).

Multi-label data (``stg.data.multilabel.MultiLabelData``: several binary labels per image, NaN
where missing) has attributes instead of classes: ``attr:all`` / ``attr:A1,A2`` make one task per
attribute; ``union:NAME=A1,A2`` is the OR of attributes (1 if any member is 1, 0 if all are 0,
missing otherwise); ``not:NAME`` keeps missing labels missing; ``random`` and ``flipped`` work as
above; ``ovr:`` is an error (there are no classes). With an official validation split in the data
the val split is that one (``val_fraction`` is not used); ``limit`` then caps train at ``limit`` and
val and test at ``max(limit // 4, 2)`` images each (a seeded random subset).

Splits: the loader's train rows are permuted with ``torch.Generator().manual_seed(seed)``; the
first ``round(val_fraction * N)`` go to val, the rest to train (each split keeps its rows in
ascending loader order). The test split is the loader's test set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from stg.errors import StgError
from stg.data.multilabel import MultiLabelData, kleene_or
from stg.data.taskset import ClassData, Reference, Split, TaskSet

GRAMMAR = (
    "spec = terms separated by ';': ovr:all | ovr:C1,C2 | union:NAME=C1,C2 | not:NAME | random | flipped "
    "| preset (" + ", ".join(("paper10", "paper15", "composite")) + ")"
)
GRAMMAR_MULTILABEL = (
    "spec on multi-label data = terms separated by ';': attr:all | attr:A1,A2 | union:NAME=A1,A2 | not:NAME "
    "| random | flipped | preset (tag9 on celeba)"
)
CELEBA_TAG9 = (
    "5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee", "Mustache", "No_Beard",
    "Rosy_Cheeks", "Wearing_Hat",
)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FASHION_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)


@dataclass(frozen=True)
class Preset:
    """A named spec, valid only for datasets that have all of ``classes``."""

    name: str
    classes: tuple[str, ...]
    dataset: str
    spec: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("paper10", CIFAR10_CLASSES, "cifar10", "ovr:" + ",".join(CIFAR10_CLASSES)),
        Preset(
            "paper15",
            CIFAR10_CLASSES,
            "cifar10",
            "ovr:" + ",".join(CIFAR10_CLASSES)
            + ";union:living=bird,cat,deer,dog,frog,horse"
            + ";union:odd=automobile,cat,dog,horse,truck"
            + ";flipped;not:living;random",
        ),
        Preset(
            "composite",
            FASHION_CLASSES,
            "fashion-mnist",
            "ovr:all;union:footwear=sandal,sneaker,ankle_boot;not:footwear;random",
        ),
        Preset("tag9", CELEBA_TAG9, "celeba", "attr:" + ",".join(CELEBA_TAG9)),
    )
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
# Independent random streams, combined with the user's seed through numpy's SeedSequence.
_STREAM_RANDOM, _STREAM_FLIP, _STREAM_LIMIT = 1, 2, 3
_SPLIT_TRAIN, _SPLIT_TEST, _SPLIT_VAL = 0, 1, 2


@dataclass(frozen=True)
class TaskDef:
    """One parsed task. kind: ovr | attr | union | not | random | flipped.

    classes: class indices whose images are positive (ovr/union), or on multi-label data the
    attribute indices (attr: one; union: its members); of: the complemented task (not).
    """

    name: str
    kind: str
    classes: tuple[int, ...] = ()
    of: str = ""

    def kind_record(self) -> dict[str, str]:
        """How run.json records this task's kind: {"kind": ...}, plus "of" for a complement."""
        return {"kind": self.kind, "of": self.of} if self.kind == "not" else {"kind": self.kind}


def safe_name(name: str) -> str:
    """A task-name-safe version of a class name: [A-Za-z0-9_.-], at most 64 chars."""
    out = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name.strip()).strip("_") or "class"
    if not re.match(r"[A-Za-z0-9_]", out[0]):
        out = "_" + out
    return out[:64]


def _few(names: tuple[str, ...] | list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _class_lookup(class_names: tuple[str, ...]) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for i, c in enumerate(class_names):
        lookup.setdefault(safe_name(c), i)
    for i, c in enumerate(class_names):
        lookup[c] = i
    return lookup


def _check_name(name: str, term: str) -> str:
    if not _SAFE_NAME.match(name):
        raise StgError(
            f"bad task name {name!r} in term {term!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "(not starting with . or -)"
        )
    return name


def expand_presets(spec: str, class_names: tuple[str, ...], grammar: str = GRAMMAR) -> list[str]:
    """The spec's terms, with presets replaced by their terms. Empty terms are skipped."""
    terms: list[str] = []
    for raw in spec.split(";"):
        term = raw.strip()
        if not term:
            continue
        preset = PRESETS.get(term)
        if preset is None:
            terms.append(term)
            continue
        missing = [c for c in preset.classes if c not in class_names]
        if missing:
            raise StgError(
                f"preset {term!r} is for {preset.dataset} (needs {'attributes' if preset.spec.startswith('attr:') else 'classes'} "
                f"{_few(list(preset.classes), 5)}); "
                f"this dataset lacks {_few(missing, 3)}"
            )
        terms.extend(t.strip() for t in preset.spec.split(";"))
    if not terms:
        raise StgError(f"empty task spec: {grammar}")
    return terms


def parse_spec(spec: str, class_names: tuple[str, ...], *, multilabel: bool = False) -> list[TaskDef]:
    """Parse ``spec`` against the dataset's classes (with ``multilabel``: its attributes, where
    ``attr:`` replaces ``ovr:``); raises StgError on any bad term."""
    grammar = GRAMMAR_MULTILABEL if multilabel else GRAMMAR
    what, whats = ("attribute", "attributes") if multilabel else ("class", "classes")
    lookup = _class_lookup(class_names)
    tasks: list[TaskDef] = []
    seen: set[str] = set()

    def classes_of(term: str, text: str) -> tuple[int, ...]:
        names = [c.strip() for c in text.split(",")]
        if not text.strip() or any(not c for c in names):
            raise StgError(f"malformed task spec term {term!r} (empty {what} name): {grammar}")
        out = []
        for c in names:
            if c not in lookup:
                raise StgError(
                    f"unknown {what} {c!r} in task spec term {term!r}; valid {whats}: {_few(class_names)}"
                )
            out.append(lookup[c])
        if len(set(out)) != len(out):
            raise StgError(f"{what} listed twice in task spec term {term!r}")
        return tuple(out)

    def add(task: TaskDef, term: str) -> None:
        if task.name in seen:
            raise StgError(f"duplicate task name {task.name!r} (from term {term!r}): task names must be unique")
        seen.add(task.name)
        tasks.append(task)

    for term in expand_presets(spec, class_names, grammar):
        kind, sep, arg = term.partition(":")
        kind, arg = kind.strip(), arg.strip()
        if multilabel and kind == "ovr" and sep:
            raise StgError(
                f"term {term!r}: one-vs-rest needs class labels, and this dataset is multi-label (each "
                f"attribute is already a binary task): use attr:all or attr:A1,A2 ({_few(class_names, 4)})"
            )
        if not multilabel and kind == "attr" and sep:
            raise StgError(f"term {term!r}: attr: is for multi-label data; this dataset has classes: use ovr: ({grammar})")
        if kind == "attr" and sep:
            idx = tuple(range(len(class_names))) if arg == "all" else classes_of(term, arg)
            for i in idx:
                add(TaskDef(_check_name(safe_name(class_names[i]), term), "attr", (i,)), term)
        elif kind == "ovr" and sep:
            idx = tuple(range(len(class_names))) if arg == "all" else classes_of(term, arg)
            for i in idx:
                add(TaskDef(_check_name(safe_name(class_names[i]), term), "ovr", (i,)), term)
        elif kind == "union" and sep:
            name, eq, members = arg.partition("=")
            if not eq or not name.strip():
                raise StgError(f"malformed task spec term {term!r} (expected union:NAME=C1,C2): {grammar}")
            add(TaskDef(_check_name(name.strip(), term), "union", classes_of(term, members)), term)
        elif kind == "not" and sep:
            if arg not in seen:
                raise StgError(
                    f"term {term!r} complements unknown task {arg!r}: it must name an earlier task "
                    f"(so far: {_few(sorted(seen), 5) or 'none'})"
                )
            add(TaskDef(_check_name("not_" + arg, term), "not", of=arg), term)
        elif term == "random":
            add(TaskDef("random", "random"), term)
        elif term == "flipped":
            add(TaskDef("upside_down", "flipped"), term)
        else:
            raise StgError(f"malformed task spec term {term!r}: {grammar}")
    return tasks


# ----------------------------------------------------------------------------------- splits


def _bernoulli(seed: int, stream: int, split: int, n: int) -> torch.Tensor:
    """(n,) bool, fair coin per loader row, fixed by (seed, stream, split)."""
    rng = np.random.default_rng([seed, stream, split])
    return torch.from_numpy(rng.random(n) < 0.5)


def stratified_subset(classes: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Sorted (min(limit, N),) int64 rows keeping class proportions; deterministic by seed.

    Each row gets the key (rank within its class in a seeded shuffle + 0.5) / class size; the
    ``limit`` smallest keys give a proportional sample in which every class appears early.
    """
    n = int(classes.shape[0])
    if limit >= n:
        return torch.arange(n)
    rng = np.random.default_rng([seed, _STREAM_LIMIT, n])
    perm = rng.permutation(n)
    cls = classes.numpy()[perm]
    order = np.argsort(cls, kind="stable")
    counts = np.bincount(cls)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    key = (rank + 0.5) / counts[cls]
    chosen = perm[np.argsort(key, kind="stable")[:limit]]
    return torch.from_numpy(np.sort(chosen)).long()


def split_rows(n: int, seed: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_rows, val_rows) positions in 0..n-1, each sorted; val = first round(f*n) of a seeded permutation."""
    if not 0.0 <= val_fraction < 1.0:
        raise StgError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _labels(
    tasks: list[TaskDef], classes: torch.Tensor, rows: torch.Tensor, seed: int, split: int, pool: int
) -> torch.Tensor:
    """(N, T) float32 labels for images of ``classes`` (N,) at loader rows ``rows`` (N,)."""
    cols: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.kind in ("ovr", "union"):
            col = torch.isin(classes, torch.tensor(t.classes, dtype=classes.dtype))
        elif t.kind == "not":
            col = ~cols[t.of]
        else:
            stream = _STREAM_RANDOM if t.kind == "random" else _STREAM_FLIP
            col = _bernoulli(seed, stream, split, pool)[rows]
        cols[t.name] = col
    if not tasks:
        return torch.zeros(len(classes), 0)
    return torch.stack([cols[t.name] for t in tasks], 1).float()


def _make_split(
    images: torch.Tensor, classes: torch.Tensor, rows: torch.Tensor, tasks: list[TaskDef], seed: int, split: int
) -> Split:
    pool = int(images.shape[0])
    imgs = images[rows]
    cls = classes[rows]
    labels = _labels(tasks, cls, rows, seed, split, pool)
    flip_cols = [i for i, t in enumerate(tasks) if t.kind == "flipped"]
    if flip_cols:
        flag = labels[:, flip_cols[0]].bool()
        imgs[flag] = imgs[flag].flip(-2)
    return Split(images=imgs.contiguous(), labels=labels, classes=cls.long(), index=rows.long())


def _check_tasks(task_names: tuple[str, ...], labels: torch.Tensor) -> None:
    """StgError for a task with no positive or no negative among its labelled training images."""
    n = labels.shape[0]
    pos = labels.nansum(0)
    labelled = (~torch.isnan(labels)).sum(0)
    for name, p, m in zip(task_names, pos.tolist(), labelled.tolist()):
        of = f"{n} images" if m == n else f"{m} labelled of {n} images"
        if m == 0:
            raise StgError(f"task {name!r} has no labelled image in the train split ({n} images)")
        if p == 0:
            raise StgError(f"task {name!r} is empty: no positive image in the train split ({of})")
        if p == m:
            raise StgError(f"task {name!r} is constant: every labelled train image ({of}) is positive")


def pos_weight_of(labels: torch.Tensor) -> torch.Tensor:
    """(T,) float32 negatives / positives of each task among its labelled rows of (N, T) labels
    (NaN = missing); with no NaN, bitwise ``(N - positives) / positives``."""
    positives = labels.nansum(0)
    labelled = (~torch.isnan(labels)).sum(0)
    return ((labelled - positives) / positives).float()


# ------------------------------------------------------------------------------- references


def task_references(
    class_references: dict[str, Reference], class_names: tuple[str, ...], tasks: list[TaskDef]
) -> dict[str, Reference]:
    """Map each class reference onto tasks: ovr -> its class's group; a union inside one group -> that
    group; anything else -> a singleton group named after the task. Empty groups are dropped."""
    out: dict[str, Reference] = {}
    for ref_name, groups in class_references.items():
        group_of = {c: g for g, members in groups.items() for c in members}
        result: dict[str, list[str]] = {g: [] for g in groups}
        for t in tasks:
            gs = {group_of.get(class_names[i]) for i in t.classes} if t.kind in ("ovr", "attr", "union") else {None}
            if len(gs) == 1 and None not in gs:
                result[gs.pop()].append(t.name)
            else:
                g = t.name
                while g in result:
                    g = g + "_"
                result[g] = [t.name]
        out[ref_name] = {g: m for g, m in result.items() if m}
    return out


# ---------------------------------------------------------------------------------- builder


def build_taskset(
    data: ClassData | MultiLabelData,
    spec: str | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> TaskSet:
    """The task set defined by ``spec`` (default: ``data.default_tasks``) on ``data``.

    limit: keep a class-stratified subset of at most ``limit`` loader train rows (split into
    train/val afterwards) and at most ``max(limit // 4, n_classes)`` test rows; deterministic by seed.
    Raises StgError on a bad spec or an empty/constant task in the train split.
    A ``MultiLabelData`` is built by ``build_multilabel_taskset`` (see the module docstring).
    """
    if isinstance(data, MultiLabelData):
        return build_multilabel_taskset(data, spec, seed=seed, val_fraction=val_fraction, limit=limit)
    text = data.default_tasks if spec is None or not spec.strip() else spec
    tasks = parse_spec(text, data.class_names)
    task_names = tuple(t.name for t in tasks)

    pool = data.train_classes
    pool_rows = torch.arange(int(pool.shape[0]))
    test_rows = torch.arange(int(data.test_classes.shape[0]))
    if limit is not None:
        if limit < 2:
            raise StgError(f"limit must be at least 2, got {limit}")
        pool_rows = stratified_subset(pool, limit, seed)
        test_limit = max(limit // 4, len(data.class_names))
        test_rows = stratified_subset(data.test_classes, test_limit, seed)
    train_pos, val_pos = split_rows(len(pool_rows), seed, val_fraction)

    train = _make_split(data.train_images, data.train_classes, pool_rows[train_pos], tasks, seed, _SPLIT_TRAIN)
    _check_tasks(task_names, train.labels)
    val = _make_split(data.train_images, data.train_classes, pool_rows[val_pos], tasks, seed, _SPLIT_TRAIN)
    test = _make_split(data.test_images, data.test_classes, test_rows, tasks, seed, _SPLIT_TEST)

    pos_weight = pos_weight_of(train.labels)
    return TaskSet(
        dataset=data.name,
        task_names=task_names,
        class_names=data.class_names,
        train=train,
        val=val,
        test=test,
        pos_weight=pos_weight,
        references=task_references(data.class_references, data.class_names, tasks),
        tasks_spec=";".join(t.strip() for t in text.split(";") if t.strip()),
        seed=seed,
        source=data.source,
        task_kinds=tuple(t.kind_record() for t in tasks),
    )


# ---------------------------------------------------------------------------- multi-label data


def _multilabel_labels(
    tasks: list[TaskDef], attributes: torch.Tensor, rows: torch.Tensor, seed: int, split: int, pool: int
) -> torch.Tensor:
    """(N, T) float32 labels in {0, 1, NaN} from attribute labels (N, A) at loader rows ``rows`` (N,)."""
    cols: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.kind == "attr":
            col = attributes[:, t.classes[0]]
        elif t.kind == "union":
            col = kleene_or(attributes[:, list(t.classes)])
        elif t.kind == "not":
            col = 1.0 - cols[t.of]  # NaN stays NaN
        else:
            stream = _STREAM_RANDOM if t.kind == "random" else _STREAM_FLIP
            col = _bernoulli(seed, stream, split, pool)[rows].float()
        cols[t.name] = col.float()
    if not tasks:
        return torch.zeros(len(attributes), 0)
    return torch.stack([cols[t.name] for t in tasks], 1).contiguous()


def _make_multilabel_split(
    images: torch.Tensor, attributes: torch.Tensor, rows: torch.Tensor, tasks: list[TaskDef], seed: int, split: int
) -> Split:
    pool = int(images.shape[0])
    imgs = images[rows]
    labels = _multilabel_labels(tasks, attributes[rows], rows, seed, split, pool)
    flip_cols = [i for i, t in enumerate(tasks) if t.kind == "flipped"]
    if flip_cols:
        flag = labels[:, flip_cols[0]] == 1
        imgs[flag] = imgs[flag].flip(-2)
    return Split(images=imgs.contiguous(), labels=labels, classes=torch.full((len(rows),), -1, dtype=torch.int64),
                 index=rows.long())


def _random_rows(n: int, limit: int | None, seed: int, split: int) -> torch.Tensor:
    """Sorted rows 0..n-1, or a seeded random subset of ``limit`` of them."""
    if limit is None or limit >= n:
        return torch.arange(n)
    rng = np.random.default_rng([seed, _STREAM_LIMIT, split, n])
    return torch.from_numpy(np.sort(rng.permutation(n)[:limit])).long()


def build_multilabel_taskset(
    data: MultiLabelData,
    spec: str | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> TaskSet:
    """The task set ``spec`` (default ``data.default_tasks``, i.e. ``attr:all``) on multi-label data.

    Splits: with ``data.val_images`` the official val split; else val is carved out of train as for
    class-labelled data (``split_rows``). ``limit``: see the module docstring. Labels keep NaN where
    missing; pos_weight and the empty/constant check count labelled images only.
    """
    text = data.default_tasks if spec is None or not spec.strip() else spec
    tasks = parse_spec(text, data.attribute_names, multilabel=True)
    task_names = tuple(t.name for t in tasks)
    if limit is not None and limit < 2:
        raise StgError(f"limit must be at least 2, got {limit}")
    small = None if limit is None else max(limit // 4, 2)
    n_train = int(data.train_images.shape[0])
    test_rows = _random_rows(int(data.test_images.shape[0]), small, seed, _SPLIT_TEST)
    if data.val_images is not None and data.val_labels is not None:
        train_rows = _random_rows(n_train, limit, seed, _SPLIT_TRAIN)
        val_rows = _random_rows(int(data.val_images.shape[0]), small, seed, _SPLIT_VAL)
        val_images, val_attributes, val_split = data.val_images, data.val_labels, _SPLIT_VAL
    else:
        pool_rows = _random_rows(n_train, limit, seed, _SPLIT_TRAIN)
        train_pos, val_pos = split_rows(len(pool_rows), seed, val_fraction)
        train_rows, val_rows = pool_rows[train_pos], pool_rows[val_pos]
        val_images, val_attributes, val_split = data.train_images, data.train_labels, _SPLIT_TRAIN

    train = _make_multilabel_split(data.train_images, data.train_labels, train_rows, tasks, seed, _SPLIT_TRAIN)
    _check_tasks(task_names, train.labels)
    val = _make_multilabel_split(val_images, val_attributes, val_rows, tasks, seed, val_split)
    test = _make_multilabel_split(data.test_images, data.test_labels, test_rows, tasks, seed, _SPLIT_TEST)
    return TaskSet(
        dataset=data.name,
        task_names=task_names,
        class_names=(),
        attribute_names=data.attribute_names,
        train=train,
        val=val,
        test=test,
        pos_weight=pos_weight_of(train.labels),
        references=task_references(data.references, data.attribute_names, tasks),
        tasks_spec=";".join(t.strip() for t in text.split(";") if t.strip()),
        seed=seed,
        source=data.source,
        task_kinds=tuple(t.kind_record() for t in tasks),
    )
