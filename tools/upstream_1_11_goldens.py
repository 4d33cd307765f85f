"""Record upstream rfdetr 1.11.2's own predictions on 1.11-layout files (run in a side venv, never in .venv).

    uv venv /tmp/up11 && uv pip install --python /tmp/up11/bin/python torch==2.14.1 torchvision==0.29.1 \\
        "rfdetr[train]==1.11.2" "numpy<2.3" scikit-image
    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); from upstream_1_11_files import KINDS, write_file; \\
        [write_file(s, k, f"/tmp/gen/{s}/{n}") for s in ("nano", "small", "seg-nano") for k, n in KINDS.items()]"
    cd /tmp && /tmp/up11/bin/python -I /path/to/repo/tools/upstream_1_11_goldens.py /tmp/gen \\
        --out /path/to/repo/tests/golden/upstream_1_11/predictions_1_11.pt

For every ``<size>/<kind>`` file under the folder, upstream's ``RFDETR.from_checkpoint`` loads it and
``predict`` runs on scikit-image's astronaut (512 x 512) and coffee (400 x 600) photos at
:data:`THRESHOLD`; the result keeps boxes, scores, class ids and names, and for mask models the masks
(bit-packed). ``-I`` keeps the repository's own ``rfdetr`` package off the path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

THRESHOLD = 0.6
PHOTOS = ("astronaut", "coffee")


def predictions(path: Path) -> list[dict]:
    import numpy as np
    import skimage.data
    import torch

    from rfdetr.detr import RFDETR

    model = RFDETR.from_checkpoint(str(path), device="cpu")
    found = []
    for photo in PHOTOS:
        detections = model.predict(getattr(skimage.data, photo)(), threshold=THRESHOLD)
        entry = {"photo": photo, "xyxy": torch.from_numpy(detections.xyxy.astype(np.float32)),
                 "confidence": torch.from_numpy(detections.confidence.astype(np.float32)),
                 "class_id": torch.from_numpy(detections.class_id.astype(np.int64)),
                 "class_name": [str(n) for n in detections.data["class_name"]]}
        if detections.mask is not None:
            entry["mask_shape"] = list(detections.mask.shape)
            entry["mask_bits"] = torch.from_numpy(np.packbits(detections.mask.astype(bool), axis=None))
        found.append(entry)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with <size>/<kind> files written by upstream_1_11_files")
    parser.add_argument("--out", type=Path, required=True, help="where to write the goldens (.pt)")
    args = parser.parse_args(argv)
    import torch

    import rfdetr

    if "site-packages" not in rfdetr.__file__:
        print(f"error: {rfdetr.__file__} is not upstream's package: run with python -I outside the repository",
              file=sys.stderr)
        return 2
    goldens = {}
    for path in sorted(args.folder.glob("*/*")):
        goldens[f"{path.parent.name}/{path.name}"] = predictions(path)
        print(path, [len(p["class_id"]) for p in goldens[f"{path.parent.name}/{path.name}"]])
    from importlib.metadata import version

    torch.save({"rfdetr_version": version("rfdetr"), "threshold": THRESHOLD, "photos": list(PHOTOS),
                "predictions": goldens}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
