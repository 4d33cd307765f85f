"""Every kind of checkpoint a user brings, with one class made unmistakable.

Each file is a nano detector with seed-0 filled weights whose ``dog`` row (wherever that kind
keeps it) has its bias raised by :data:`BOOST` in every class head, so that *every* query's top
class is ``dog``. A loader that reads the wrong row, shifts the table or silently rebuilds the
heads predicts another class (or scores ~0.01) — which is what the tests look for.

The dataset the kinds meet is a Roboflow export with the classes cat (1), dog (2), horse (3)
(id 0 = the project): COCO names, so that a COCO checkpoint can serve it too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from rfdetr.checkpoints.durable import save_checkpoint
from rfdetr.checkpoints.files import is_class_head_key, read_checkpoint
from rfdetr.checkpoints.surgery import shrink_class_heads, strip_class_heads
from rfdetr.classes import ClassTable
from rfdetr.config import model_config
from rfdetr.datasets import make_synthetic_coco
from rfdetr.models import DETRsegm, build_detector

BOOST = 20.0
TARGET = "dog"
DATASET_NAMES = ("cat", "dog", "horse")
SHAPE_CLASSES = ("circle", "square", "triangle")  # what the generator draws; renamed to DATASET_NAMES
KINDS = ("upstream-coco", "upstream-roboflow", "upstream-nameless", "upstream-1.11", "upstream-1.11-ckpt",
         "ours-stage1", "shrunk", "stripped", "stage2")


def make_dataset(folder: Path) -> Path:
    """Two 64 px training images and one validation image, categories renamed to :data:`DATASET_NAMES`."""
    root = make_synthetic_coco(folder, seed=5, num_train=2, num_valid=1, num_test=0, image_size=(64, 64),
                               classes=SHAPE_CLASSES, max_objects=2)
    for split in ("train", "valid", "test"):
        path = root / split / "_annotations.coco.json"
        data = json.loads(path.read_text())
        for category in data["categories"][1:]:
            category["name"] = DATASET_NAMES[SHAPE_CLASSES.index(category["name"])]
        path.write_text(json.dumps(data))
    return root


def dataset_table() -> ClassTable:
    categories = [{"id": 0, "name": "animals", "supercategory": "none"}]
    categories += [{"id": i + 1, "name": n, "supercategory": "animals"} for i, n in enumerate(DATASET_NAMES)]
    return ClassTable.from_categories(categories)


def boost(state: dict, row: int, amount: float = BOOST) -> dict:
    """A copy of ``state`` whose class heads favour head row ``row`` by ``amount`` logits."""
    state = dict(state)
    for key in [k for k in state if is_class_head_key(k) and k.endswith("bias")]:
        state[key] = state[key].clone()
        state[key][row] += amount
    return state


def _upstream_fine_tune(coco: dict, with_names: bool) -> dict:
    """What upstream ``train()`` on the dataset writes: the COCO head cut to the first K = 4 rows
    (label = category id: row 0 is the project, never annotated), ``args.class_names`` when named."""
    state = {k: (v[:len(DATASET_NAMES) + 1].clone() if is_class_head_key(k) else v) for k, v in coco["model"].items()}
    args = copy.copy(coco["args"])
    args.num_classes = len(DATASET_NAMES) + 1
    if with_names:
        args.class_names = list(DATASET_NAMES)
    elif hasattr(args, "class_names"):
        del args.class_names
    return {"model": boost(state, DATASET_NAMES.index(TARGET) + 1), "args": args}


def _upstream_1_11_fine_tune(coco: dict, lightning_only: bool) -> dict:
    """What upstream 1.11's ``train()`` on the dataset writes (``checkpoint_best_total.pth``, or with
    ``lightning_only`` ``last.ckpt``): K + 1 rows, row i = ``class_names[i]`` (the project takes no row),
    the weights under ``model`` and again in Lightning's ``state_dict`` and EMA state, the empty keypoint buffer."""
    from upstream_1_11_files import layout, upstream_model_config

    rows = [ClassTable.coco().labels_of_names([name])[0] for name in DATASET_NAMES] + [0]
    state = {k: (v[rows].clone() if is_class_head_key(k) else v) for k, v in coco["model"].items()}
    state = {"_kp_active_mask": torch.zeros(0, 0, dtype=torch.bool), **boost(state, DATASET_NAMES.index(TARGET))}
    recorded = layout()["nano"]
    checkpoint = {"model": state, "args": {**recorded["args"], "class_names": list(DATASET_NAMES)},
                  "model_name": "RFDETRNano", "model_config": {**upstream_model_config("nano"), "num_classes": 3},
                  "rfdetr_version": "1.11.2", "state_dict": {f"model.{k}": v for k, v in state.items()},
                  "pytorch-lightning_version": recorded["pytorch-lightning_version"], "global_step": 1,
                  "callbacks": {"RFDETREMACallback": {"average_model_state_dict": {
                      f"module.model.{k}": v for k, v in state.items()}}}, "best_total_source": "ema"}
    if lightning_only:
        del checkpoint["model"], checkpoint["best_total_source"]
    return checkpoint


def _ours_stage1(coco: dict) -> dict:
    """Our stage-1 file for the dataset: labels 0..2 in the dataset's order, the spare row last."""
    classes = dataset_table()
    rows = [ClassTable.coco().labels_of_names([name])[0] for name in classes.names] + [0]
    state = {k: (v[rows].clone() if is_class_head_key(k) else v) for k, v in coco["model"].items()}
    config = model_config("nano", num_classes=classes.num_rows - 1)
    return {"model": state, "config": config.model_dump(), "classes": classes.to_dict(), "epoch": 0}


def write_kind(kind: str, folder: Path, upstream_coco: Path) -> Path:
    """Write the checkpoint of ``kind`` (one of :data:`KINDS`) under ``folder``; returns its path.

    ``upstream_coco``: the reference upstream-format COCO nano file the upstream kinds start from.
    """
    folder.mkdir(parents=True, exist_ok=True)
    coco = read_checkpoint(upstream_coco)
    coco = {"model": boost(coco["model"], ClassTable.coco().labels_of_names([TARGET])[0]), "args": coco["args"]}
    if kind == "stage2":
        stage1 = _ours_stage1(coco)
        detector = build_detector(model_config("nano", num_classes=len(DATASET_NAMES)))
        detector.load_state_dict(stage1["model"])
        model = DETRsegm(detector, freeze_detr=True, mask_head="light")
        checkpoint = {**stage1, "model": model.state_dict(), "masks": {"mask_head": "light", "frozen_detector": True}}
    else:
        checkpoint = {"upstream-coco": lambda: coco,
                      "upstream-roboflow": lambda: _upstream_fine_tune(coco, with_names=True),
                      "upstream-nameless": lambda: _upstream_fine_tune(coco, with_names=False),
                      "upstream-1.11": lambda: _upstream_1_11_fine_tune(coco, lightning_only=False),
                      "upstream-1.11-ckpt": lambda: _upstream_1_11_fine_tune(coco, lightning_only=True),
                      "ours-stage1": lambda: _ours_stage1(coco),
                      "shrunk": lambda: shrink_class_heads(coco, list(DATASET_NAMES)),
                      "stripped": lambda: strip_class_heads(coco)}[kind]()
    path = folder / f"{kind}.pth"
    save_checkpoint(checkpoint, path)
    return path


def top_class(detections) -> tuple[str, int]:
    """(name, category id) of the highest-scoring detection."""
    best = int(torch.as_tensor(detections.confidence).argmax())
    return str(detections.data["class_name"][best]), int(detections.data["category_id"][best])
