"""ONNX export of the detector and prediction with ONNX Runtime.

The exported graph takes ``images [B, 3, R, R]`` (normalised, as :func:`rfdetr.datasets.preprocess.preprocess`
makes them) and returns ``boxes [B, Q, 4]`` (normalised cx, cy, w, h) and ``logits [B, Q, rows]``.
A model with a mask head also returns ``masks [B, K, R/4, R/4]`` (logits) for the ``K`` queries with
the highest class score, and their indices ``mask_queries [B, K]``: every detection among the top
``K`` (query, class) pairs has its query among them, so predict() pastes masks for those.
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

from rfdetr.checkpoints.upstream import PredictStyle
from rfdetr.classes import ClassTable
from rfdetr.config import COCO_MAX_DETECTIONS, ModelConfig
from rfdetr.inference import check_threshold, prepare_batch, to_detections
from rfdetr.models import PostProcess

logger = logging.getLogger(__name__)

ONNX_FILE = "inference_model.onnx"
INT8_ONNX_FILE = "inference_model_int8.onnx"
QUANTIZATIONS = ("int8",)
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["boxes", "logits"]
VERIFY_LOGITS_ATOL = 1e-4


MASK_OUTPUT_NAMES = ["masks", "mask_queries"]


class _ExportForward(nn.Module):
    """The detector as a plain tensor function: images -> (boxes, logits) of the last decoder layer,
    plus (masks, mask_queries) for a model with a mask head."""

    def __init__(self, detector: nn.Module, class_rows: list[int], mask_queries: int = COCO_MAX_DETECTIONS):
        super().__init__()
        self.detector = detector
        self.register_buffer("class_rows", torch.tensor(class_rows, dtype=torch.long), persistent=False)
        self.mask_queries = mask_queries
        self.built_in_masks = getattr(detector, "segmentation_head", None) is not None
        self.masks = hasattr(detector, "predict_masks") or self.built_in_masks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.detector(images)
        boxes, logits = outputs["pred_boxes"], outputs["pred_logits"]
        if not self.masks:
            return boxes, logits
        batch, queries = logits.shape[:2]
        k = min(self.mask_queries, queries)
        best = logits.index_select(-1, self.class_rows).amax(-1)  # sigmoid is monotonic
        top = best.topk(k, dim=1).indices
        if self.built_in_masks:  # every query's mask is in the outputs: keep the top k
            dense = outputs["pred_masks"]
            masks = dense.gather(1, top[:, :, None, None].expand(-1, -1, *dense.shape[-2:]))
            return boxes, logits, masks, top
        image_index = torch.arange(batch, device=images.device)[:, None].expand(batch, k).reshape(-1)
        masks = self.detector.predict_masks(outputs["mask_context"], image_index, top.reshape(-1))
        return boxes, logits, masks.view(batch, k, *masks.shape[-2:]), top


def export_onnx(detector: nn.Module, config: ModelConfig, classes: ClassTable, output_dir: str | os.PathLike, *,
                batch_size: int = 1, opset: int = 17, verify: bool = True, quantize: str | None = None,
                style: PredictStyle = PredictStyle()) -> Path:
    """Export ``detector`` to ``<output_dir>/inference_model.onnx``; optionally verify it with ONNX Runtime.

    ``quantize="int8"`` also writes ``inference_model_int8.onnx`` (see :func:`quantize_int8`) and
    returns that path. ``style``: how the file's release predicts (stored, so ONNX Runtime predicts alike)."""
    import onnx

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)} or None, got {quantize!r}")
    output = Path(output_dir) / ONNX_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    side = config.resolution
    # Work on a CPU copy: no aux outputs, position table precomputed for the export grid.
    model = copy.deepcopy(detector).cpu().float().eval()
    inner = getattr(model, "detr", model)  # the detector inside a mask model
    inner.aux_loss = False
    grid = side // config.patch_size
    inner.backbone[0].encoder.encoder.embeddings.bake_position_table(grid, grid)
    wrapper = _ExportForward(model, classes.class_rows).eval()
    output_names = OUTPUT_NAMES + (MASK_OUTPUT_NAMES if wrapper.masks else [])
    example = torch.zeros(batch_size, 3, side, side)
    temporary = output.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints derived from shapes
        torch.onnx.export(wrapper, (example,), str(temporary), input_names=INPUT_NAMES, output_names=output_names,
                          opset_version=opset, dynamo=False)
    proto = onnx.load(str(temporary))
    metadata = {"rfdetr_size": config.size, "rfdetr_resolution": str(side),
                "rfdetr_classes": json.dumps(classes.to_dict()), "rfdetr_num_select": str(config.num_select),
                "rfdetr_antialias": str(int(style.antialias)), "rfdetr_clamp_boxes": str(int(style.clamp_boxes))}
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
    if quantize == "int8":
        return quantize_int8(output, output.with_name(INT8_ONNX_FILE))
    return output


def quantize_int8(source: Path, output: Path) -> Path:
    """Write ``source`` with int8 weights and dynamically quantized activations (ONNX Runtime's
    ``quantize_dynamic``) for its MatMul and Gemm nodes, which carry nearly all of the FLOPs;
    everything else (attention sampling, normalisation, heads' activations) stays fp32. The rfdetr
    metadata is copied, so :class:`ONNXDetector` runs the file like the fp32 one."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temporary = output.with_suffix(".onnx.tmp")
    quantize_dynamic(str(source), str(temporary), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    proto = onnx.load(str(temporary))
    known = {entry.key for entry in proto.metadata_props}
    for entry in onnx.load(str(source), load_external_data=False).metadata_props:
        if entry.key not in known:
            proto.metadata_props.add(key=entry.key, value=entry.value)
    onnx.save(proto, str(temporary))
    os.replace(temporary, output)
    logger.info("quantized %s -> %s (int8 weights, dynamic int8 activations for MatMul/Gemm)", source, output)
    return output


def verify_onnx(path: Path, wrapper: nn.Module, side: int, batch_size: int = 1) -> float:
    """Max |logit difference| between ONNX Runtime and PyTorch on a real photo (mask logits relative to
    their largest magnitude); raises above 1e-4."""
    import skimage.data

    from rfdetr.datasets.preprocess import preprocess

    images = preprocess(skimage.data.astronaut(), side)[None].repeat(batch_size, 1, 1, 1)
    with torch.no_grad():
        reference = wrapper(images)
    session = _session(path)
    outputs = session.run([o.name for o in session.get_outputs()], {"images": images.numpy()})
    difference = float(np.abs(outputs[1] - reference[1].numpy()).max())
    if len(outputs) == 4:  # masks: compare the logits of the same queries
        if not np.array_equal(outputs[3], reference[3].numpy()):
            raise RuntimeError(f"exported model {path} selects other mask queries than PyTorch")
        # Mask logits are dot products of 256 terms and reach |100| and more: their rounding error scales
        # with that size, so they are compared relative to their largest magnitude.
        scale = max(1.0, float(np.abs(reference[2].numpy()).max()))
        mask_difference = float(np.abs(outputs[2] - reference[2].numpy()).max())
        logger.info("ONNX Runtime vs PyTorch: max |mask logit difference| %.2e (largest |mask logit| %.1f)",
                    mask_difference, scale)
        difference = max(difference, mask_difference / scale)
    if difference > VERIFY_LOGITS_ATOL:
        raise RuntimeError(f"exported model {path} disagrees with PyTorch: max |logit difference| {difference:.2e}")
    return difference


def _session(path: Path, providers: list[str] | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # As many threads as torch, and no spin-waiting after a run: between two runs, predict()
    # decodes and resizes the next image on the same cores (docs/benchmarks.md).
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


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
            self.style = PredictStyle(antialias=metadata.get("rfdetr_antialias", "1") == "1",
                                      clamp_boxes=metadata.get("rfdetr_clamp_boxes", "0") == "1")
        except KeyError as error:
            raise ValueError(f"{self.path} was not exported by rfdetr (metadata {error} missing)") from error
        self.batch_size = self.session.get_inputs()[0].shape[0]
        self.postprocess = PostProcess(num_select, clamp_boxes=self.style.clamp_boxes)

    @property
    def class_names(self) -> dict[int, str]:
        return {entry.label: entry.name for entry in self.classes.entries}

    def predict(self, images: Any, threshold: float = 0.5):
        """``supervision.Detections`` for one image, or a list of them for a list input (with ``mask``
        for an exported mask model: detections whose query has no exported mask are left out)."""
        check_threshold(threshold)
        batch, sizes, is_list = prepare_batch(images, self.resolution, antialias=self.style.antialias)
        names = [output.name for output in self.session.get_outputs()]
        step = self.batch_size if isinstance(self.batch_size, int) else len(batch)
        collected: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step].numpy()
            if len(chunk) < step:  # a fixed-batch graph: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            for store, value in zip(collected, self.session.run(names, {"images": chunk})):
                store.append(value)
        outputs = {name: torch.from_numpy(np.concatenate(values))[:len(batch)]
                   for name, values in zip(names, collected)}
        detector_outputs = {"pred_boxes": outputs["boxes"], "pred_logits": outputs["logits"]}
        results, queries = self.postprocess.select(detector_outputs, sizes, class_rows=self.classes.class_rows)
        if "masks" in outputs:
            results = self._with_masks(results, queries, outputs, sizes, threshold)
        detections = to_detections(results, threshold, self.classes)
        return detections if is_list else detections[0]

    def _with_masks(self, results: list[dict], queries: torch.Tensor, outputs: dict, sizes: torch.Tensor,
                    threshold: float) -> list[dict]:
        from rfdetr.models.mask_postprocess import paste_masks

        kept = []
        for image, result in enumerate(results):
            count = int((result["scores"] > threshold).sum())  # scores are sorted
            exported = outputs["mask_queries"][image].tolist()
            position = {query: index for index, query in enumerate(exported)}
            rows = [position.get(int(q), -1) for q in queries[image, :count]]
            count = next((i for i, row in enumerate(rows) if row < 0), count)  # a prefix with masks
            trimmed = {key: value[:count] for key, value in result.items()}
            logits = outputs["masks"][image][torch.tensor(rows[:count], dtype=torch.long)]
            trimmed["masks"] = paste_masks(logits, torch.ones(2), sizes[image].tolist())
            kept.append(trimmed)
        return kept
