"""Where a COCO-format dataset keeps its splits: ``<dataset_dir>/<split>/_annotations.coco.json``.

``valid`` and ``val`` name the same split (Roboflow exports say ``valid``, COCO and Ultralytics
habits say ``val``): either folder serves a request for either name. The training loader and
``validate_setup.py`` both find splits here, so a folder that one accepts the other accepts too.
Imports nothing heavy: ``validate_setup.py`` uses it before checking that torch is installed.
"""

from __future__ import annotations

from pathlib import Path

ANNOTATION_FILE = "_annotations.coco.json"
SPLIT_ALIASES = {"valid": "val", "val": "valid"}


def find_split_dir(dataset_dir: str | Path, split: str) -> Path | None:
    """The folder of ``split`` (or of its alias) under ``dataset_dir``; ``None`` when neither exists."""
    dataset_dir = Path(dataset_dir)
    for name in (split, SPLIT_ALIASES.get(split)):
        if name is not None and (dataset_dir / name).is_dir():
            return dataset_dir / name
    return None
