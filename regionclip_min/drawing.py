"""Pictures of boxes on images (torchvision.utils.draw_bounding_boxes): predictions of the detectors and the
zero-shot demo, and the toy benchmark's regions / detections grids."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes


def render_boxes(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: list[str], colors: list[str], *,
                 scale: int = 3) -> torch.Tensor:
    """`image` (3, H, W) float RGB in [0, 1], enlarged `scale` times (nearest), with labelled boxes (pixels of
    `image`) drawn by torchvision.utils.draw_bounding_boxes: (3, sH, sW) uint8."""
    big = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0]  # (3, sH, sW)
    drawn = (big * 255).round().clamp(0, 255).to(torch.uint8)  # (3, sH, sW)
    if len(labels):
        drawn = draw_bounding_boxes(drawn, boxes_xyxy.reshape(-1, 4).float() * scale, labels=labels, colors=colors,
                                    width=2, label_colors="black", label_background_colors=colors, fill_labels=True)
    return drawn


def draw_detections(image: torch.Tensor, boxes_xyxy: torch.Tensor, names: list[str], scores: torch.Tensor, path, *,
                    is_novel: list[bool] | None = None, score_thresh: float = 0.5, max_boxes: int = 10,
                    scale: int = 3) -> torch.Tensor:
    """Save `image` with its detections drawn (torchvision.utils.draw_bounding_boxes) as a PNG (path None: only
    return the drawing).

    Args:
        image: (3, H, W) float RGB in [0, 1]. boxes_xyxy: (N, 4) pixels of `image`. names: N class names.
        scores: (N,). is_novel: N flags; novel classes are drawn red and marked "*", base ones cyan.
        score_thresh, max_boxes: only the `max_boxes` best detections scoring at least `score_thresh` are drawn.
        scale: enlargement for legible labels on small images.
    Returns:
        the drawing, (3, scale H, scale W) uint8.
    """
    order = scores.argsort(descending=True)[:max_boxes]  # (<= max_boxes,)
    keep = order[scores[order] >= score_thresh].tolist()
    is_novel = is_novel or [False] * len(names)
    labels = [f"{names[i]}{'*' if is_novel[i] else ''} {scores[i]:.2f}" for i in keep]
    colors = ["red" if is_novel[i] else "cyan" for i in keep]
    drawn = render_boxes(image, boxes_xyxy[keep] if keep else boxes_xyxy[:0], labels, colors, scale=scale)
    if path is not None:
        to_pil_image(drawn).save(path)
    return drawn
