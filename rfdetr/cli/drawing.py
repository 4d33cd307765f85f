"""What ``rfdetr predict`` writes for one image or video frame: COCO result entries and an annotated picture."""

from __future__ import annotations


def coco_results(image_id: int, detections) -> list[dict]:
    """``supervision.Detections`` of one image as COCO result entries (RLE ``segmentation`` with masks)."""
    import numpy as np
    from pycocotools import mask as mask_util

    entries = []
    for index, ((x0, y0, x1, y1), score, category) in enumerate(zip(
            detections.xyxy, detections.confidence, detections.data["category_id"])):
        entry = {"image_id": image_id, "category_id": int(category), "score": round(float(score), 5),
                 "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]}
        if detections.mask is not None:
            rle = mask_util.encode(np.asfortranarray(detections.mask[index].astype(np.uint8)))
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        entries.append(entry)
    return entries


def annotate(image, detections, class_names: dict[int, str]):
    """A PIL copy of ``image`` (H x W x 3 uint8) with masks, boxes and ``name score`` labels (``#track name
    score`` with track ids) drawn by supervision."""
    import numpy as np
    import supervision as sv
    from PIL import Image

    canvas = image.copy() if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if detections.mask is not None and len(detections):
        canvas = sv.MaskAnnotator(opacity=0.45).annotate(canvas, detections)
    canvas = sv.BoxAnnotator(thickness=2).annotate(canvas, detections)
    labels = [f"{class_names.get(int(c), c)} {s:.2f}" for c, s in zip(detections.class_id, detections.confidence)]
    if detections.tracker_id is not None:  # "#7 person 0.91"; -1: on no confirmed track yet
        labels = [f"#{t} {label}" if t >= 0 else label for t, label in zip(detections.tracker_id, labels)]
    canvas = sv.LabelAnnotator(text_scale=0.4, text_padding=3).annotate(canvas, detections, labels=labels)
    return Image.fromarray(canvas)
