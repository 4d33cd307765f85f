"""ONNX export of the detector and prediction with ONNX Runtime.

The exported graph takes ``images [B, 3, R, R]`` (normalised, as :func:`rfdetr.preprocess.preprocess`
makes them) and returns ``boxes [B, Q, 4]`` (normalised cx, cy, w, h) and ``logits [B, Q, rows]``.
The class table, resolution and size are stored in the model's metadata, so an exported file is
enough to predict: ``ONNXDetector("output/inference_model.onnx").predict(image)``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdetr.classes import ClassTable
from rfdetr.config import ModelConfig
from rfdetr.inference import prepare_batch, to_detections
from rfdetr.models import PostProcess

logger = logging.getLogger(__name__)

ONNX_FILE = "inference_model.onnx"
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["boxes", "logits"]
VERIFY_LOGITS_ATOL = 1e-4


class _ExportForward(nn.Module):
    """The detector as a plain tensor function: images -> (boxes, logits) of the last decoder layer."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.detector(images)
        return outputs["pred_boxes"], outputs["pred_logits"]


def export_onnx(detector: nn.Module, config: ModelConfig, classes: ClassTable, output_dir: str | os.PathLike, *,
                batch_size: int = 1, opset: int = 17, verify: bool = True) -> Path:
    """Export ``detector`` to ``<output_dir>/inference_model.onnx``; optionally verify it with ONNX Runtime."""
    import onnx

    output = Path(output_dir) / ONNX_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    side = config.resolution
    # Work on a CPU copy: no aux outputs, position table precomputed for the export grid.
    model = copy.deepcopy(detector).cpu().float().eval()
    model.aux_loss = False
    grid = side // config.patch_size
    model.backbone[0].encoder.encoder.embeddings.bake_position_table(grid, grid)
    wrapper = _ExportForward(model).eval()
    example = torch.zeros(batch_size, 3, side, side)
    temporary = output.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints derived from shapes
        torch.onnx.export(wrapper, (example,), str(temporary), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          opset_version=opset, dynamo=False)
    proto = onnx.load(str(temporary))
    metadata = {"rfdetr_size": config.size, "rfdetr_resolution": str(side),
                "rfdetr_classes": json.dumps(classes.to_dict()), "rfdetr_num_select": str(config.num_select)}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(temporary))
    os.replace(temporary, output)
    logger.info("exported %s", output)
    if verify:
        difference = verify_onnx(output, wrapper, side, batch_size)
        logger.info("ONNX Runtime vs PyTorch: max |logit difference| %.2e", difference)
    return output


def verify_onnx(path: Path, wrapper: nn.Module, side: int, batch_size: int = 1) -> float:
    """Max |logit difference| between ONNX Runtime and PyTorch on a real photo; raises above 1e-4."""
    import skimage.data

    from rfdetr.preprocess import preprocess

    images = preprocess(skimage.data.astronaut(), side)[None].repeat(batch_size, 1, 1, 1)
    with torch.no_grad():
        _, reference = wrapper(images)
    _, logits = _session(path).run(OUTPUT_NAMES, {"images": images.numpy()})
    difference = float(np.abs(logits - reference.numpy()).max())
    if difference > VERIFY_LOGITS_ATOL:
        raise RuntimeError(f"exported model {path} disagrees with PyTorch: max |logit difference| {difference:.2e}")
    return difference


def _session(path: Path, providers: list[str] | None = None):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])


class ONNXDetector:
    """Predict with an exported model on ONNX Runtime, same inputs and outputs as ``RFDETR.predict``."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist; create it with model.export()")
        self.session = _session(self.path, providers)
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes = ClassTable.from_dict(json.loads(metadata["rfdetr_classes"]))
            self.resolution = int(metadata["rfdetr_resolution"])
            num_select = int(metadata.get("rfdetr_num_select", 300))
        except KeyError as error:
            raise ValueError(f"{self.path} was not exported by rfdetr (metadata {error} missing)") from error
        self.batch_size = self.session.get_inputs()[0].shape[0]
        self.postprocess = PostProcess(num_select)

    @property
    def class_names(self) -> dict[int, str]:
        return {entry.label: entry.name for entry in self.classes.entries}

    def predict(self, images: Any, threshold: float = 0.5):
        """``supervision.Detections`` for one image, or a list of them for a list input."""
        batch, sizes, is_list = prepare_batch(images, self.resolution)
        boxes, logits = [], []
        step = self.batch_size if isinstance(self.batch_size, int) else len(batch)
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step].numpy()
            if len(chunk) < step:  # a fixed-batch graph: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            out_boxes, out_logits = self.session.run(OUTPUT_NAMES, {"images": chunk})
            boxes.append(torch.from_numpy(out_boxes))
            logits.append(torch.from_numpy(out_logits))
        outputs = {"pred_boxes": torch.cat(boxes)[:len(batch)], "pred_logits": torch.cat(logits)[:len(batch)]}
        results = self.postprocess(outputs, sizes, class_rows=self.classes.class_rows)
        detections = to_detections(results, threshold, self.class_names)
        return detections if is_list else detections[0]
