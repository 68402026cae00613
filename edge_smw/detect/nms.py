"""Non-maximum suppression in numpy: one IoU matrix, then a short loop over kept faces."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), boxes as x1 y1 x2 y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray | None,
                 iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe's "weighted" suppression: each kept face is the score-weighted mean of every
    candidate overlapping the best one by more than ``iou_threshold`` (boxes and landmarks),
    with the best one's score. Steadier boxes from frame to frame than plain NMS.

    ``boxes`` (n, 4) x1 y1 x2 y2, ``scores`` (n,), ``points`` (n, k, 2) or None; returns the
    kept boxes, scores and points, best first.
    """
    n = len(scores)
    if n == 0:
        return boxes[:0], scores[:0], None if points is None else points[:0]
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    points = None if points is None else points[order]
    overlap = iou_matrix(boxes, boxes) > iou_threshold
    free = np.ones(n, dtype=bool)
    kept_boxes, kept_scores, kept_points = [], [], []
    for i in range(n):
        if not free[i]:
            continue
        group = free & overlap[i]
        group[i] = True
        free &= ~group
        weights = scores[group] / scores[group].sum()
        kept_boxes.append(weights @ boxes[group])
        kept_scores.append(scores[i])
        if points is not None:
            kept_points.append(np.tensordot(weights, points[group], axes=1))
    return (np.asarray(kept_boxes), np.asarray(kept_scores),
            None if points is None else np.asarray(kept_points))
