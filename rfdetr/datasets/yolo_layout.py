"""Where a YOLO-format dataset keeps its splits, read from its ``data.yaml`` (or ``data.yml``).

The yaml is a mapping with

- ``names``: the classes, a list (class index = position) or a mapping ``{index: name}``; an
  optional ``nc`` must equal their count;
- ``train``, ``val`` (or ``valid``) and optionally ``test``: each a folder of images, or a list of
  folders, relative to ``path`` when the yaml gives one (itself relative to the yaml's folder; a
  ``path`` that does not exist there is ignored, with a note: Ultralytics reads it under its own
  datasets folder) and to the yaml's folder otherwise. A value starting with ``../`` that does
  not exist is read without that prefix (Roboflow exports write ``../train/images`` beside the
  yaml, as Ultralytics reads them).

Each image's label file is found by the Ultralytics rule: the last ``images`` folder of its path
becomes ``labels`` and the suffix ``.txt``. Both ``images/train`` + ``labels/train`` (Ultralytics)
and ``train/images`` + ``train/labels`` (Roboflow) follow from it. ``val`` and ``valid`` name one
split, as in :mod:`rfdetr.datasets.coco_layout`. No torch here: ``validate_setup.py`` reads layouts too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

YAML_NAMES = ("data.yaml", "data.yml")
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLIT_KEYS = {"train": ("train",), "valid": ("val", "valid"), "val": ("val", "valid"), "test": ("test",)}


class YoloFormatError(ValueError):
    """A YOLO dataset that cannot be read as it is: the message names the file (and line) and what to fix."""


@dataclass(frozen=True)
class YoloLayout:
    """A parsed ``data.yaml``: class names by index and each split's image folders."""

    yaml_path: Path
    root: Path  # split paths are relative to it
    names: dict[int, str]
    splits: dict[str, list[Path]]  # yaml key ("train", "val", "valid", "test") -> image folders
    notes: list[str] = field(default_factory=list)  # things worth a warning (an ignored ``path``)

    def split_folders(self, split: str) -> list[Path] | None:
        """The image folders of ``split`` (``valid`` and ``val`` are one split); ``None`` when the yaml has none."""
        for key in SPLIT_KEYS.get(split, (split,)):
            if key in self.splits:
                return self.splits[key]
        return None

    def split_key(self, split: str) -> str:
        """The yaml key that holds ``split`` (for messages)."""
        return next((key for key in SPLIT_KEYS.get(split, (split,)) if key in self.splits), split)


def find_yaml(dataset_dir: str | Path) -> Path | None:
    """The ``data.yaml`` / ``data.yml`` of ``dataset_dir``; ``None`` when it has neither."""
    for name in YAML_NAMES:
        if (Path(dataset_dir) / name).is_file():
            return Path(dataset_dir) / name
    return None


def read_layout(yaml_path: str | Path) -> YoloLayout:
    """Parse ``yaml_path``; a malformed file raises :class:`YoloFormatError` naming it (and the line)."""
    import yaml  # PyYAML: imported here so that COCO-only use never needs it

    yaml_path = Path(yaml_path)
    try:
        document = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{yaml_path}:{mark.line + 1}" if mark is not None else str(yaml_path)
        raise YoloFormatError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise YoloFormatError(f"{yaml_path}: cannot read ({error})") from error
    if not isinstance(document, dict):
        raise YoloFormatError(f"{yaml_path}: expected a mapping with 'names' and 'train'/'val' paths, "
                              f"got {type(document).__name__}")
    names = _names(document, yaml_path)
    root, notes = _root(document, yaml_path)
    splits = {}
    for key in ("train", "val", "valid", "test"):
        value = document.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise YoloFormatError(f"{yaml_path}: '{key}' must be a folder of images or a list of folders, "
                                  f"got {value!r}")
        splits[key] = [_split_folder(root, v.strip()) for v in values]
    return YoloLayout(yaml_path, root, names, splits, notes)


def _names(document: dict, yaml_path: Path) -> dict[int, str]:
    raw = document.get("names")
    if isinstance(raw, list):
        pairs = list(enumerate(raw))
    elif isinstance(raw, dict):
        pairs = []
        for key, name in raw.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                index = -1
            if index < 0 or isinstance(key, bool) or (isinstance(key, float) and not key.is_integer()):
                raise YoloFormatError(f"{yaml_path}: 'names' key {key!r} is not a class index (0, 1, 2, ...)")
            pairs.append((index, name))
    else:
        raise YoloFormatError(f"{yaml_path}: 'names' must be a list of class names or a mapping "
                              f"{{index: name}}, got {type(raw).__name__ if raw is not None else 'nothing'}")
    if not pairs:
        raise YoloFormatError(f"{yaml_path}: 'names' is empty: a dataset needs at least one class")
    names: dict[int, str] = {}
    for index, name in pairs:
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name.strip():
            raise YoloFormatError(f"{yaml_path}: class {index} in 'names' has no name ({name!r})")
        if index in names:
            raise YoloFormatError(f"{yaml_path}: class index {index} appears twice in 'names'")
        names[index] = name.strip()
    repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if repeated:
        raise YoloFormatError(f"{yaml_path}: class names must be distinct; repeated: {repeated}")
    count = document.get("nc")
    if count is not None and count != len(names):
        raise YoloFormatError(f"{yaml_path}: 'nc' is {count!r} but 'names' has {len(names)} classes")
    return dict(sorted(names.items()))


def _root(document: dict, yaml_path: Path) -> tuple[Path, list[str]]:
    base = yaml_path.parent
    path = document.get("path")
    if path is None:
        return base, []
    if not isinstance(path, str) or not path.strip():
        raise YoloFormatError(f"{yaml_path}: 'path' must be a folder, got {path!r}")
    root = base / path.strip()  # an absolute path stays absolute
    if root.is_dir():
        return root, []
    return base, [f"{yaml_path.name}: 'path: {path}' is not a folder here; split paths are read relative to "
                  f"{base}"]


def _split_folder(root: Path, value: str) -> Path:
    folder = root / value
    if not folder.exists() and value.startswith("../") and (root / value[3:]).exists():
        return root / value[3:]
    return folder


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by their path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_path(image: Path) -> Path:
    """The label file of ``image``: its last ``images`` folder becomes ``labels``, its suffix ``.txt``."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def label_folder(image_folder: Path) -> Path:
    """Where the label files of the images under ``image_folder`` live (the same rule as :func:`label_path`)."""
    return label_path(image_folder / "x.jpg").parent
