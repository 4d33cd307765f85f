"""The class-index convention, defined once.

Three things name a class: the dataset's **category id** (any integers, gaps allowed), the model's
**label** (a class-head row) and the **name**. A :class:`ClassTable` holds the mapping and is
stored in every checkpoint the project writes.

- A dataset's categories map to labels by sorted category id: ``0 .. K-1`` (contiguous). Roboflow
  exports carry an extra id-0 category that is only the project's supercategory (its
  ``supercategory`` is ``"none"`` and the real classes point to it); it is not a class.
- The class head has ``num_rows = K + 1`` rows: the last row is a spare that is never a positive
  target (the published checkpoints' convention: COCO max id 90 -> 91 rows).
- The published COCO checkpoints keep their 91-row head with **label = COCO category id**; rows
  that are no COCO category (0, 12, 26, ...) are spare. Upstream fine-tunes number their rows by
  release (:func:`upstream_class_table`): up to 1.4 label = category id (a Roboflow export's
  never-annotated id-0 row is spare), from 1.9.2 row i = ``class_names[i]``.
- A table whose names are only placeholders (``class_<category id>``: a checkpoint that never
  stored names) is matched by category id, where head row = category id.

Spare rows never become detections (:meth:`ClassTable.class_rows`); predict, evaluation, export
and ``shrink_head.py`` all go through this table. :func:`match_rows` is the one rule that says
which rows of one table's head serve another table's classes: by name, else (placeholder names)
by category id. Stage 1, stage 2, the wrappers and ``shrink_head.py`` all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# COCO 2017 detection category names indexed by category id (ids 1..90 with gaps; None = no category).
_COCO_NAME_BY_ID = (
    None, "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None,
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_CATEGORIES: tuple[tuple[int, str], ...] = tuple(
    (cid, name) for cid, name in enumerate(_COCO_NAME_BY_ID) if name is not None
)
COCO_NUM_ROWS = 91


@dataclass(frozen=True)
class ClassEntry:
    label: int
    category_id: int
    name: str


@dataclass(frozen=True)
class ClassTable:
    """Labels (class-head rows) -> (category id, name), plus the head's total row count."""

    entries: tuple[ClassEntry, ...]
    num_rows: int

    def __post_init__(self):
        labels = [e.label for e in self.entries]
        if len(set(labels)) != len(labels) or len({e.name for e in self.entries}) != len(labels):
            raise ValueError("class table has duplicate labels or names")
        if labels and (min(labels) < 0 or max(labels) >= self.num_rows):
            raise ValueError(f"class labels {min(labels)}..{max(labels)} do not fit a {self.num_rows}-row head")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_categories(cls, categories: Sequence[Mapping]) -> "ClassTable":
        """From a COCO ``categories`` list: contiguous labels by sorted id, one spare row."""
        categories = [c for c in categories if not _is_roboflow_supercategory(c, categories)]
        if not categories:
            raise ValueError("the annotation file has no categories")
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate category ids in {ids}")
        entries = tuple(ClassEntry(label, cid, str(c["name"])) for label, (cid, c) in enumerate(zip(ids, ordered)))
        return cls(entries, num_rows=len(entries) + 1)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "ClassTable":
        """Category ids ``1..K`` for the given names (a dataset without its own ids)."""
        return cls.from_categories([{"id": i + 1, "name": n} for i, n in enumerate(names)])

    @classmethod
    def placeholder(cls, category_ids: Iterable[int], num_rows: int) -> "ClassTable":
        """Unnamed classes: head row = category id, named ``class_<id>`` (see :func:`placeholder_name`)."""
        return cls(tuple(ClassEntry(cid, cid, placeholder_name(cid)) for cid in category_ids), num_rows)

    @classmethod
    def coco(cls) -> "ClassTable":
        """The published COCO checkpoints' table: 91 rows, label = COCO category id."""
        return cls(tuple(ClassEntry(cid, cid, name) for cid, name in COCO_CATEGORIES), COCO_NUM_ROWS)

    # ---- lookups ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def class_rows(self) -> list[int]:
        """Head rows that are real classes (spare rows excluded), in label order."""
        return [e.label for e in self.entries]

    @property
    def spare_rows(self) -> list[int]:
        """Head rows that are no class (never a positive target, never a detection)."""
        taken = set(self.class_rows)
        return [row for row in range(self.num_rows) if row not in taken]

    @property
    def has_placeholder_names(self) -> bool:
        """Whether the names are only ``class_<category id>`` stand-ins (a file that stored no names)."""
        return bool(self.entries) and all(e.name == placeholder_name(e.category_id) for e in self.entries)

    def name_of(self, label: int) -> str:
        return self._by_label()[label].name

    def category_id_of(self, label: int) -> int:
        return self._by_label()[label].category_id

    def label_of_category(self, category_id: int) -> int:
        for entry in self.entries:
            if entry.category_id == category_id:
                return entry.label
        raise KeyError(f"category id {category_id} is not in the class table ({self.describe()})")

    def labels_of_names(self, names: Sequence[str]) -> list[int]:
        """Labels for ``names``; unknown or repeated names raise ``ValueError`` listing the valid ones."""
        duplicates = sorted({n for n in names if list(names).count(n) > 1})
        if duplicates:
            raise ValueError(f"class names given more than once: {duplicates}")
        by_name = {e.name: e.label for e in self.entries}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown class names {unknown}; valid names: {self.names}")
        return [by_name[n] for n in names]

    def subset(self, names: Sequence[str]) -> tuple["ClassTable", list[int | None]]:
        """Keep ``names`` (in the given order) plus a spare row.

        Returns the new table (labels ``0..n-1``, original category ids) and, per new head row,
        the old row to take (see :func:`match_rows`; the spare takes an old spare row).
        """
        rows = self.labels_of_names(names)
        entries = tuple(ClassEntry(i, self.category_id_of(r), self.name_of(r)) for i, r in enumerate(rows))
        table = ClassTable(entries, num_rows=len(entries) + 1)
        return table, match_rows(self, table).rows

    def describe(self) -> str:
        shown = ", ".join(f"{e.label}:{e.name}" for e in self.entries[:6])
        more = f", ... ({len(self.entries)} classes)" if len(self.entries) > 6 else ""
        return f"{self.num_rows}-row head: {shown}{more}"

    def _by_label(self) -> dict[int, ClassEntry]:
        return {e.label: e for e in self.entries}

    # ---- storage ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"num_rows": self.num_rows,
                "classes": [{"label": e.label, "category_id": e.category_id, "name": e.name} for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ClassTable":
        try:
            entries = tuple(ClassEntry(int(c["label"]), int(c["category_id"]), str(c["name"]))
                            for c in data["classes"])
            return cls(entries, num_rows=int(data["num_rows"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed class table {data!r}: {error}") from error


# Upstream releases that changed which head row is which class (see upstream_class_table).
CONTIGUOUS_LABELS_SINCE = (1, 5)
PARENTS_DROPPED_SINCE = (1, 9, 2)


def upstream_class_table(names: Sequence[str], num_rows: int, version: tuple[int, ...] | None) -> ClassTable:
    """The classes of an upstream fine-tune: ``class_names`` (its ``args``), head rows, the release that wrote it.

    Upstream stores the names without a Roboflow export's parent category, and numbered its rows:

    - up to 1.4 (and files that record no version, which is every file before 1.7): row = category id,
      so with the parent at id 0 ``class_names[i]`` is row ``i + 1``;
    - 1.5 to 1.9.1: contiguous labels over every category of the dataset, the parent included, so
      ``class_names[i]`` is row ``i + 1`` when the head has a row for the parent (``K + 2`` rows) and
      row ``i`` otherwise;
    - from 1.9.2: the parent takes no label: ``class_names[i]`` is row ``i`` (``K + 1`` rows).

    The files keep no category ids; ``class_names[i]`` gets id ``i + 1`` (a Roboflow export's numbering:
    the parent is 0, the classes 1..K), which ``category_id`` in predictions reports.
    """
    if version is not None and version >= PARENTS_DROPPED_SINCE:
        offset = 0
    elif version is not None and version >= CONTIGUOUS_LABELS_SINCE:
        offset = 1 if num_rows >= len(names) + 2 else 0
    else:
        offset = 1
    if len(names) + offset > num_rows:
        raise ValueError(f"{len(names)} class names do not fit a {num_rows}-row head (rows {offset}.. hold them)")
    return ClassTable(tuple(ClassEntry(i + offset, i + 1, str(n)) for i, n in enumerate(names)), num_rows=num_rows)


def placeholder_name(category_id: int) -> str:
    """The stand-in name of a class whose checkpoint stored no names."""
    return f"class_{category_id}"


@dataclass(frozen=True)
class RowMatch:
    """Which rows of a source head serve a target table.

    ``rows[r]`` is the source row for target head row ``r`` (``None``: no source row, a fresh
    spare row); ``missing`` lists the target's class names that the source has no row for (then
    ``rows`` is ``None``); ``by`` says how classes were matched (``"name"`` or ``"category id"``).
    """

    rows: tuple[int | None, ...] | None
    missing: tuple[str, ...]
    by: str

    @property
    def is_identity(self) -> bool:
        return self.rows is not None and list(self.rows) == list(range(len(self.rows)))


def match_rows(source: ClassTable, target: ClassTable) -> RowMatch:
    """The one rule for reusing ``source``'s trained head rows for ``target``'s classes.

    Each target class takes the source row of the same name, in any order and for any subset of
    the source's classes. When the source's names are placeholders (a checkpoint that stored no
    names), classes are matched by category id instead: head row = category id, the convention of
    such files. Target spare rows take a source spare row, the same row where it is one (``None`` when the
    source has none).
    """
    by_name = {e.name: e.label for e in source.entries}
    if all(e.name in by_name for e in target.entries):
        found, by = {e.label: by_name[e.name] for e in target.entries}, "name"
    elif source.has_placeholder_names:
        found = {e.label: e.category_id for e in target.entries if 0 <= e.category_id < source.num_rows}
        by = "category id"
    else:
        found, by = {e.label: by_name[e.name] for e in target.entries if e.name in by_name}, "name"
    missing = tuple(e.name for e in target.entries if e.label not in found)
    if missing:
        return RowMatch(None, missing, by)
    spares = source.spare_rows
    fallback = spares[-1] if spares else None
    rows = tuple(found[row] if row in found else row if row in spares else fallback for row in range(target.num_rows))
    return RowMatch(rows, (), by)


def _is_roboflow_supercategory(category: Mapping, categories: Sequence[Mapping]) -> bool:
    """Roboflow's project entry: supercategory 'none', and the other categories point to its name."""
    if category.get("supercategory") != "none":
        return False
    return any(c is not category and c.get("supercategory") == category.get("name") for c in categories)
