"""End-of-run pictures: the greedy IoU pairing, the F1-best threshold and the confusion matrix counts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from rfdetr.training.pictures import ImageResult, best_f1_threshold, confusion_matrix, pairs


def _result(truth, found):
    """truth: [(box, label)], found: [(box, label, score)]."""
    return ImageResult(
        pixels=None, true_boxes=torch.tensor([b for b, _ in truth], dtype=torch.float32).reshape(-1, 4),
        true_labels=torch.tensor([c for _, c in truth], dtype=torch.int64),
        boxes=torch.tensor([b for b, _, _ in found], dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor([c for _, c, _ in found], dtype=torch.int64),
        scores=torch.tensor([s for _, _, s in found], dtype=torch.float32), masks=None)


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def test_pairs_are_greedy_by_iou_and_used_once():
    found = torch.tensor([[0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    truth = torch.tensor([A, B], dtype=torch.float32)
    assert sorted(pairs(found, truth)) == [(1, 0), (2, 1)]  # the exact box wins object A; the near one is left
    assert pairs(found[:0], truth) == []


def test_confusion_matrix_counts_pairs_misses_and_false_alarms():
    rows = [1, 2, 3]  # class rows of three classes; matrix index 3 = background
    results = [_result([(A, 1), (B, 2), (C, 3)], [(A, 1, 0.9), (B, 3, 0.8), ([80, 80, 90, 90], 2, 0.7),
                                                    (C, 3, 0.1)])]
    matrix = confusion_matrix(results, rows, threshold=0.5)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1  # A: class 1 found as class 1
    expected[2, 1] = 1  # B: class 2 predicted as class 3
    expected[1, 3] = 1  # a class-2 prediction on nothing
    expected[3, 2] = 1  # C (class 3): its only prediction is below the threshold
    np.testing.assert_array_equal(matrix, expected)


def test_best_f1_threshold_drops_confident_enough_false_alarms():
    results = [_result([(A, 1), (B, 1)], [(A, 1, 0.9), (B, 1, 0.6), (C, 1, 0.3), ([70, 70, 80, 80], 1, 0.2)])]
    assert best_f1_threshold(results) == 0.35  # keeps both hits (0.6, 0.9), drops both false alarms (0.2, 0.3)


def test_the_training_path_does_not_import_torchvision():
    # torchvision's import pulls in torch._dynamo and sympy: seconds of start-up in every training run
    probe = ("import sys, rfdetr.training.stages, rfdetr.cli.training; "
             "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
