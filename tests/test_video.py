"""Video in, video out: ``rfdetr predict clip.avi``, ``predict_video`` and ByteTrack ids (rfdetr/video.py,
rfdetr/cli/video.py, rfdetr/tracking.py) on short videos written here with OpenCV."""

from __future__ import annotations

import json
import types

import cv2
import numpy as np
import pytest
import supervision as sv
import torch

from rfdetr import RFDETRNano
from rfdetr.api import RFDETR
from rfdetr.checkpoints.files import make_checkpoint
from rfdetr.cli.main import main
from rfdetr.tracking import ByteTracker
from rfdetr.video import VideoError, VideoReader, predict_frames

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FRAMES, WIDTH, HEIGHT, FPS = 12, 160, 120, 10.0
RED, BLUE = (230, 30, 30), (30, 30, 230)


def square_frames(count: int = FRAMES, crossing: bool = False) -> list[np.ndarray]:
    """RGB frames: a red square moving right over grey (and, ``crossing``, a blue one moving left past it)."""
    frames = []
    for i in range(count):
        frame = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
        frame[30:60, 8 + 10 * i:38 + 10 * i] = RED
        if crossing:
            frame[50:80, 122 - 10 * i:152 - 10 * i] = BLUE
        frames.append(frame)
    return frames


def write_video(path, frames: list[np.ndarray], fps: float = FPS):
    codec = "MJPG" if path.suffix == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """Every frame OpenCV decodes (RGB), the fps and (width, height), read here without rfdetr.video."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, fps, size


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random-init nano detector (128 px, 20 queries) saved as a checkpoint."""
    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=None, class_names=["square", "disc"], device="cpu", resolution=128,
                       num_queries=20, num_select=20)
    path = tmp_path_factory.mktemp("video") / "model.pth"
    torch.save(make_checkpoint(model.model, model.config, model.classes), path)
    return path


@pytest.fixture(scope="module")
def model(weights):
    """The checkpoint loaded as ``rfdetr predict`` loads it."""
    return RFDETR(pretrain_weights=weights, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", square_frames())


def test_predict_writes_the_video_at_its_fps_and_size_and_a_record_per_frame_equal_to_predict(weights, model, clip,
                                                                                              tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--threshold", "0.0"]) == 0
    written, fps, size = read_video(out / "clip.mp4")
    inputs, input_fps, input_size = read_video(clip)
    assert (len(written), fps, size) == (len(inputs), input_fps, input_size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    lines = records(out / "clip.jsonl")
    assert [r["frame"] for r in lines] == list(range(FRAMES))
    assert [r["time"] for r in lines] == pytest.approx([i / FPS for i in range(FRAMES)])
    counts = []
    for frame, record in zip(inputs, lines):
        expected = model.predict(frame, threshold=0.0)
        found = record["detections"]
        counts.append(len(found))
        assert [d["image_id"] for d in found] == [record["frame"]] * len(found)
        assert [d["category_id"] for d in found] == expected.data["category_id"].tolist()
        assert [d["score"] for d in found] == pytest.approx(expected.confidence.tolist(), abs=1e-5)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in found)]
        np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), expected.xyxy, atol=0.02)
        assert all("track_id" not in d for d in found)
    assert sum(counts) > 0
    # Annotated: the written frames differ from the input where boxes were drawn.
    assert max(np.abs(w.astype(int) - i.astype(int)).max() for w, i in zip(written, inputs)) > 100


def test_every_3_predicts_frames_0_3_6_9_and_keeps_every_frame_in_the_video(weights, model, clip, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--threshold", "0.0", "--every", "3"]) == 0
    assert [r["frame"] for r in records(out / "clip.jsonl")] == [0, 3, 6, 9]
    written, _, _ = read_video(out / "clip.mp4")
    assert len(written) == FRAMES
    frames = list(model.predict_video(clip, threshold=0.0, every=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    inputs, _, _ = read_video(clip)
    for frame in frames:
        np.testing.assert_array_equal(frame.image, inputs[frame.index])
        assert isinstance(frame.detections, sv.Detections) and frame.detections.tracker_id is None
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--every", "0"]) == 2


def test_predict_video_checks_its_arguments_before_reading(model, clip, tmp_path):
    with pytest.raises(ValueError, match="every"):
        model.predict_video(clip, every=0)
    with pytest.raises(ValueError, match="threshold"):
        model.predict_video(clip, threshold=2.0)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        model.predict_video(tmp_path / "nowhere.mp4")
    frames = model.predict_video(clip)
    assert isinstance(frames, types.GeneratorType)  # lazy: nothing decoded until iterated
    first = next(frames)
    assert first.index == 0 and first.image.shape == (HEIGHT, WIDTH, 3) and first.image.dtype == np.uint8
    frames.close()


class SquareFinder:
    """A detector whose output the test controls: one box around the red pixels and one around the blue."""

    class_names = {0: "red", 1: "blue"}

    def predict(self, image, threshold=0.5):
        boxes, labels = [], []
        for label, channel in ((0, 0), (1, 2)):
            ys, xs = np.nonzero((image[..., channel] > 170) & (image[..., 1] < 80))
            if len(xs):
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(label)
        labels = np.array(labels, dtype=int)
        return sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.full(len(labels), 0.9),
                             class_id=labels, data={"category_id": labels + 1})


def test_tracking_gives_each_of_two_crossing_squares_one_id_throughout(tmp_path):
    crossing = write_video(tmp_path / "crossing.avi", square_frames(crossing=True))
    frames = list(predict_frames(SquareFinder(), crossing, threshold=0.5, track=True))
    assert len(frames) == FRAMES
    ids = {0: set(), 1: set()}
    for frame in frames:
        assert sorted(frame.detections.class_id) == [0, 1]  # both squares are seen in every frame
        for label, track_id in zip(frame.detections.class_id, frame.detections.tracker_id):
            ids[int(label)].add(int(track_id))
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1] and -1 not in ids[0] | ids[1]
    # Each call has a tracker of its own: a second pass numbers from 1 again.
    again = list(predict_frames(SquareFinder(), crossing, threshold=0.5, track=True))
    assert [f.detections.tracker_id.tolist() for f in again] == [f.detections.tracker_id.tolist() for f in frames]


def _detections(boxes, scores):
    return sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.array(scores, float),
                         class_id=np.zeros(len(scores), int))


def test_tracker_keeps_an_id_through_a_low_score_frame_and_a_short_gap_and_confirms_new_tracks():
    tracker = ByteTracker(frame_rate=10, high_threshold=0.5, low_threshold=0.1, lost_seconds=0.3)
    box = lambda i: [10 + 5 * i, 10, 40 + 5 * i, 40]  # noqa: E731  (moves 5 px a frame)
    other = [100, 60, 130, 90]
    ids = [tracker.update(_detections([box(i)], [0.9])).tracker_id.tolist() for i in range(3)]
    assert ids == [[1], [1], [1]]
    # A second object appears: tentative (-1) on its first frame, id 2 from its second; the first
    # object's score drops to 0.3 (a low-score box continues its track).
    assert tracker.update(_detections([box(3), other], [0.3, 0.9])).tracker_id.tolist() == [1, -1]
    assert tracker.update(_detections([box(4), other], [0.9, 0.9])).tracker_id.tolist() == [1, 2]
    # Two frames unseen (within 0.3 s at 10 fps), then back where its motion leads: the same id.
    tracker.update(_detections([other], [0.9]))
    tracker.update(_detections([other], [0.9]))
    assert tracker.update(_detections([box(7), other], [0.9, 0.9])).tracker_id.tolist() == [1, 2]
    # Unseen for longer than 0.3 s: forgotten; when it comes back it is a new object.
    for _ in range(5):
        tracker.update(_detections([other], [0.9]))
    assert tracker.update(_detections([box(13), other], [0.9, 0.9])).tracker_id.tolist() == [-1, 2]
    assert tracker.update(_detections([box(14), other], [0.9, 0.9])).tracker_id.tolist() == [3, 2]
    # A low-score box that continues no track gets none, and a score under low_threshold is ignored.
    assert tracker.update(_detections([[0, 100, 5, 105], box(15)], [0.3, 0.05])).tracker_id.tolist() == [-1, -1]


def test_track_flag_writes_track_ids_into_the_records(weights, clip, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--threshold", "0.0", "--track"]) == 0
    lines = records(out / "clip.jsonl")
    assert len(lines) == FRAMES
    track_ids = [d["track_id"] for r in lines for d in r["detections"]]
    assert track_ids and all(isinstance(t, int) for t in track_ids)
    assert len(set(track_ids) - {-1}) > 0
    assert read_video(out / "clip.mp4")[0].__len__() == FRAMES


def test_a_truncated_video_is_an_error_naming_it_and_keeps_what_was_written(weights, model, clip, tmp_path,
                                                                            capsys):
    truncated = tmp_path / "cut.avi"
    data = clip.read_bytes()
    truncated.write_bytes(data[:int(len(data) * 0.8)])
    with VideoReader(truncated) as reader:
        assert reader.frame_count == FRAMES  # the header still announces every frame
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(truncated), "--out", str(out), "--threshold", "0.0"]) == 2
    error = capsys.readouterr().err
    assert str(truncated) in error and f"of the {FRAMES} frames" in error
    lines = records(out / "cut.jsonl")  # every line is whole JSON
    assert 0 < len(lines) < FRAMES and [r["frame"] for r in lines] == list(range(len(lines)))
    written, fps, size = read_video(out / "cut.mp4")  # the partial video was finished and plays
    assert (len(written), fps, size) == (len(lines), FPS, (WIDTH, HEIGHT))
    with pytest.raises(VideoError, match="cut.avi"):
        list(model.predict_video(truncated))  # a few small frames: reading them all is the point
    # An mp4 cut short loses its index (written last): it cannot be opened at all.
    mp4 = write_video(tmp_path / "clip.mp4", square_frames())
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(mp4.read_bytes()[:len(mp4.read_bytes()) // 2])
    assert main(["predict", str(weights), str(cut_mp4), "--out", str(tmp_path / "out2")]) == 2
    assert f"cannot open video file {cut_mp4}" in capsys.readouterr().err


def test_a_mask_model_draws_masks_and_writes_rle_records(clip, tmp_path):
    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=None, masks=True, class_names=["square", "disc"], device="cpu",
                       resolution=128, num_queries=20, num_select=20)
    weights = tmp_path / "masks.pth"
    torch.save(make_checkpoint(model.model, model.config, model.classes), weights)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--threshold", "0.0", "--every", "4"]) == 0
    lines = records(out / "clip.jsonl")
    assert [r["frame"] for r in lines] == [0, 4, 8]
    found = [d for r in lines for d in r["detections"]]
    assert found and all(d["segmentation"]["size"] == [HEIGHT, WIDTH] for d in found)
    assert len(read_video(out / "clip.mp4")[0]) == FRAMES


def test_images_and_a_video_in_one_call(weights, clip, tmp_path):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(square_frames()[0]).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(image), str(clip), "--out", str(out), "--every", "6"]) == 0
    assert (out / "still.jpg").is_file() and (out / "predictions.json").is_file()
    assert [r["frame"] for r in records(out / "clip.jsonl")] == [0, 6]
    assert main(["predict", str(weights), str(tmp_path / "gone.mp4")]) == 2
