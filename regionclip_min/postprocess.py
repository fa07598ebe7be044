"""Test-time post-processing of detections: score threshold, per-class (soft-)NMS, the best N per image.

The official COCO test (`test_transfer_learning.sh`, `fast_rcnn_inference_single_image` in roi_heads/fast_rcnn.py)
keeps scores above 0.001 and runs gaussian soft-NMS (Bodla et al. 2017) per class, sigma 0.5, pruning at 0.001,
then keeps the 100 best. Soft-NMS is not in torchvision, so it is written here:

    repeat: pick the box i of highest score s_i; every other box j of the same class is rescored
            s_j <- s_j * exp(-IoU(i, j)^2 / sigma), and dropped once s_j <= prune
    until no box is left (or `max_out` are picked: the picks come in non-increasing score order, so the first
    max_out picks are the max_out best of the full run).
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, *, sigma: float = 0.5,
             prune: float = 0.001, max_out: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS within each class.

    Args:
        boxes: (N, 4) xyxy; scores: (N,); classes: (N,) int, boxes of different classes never suppress each other.
        sigma: the gaussian's width; prune: boxes whose rescored score is at most this are dropped;
        max_out: stop after this many picks (None: all).
    Returns:
        keep: (M,) int64 indices into the inputs, in pick order (non-increasing new score);
        new_scores: (M,) their rescored scores.
    """
    scores = scores.clone().float()
    alive = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    keep, kept_scores = [], []
    limit = len(scores) if max_out is None else min(max_out, len(scores))
    while len(keep) < limit and alive.any():
        i = int(torch.where(alive, scores, scores.new_tensor(float("-inf"))).argmax())
        keep.append(i)
        kept_scores.append(scores[i].item())
        alive[i] = False
        same = alive & (classes == classes[i])  # (N,) the boxes box i can rescore
        if same.any():
            iou = box_iou(boxes[i:i + 1], boxes[same])[0]  # (n,)
            scores[same] = scores[same] * torch.exp(-iou ** 2 / sigma)
            alive[same] = scores[same] > prune
    return (torch.tensor(keep, dtype=torch.int64, device=boxes.device),
            torch.tensor(kept_scores, dtype=torch.float32, device=boxes.device))


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, score_thresh: float,
                      nms: str, nms_thresh: float, max_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's candidate (box, score, label) rows -> its detections, best first.

    nms "soft": gaussian soft-NMS (sigma 0.5, prune 0.001), scores are the rescored ones; "hard": NMS at nms_thresh.
    """
    if nms not in ("soft", "hard"):
        raise ValueError(f"nms must be 'soft' or 'hard', got {nms!r}")
    ok = (scores > score_thresh) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if nms == "hard":
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_out]
        return boxes[keep], scores[keep], labels[keep]
    keep, new_scores = soft_nms(boxes, scores, labels, max_out=max_out)
    return boxes[keep], new_scores.to(scores.dtype), labels[keep]
