"""ByteTrack: track ids for the detections of consecutive frames, low-score boxes included.

ByteTrack (Zhang et al., 2022) associates *every* detection box with the tracks, not only the
confident ones: a partly hidden object whose score drops under the threshold keeps its track. Per
call of :meth:`ByteTracker.update` (one frame):

1. Every track moves to where its constant-velocity Kalman filter predicts it.
2. The high-score detections (``score >= high_threshold``) are matched to the confirmed tracks and
   to the lost ones still remembered, by IoU (optimal assignment; a pair needs IoU >= ``match_iou``).
3. Confirmed tracks still unmatched are matched to the low-score detections
   (``low_threshold <= score < high_threshold``; a pair needs IoU >= 0.5); the rest become lost.
4. Tracks started on the previous frame (tentative) take the high-score detections left over
   (IoU >= 0.3) and are confirmed, getting the next id; a tentative track not matched is dropped.
5. High-score detections left over (``score >= new_track_threshold``) start tentative tracks; on
   the first frame they are confirmed at once. A lost track is forgotten ``lost_seconds`` after it
   was last seen (``frame_rate`` is the rate of ``update`` calls: a video's fps over the sampling).

Matching ignores classes, as the paper does: an object whose class flickers keeps its id. A tracker
holds the state of one video: make one per video (and per thread), never share one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Kalman noise as fractions of the box's width/height (position) and per frame (velocity): a box of
# 100 px is expected within ~5 px of its prediction, its speed changing by ~0.6 px per frame.
POSITION_NOISE = 1.0 / 20
VELOCITY_NOISE = 1.0 / 160
LOW_SCORE_IOU = 0.5  # step 3: a low-score box continues a track only where it overlaps it well
TENTATIVE_IOU = 0.3  # step 4


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[N, 4]`` and ``[M, 4]`` x0, y0, x1, y1 boxes -> ``[N, M]``."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


class BoxKalman:
    """Constant-velocity Kalman filter over ``[cx, cy, w, h, vcx, vcy, vw, vh]``, noise scaled by the box size."""

    transition = np.eye(8) + np.eye(8, k=4)
    measurement = np.eye(4, 8)

    def __init__(self, box: np.ndarray):
        observed = _center_size(box)
        self.mean = np.concatenate([observed, np.zeros(4)])
        scale = np.concatenate([observed[2:], observed[2:]])
        self.covariance = np.diag(np.concatenate([2 * POSITION_NOISE * scale, 10 * VELOCITY_NOISE * scale]) ** 2)

    def _scale(self) -> np.ndarray:
        size = np.maximum(self.mean[2:4], 1.0)
        return np.concatenate([size, size])

    def predict(self) -> None:
        process = np.diag(np.concatenate([POSITION_NOISE * self._scale(), VELOCITY_NOISE * self._scale()]) ** 2)
        self.mean = self.transition @ self.mean
        self.covariance = self.transition @ self.covariance @ self.transition.T + process

    def update(self, box: np.ndarray) -> None:
        noise = np.diag((POSITION_NOISE * self._scale()) ** 2)
        projected = self.measurement @ self.covariance @ self.measurement.T + noise
        gain = np.linalg.solve(projected, self.measurement @ self.covariance).T
        self.mean = self.mean + gain @ (_center_size(box) - self.measurement @ self.mean)
        self.covariance = (np.eye(8) - gain @ self.measurement) @ self.covariance

    def box(self) -> np.ndarray:
        (cx, cy, w, h) = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _center_size(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)])


@dataclass
class _Track:
    kalman: BoxKalman
    state: str  # "tentative", "tracked" or "lost"
    last_frame: int
    track_id: int = -1


class ByteTracker:
    """Gives detections track ids frame after frame (module docstring); one tracker per video."""

    def __init__(self, frame_rate: float = 30.0, *, high_threshold: float = 0.5, low_threshold: float = 0.1,
                 new_track_threshold: float | None = None, match_iou: float = 0.2, lost_seconds: float = 1.0):
        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate!r}")
        self.high_threshold, self.low_threshold, self.match_iou = high_threshold, low_threshold, match_iou
        self.new_track_threshold = high_threshold if new_track_threshold is None else new_track_threshold
        self.lost_frames = max(1, round(frame_rate * lost_seconds))
        self.tracks: list[_Track] = []
        self.frame = -1
        self.next_id = 1

    def update(self, detections):
        """One frame's ``supervision.Detections`` -> the same detections with ``tracker_id``: the id of the
        confirmed track each one continues or starts, -1 for one on no confirmed track."""
        self.frame += 1
        boxes = np.asarray(detections.xyxy, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(detections.confidence if detections.confidence is not None else np.ones(len(boxes)))
        ids = np.full(len(boxes), -1, dtype=int)
        for track in self.tracks:
            track.kalman.predict()
        high = [i for i in range(len(boxes)) if scores[i] >= self.high_threshold]
        low = [i for i in range(len(boxes)) if self.low_threshold <= scores[i] < self.high_threshold]
        pool = [t for t in self.tracks if t.state in ("tracked", "lost")]
        tentative = [t for t in self.tracks if t.state == "tentative"]

        pairs, pool_left, high_left = self._match(pool, boxes, high, self.match_iou)
        self._continue(pairs, boxes, ids)
        pairs, tracked_left, _ = self._match([t for t in pool_left if t.state == "tracked"], boxes, low,
                                             LOW_SCORE_IOU)
        self._continue(pairs, boxes, ids)
        for track in tracked_left:
            track.state = "lost"
        pairs, tentative_left, high_left = self._match(tentative, boxes, high_left, TENTATIVE_IOU)
        self._continue(pairs, boxes, ids)
        dropped = {id(track) for track in tentative_left}
        for index in high_left:
            if scores[index] >= self.new_track_threshold:
                track = _Track(BoxKalman(boxes[index]), "tentative", self.frame)
                if self.frame == 0:
                    self._confirm(track)
                    ids[index] = track.track_id
                self.tracks.append(track)
        self.tracks = [t for t in self.tracks if id(t) not in dropped
                       and not (t.state == "lost" and self.frame - t.last_frame > self.lost_frames)]
        return replace(detections, tracker_id=ids)

    def _match(self, tracks: list[_Track], boxes: np.ndarray, indices: list[int], min_iou: float):
        """Optimal IoU assignment -> (matched (track, detection index) pairs, unmatched tracks, unmatched indices)."""
        if not tracks or not indices:
            return [], list(tracks), list(indices)
        from scipy.optimize import linear_sum_assignment

        iou = box_iou(np.stack([t.kalman.box() for t in tracks]), boxes[indices])
        rows, columns = linear_sum_assignment(-iou)
        pairs = [(tracks[r], indices[c]) for r, c in zip(rows, columns) if iou[r, c] >= min_iou]
        matched_tracks = {id(track) for track, _ in pairs}
        matched_indices = {index for _, index in pairs}
        return (pairs, [t for t in tracks if id(t) not in matched_tracks],
                [i for i in indices if i not in matched_indices])

    def _continue(self, pairs: list[tuple[_Track, int]], boxes: np.ndarray, ids: np.ndarray) -> None:
        for track, index in pairs:
            track.kalman.update(boxes[index])
            track.last_frame = self.frame
            if track.state == "tentative":
                self._confirm(track)
            track.state = "tracked"
            ids[index] = track.track_id

    def _confirm(self, track: _Track) -> None:
        track.state = "tracked"
        track.track_id = self.next_id
        self.next_id += 1
